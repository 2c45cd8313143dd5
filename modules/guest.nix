# Every MicroVM guest: its size from the inventory, one tap with the plan's MAC, a static
# address matched by that MAC, the host's /nix/store shared read-only, and one persistent
# share for everything stateful (a guest's / is tmpfs and forgets the rest at each boot).
{ config, lib, ... }:
let
  inherit (config.homestack) plan guest;
  state =
    if guest.state != null then
      guest.state
    else
      throw "guests.${guest.name}: a Homestack guest needs persistent state (its SSH host key lives there); set state_size in inventory.toml";
  # cloud-hypervisor and firecracker cannot do 9p, kvmtool cannot do virtiofs.
  shareProto = if guest.hypervisor == "kvmtool" then "9p" else "virtiofs";
  sshKey = "${state.guestPath}/etc/ssh/ssh_host_ed25519_key";
in
{
  imports = [ ./guest-firewall.nix ];

  assertions = [
    {
      assertion = !(builtins.elem guest.hypervisor [ "firecracker" "stratovirt" ]);
      message = "guests.${guest.name}: hypervisor ${guest.hypervisor} cannot share directories; use cloud-hypervisor or qemu";
    }
  ];

  microvm = {
    inherit (guest) hypervisor vcpu;
    # qemu hangs at exactly 2048 MiB (microvm.nix); one MiB more avoids it.
    mem = if guest.hypervisor == "qemu" && guest.memory == 2048 then 2049 else guest.memory;
    interfaces = [
      {
        type = "tap";
        id = guest.tap;
        inherit (guest) mac;
      }
    ];
    shares = [
      {
        tag = "ro-store";
        source = "/nix/store";
        mountPoint = "/nix/.ro-store";
        proto = shareProto;
        readOnly = true;
      }
      {
        tag = "state";
        source = state.hostPath;
        mountPoint = state.guestPath;
        proto = shareProto;
      }
    ];
  };

  fileSystems = lib.mkMerge (
    [
      # sops-nix decrypts during activation with the host key on this share, and only the
      # store share is mounted early by default: mount the state share in the initrd too.
      { ${state.guestPath}.neededForBoot = true; }
    ]
    # State directories live on the share; the hypervisor creates their sources. They are
    # mounted in the initrd too, before activation writes /var/lib/nixos (the uid map).
    ++ map (dir: {
      ${dir} = {
        device = "${state.guestPath}${dir}";
        fsType = "none";
        options = [ "bind" ];
        depends = [ state.guestPath ];
        neededForBoot = true;
      };
    }) config.homestack.persist
  );
  # User and group ids are allocated at activation and remembered here; without it a
  # service user could get another uid after a reboot and lose access to its own state.
  homestack.persist = [ "/var/lib/nixos" ];

  # The hypervisor installs this key (from secrets/host-keys/<guest>.yaml) before the first
  # boot, so the guest's age identity is known in advance and stable across reboots.
  services.openssh.hostKeys = [
    {
      type = "ed25519";
      path = sshKey;
    }
  ];

  networking.useNetworkd = true;
  networking.useDHCP = false;
  systemd.network.enable = true;
  # Match by MAC: the NIC's name inside the guest depends on the hypervisor.
  systemd.network.networks."10-guest" = {
    matchConfig.MACAddress = guest.mac;
    address = [ guest.cidr ];
    gateway = [ guest.gateway ];
    dns = plan.dnsServers;
    domains = [ plan.domain ];
    networkConfig.DHCP = "no";
  };
}
