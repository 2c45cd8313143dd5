# A guest on a hypervisor with engine = "incus": an Incus system container (or VM) made
# from this very NixOS system (the flake's incusImages.<guest>, docs/incus.md). Incus gives
# it its size, its NIC with the plan's MAC, its state volume at the plan's guestPath and its
# SSH host key there (all from lib/render/incus.nix); this module configures the inside:
# a static address matched by that MAC, state directories on the volume, the host key.
{ config, lib, ... }:
let
  inherit (config.homestack) plan guest;
  state =
    if guest.state != null then
      guest.state
    else
      throw "guests.${guest.name}: a Homestack guest needs persistent state (its SSH host key lives there); set state_size in inventory.toml";
  sshKey = "${state.guestPath}/etc/ssh/ssh_host_ed25519_key";
in
{
  imports = [ ./guest-firewall.nix ];

  # An LXC container shares the host's kernel; nixpkgs' lxc-container.nix (added by the
  # image outputs) sets the rest. Declared in nixos/modules/virtualisation/nixos-containers.nix.
  boot.isContainer = guest.kind == "container";

  # State directories are bind mounts from the state volume, as on the microvm engine.
  fileSystems = lib.mkMerge (
    map (dir: {
      ${dir} = {
        device = "${state.guestPath}${dir}";
        fsType = "none";
        options = [ "bind" ];
      };
    }) config.homestack.persist
  );
  homestack.persist = [ "/var/lib/nixos" ] ++ guest.persist;

  # The hypervisor shares this key read-only before the first start (modules/incus-host.nix).
  services.openssh.hostKeys = [
    {
      type = "ed25519";
      path = sshKey;
    }
  ];

  networking.useNetworkd = true;
  networking.useDHCP = false;
  systemd.network.enable = true;
  systemd.network.networks."10-guest" = {
    matchConfig.MACAddress = guest.mac;
    address = [ guest.cidr ];
    gateway = [ guest.gateway ];
    dns = plan.dnsServers;
    ntp = [ guest.gateway ];
    domains = [ plan.domain ];
    networkConfig.DHCP = "no";
  };
}
