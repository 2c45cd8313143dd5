# What every guest has inside, whatever its engine (modules/guest.nix for a MicroVM,
# modules/incus-guest.nix for an Incus instance): the plan's firewall, a static address
# matched by the plan's MAC, its state directories bind-mounted from the state the engine
# provides at the plan's guestPath, and the SSH host key the hypervisor installs there.
{ config, lib, ... }:
let
  inherit (config.homestack) plan guest;
  state = import ./guest-state.nix guest;
  sshKey = "${state.guestPath}/etc/ssh/ssh_host_ed25519_key";
in
{
  imports = [ ./guest-firewall.nix ];

  # State directories live on the state share or volume; the hypervisor creates their sources.
  fileSystems = lib.mkMerge (
    map (dir: {
      ${dir} = {
        device = "${state.guestPath}${dir}";
        fsType = "none";
        options = [ "bind" ];
      };
    }) config.homestack.persist
  );
  # User and group ids are allocated at activation and remembered here; without it a
  # service user could get another uid after a reboot and lose access to its own state.
  # The services' own state directories come from the catalogue, through the plan.
  homestack.persist = [ "/var/lib/nixos" ] ++ guest.persist;

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
    # Time from the hypervisor: the only NTP server the plan's egress lets a guest reach.
    ntp = [ guest.gateway ];
    domains = [ plan.domain ];
    networkConfig.DHCP = "no";
  };
}
