# The WireGuard tunnel between the home hypervisor and the public relay, from the plan's
# rendered peer sets: the relay listens, the home side dials out with a keepalive, so the
# home router needs no port forward.
{ config, lib, ... }:
let
  inherit (config.homestack) plan machine;
  wg = plan.artifacts.wireguard;
  side = if plan.relay != null && plan.relay.host == machine then wg.relay else wg.home;
in
lib.mkIf (plan.relay != null && (plan.relay.host == machine || wg.home.host == machine)) {
  sops.secrets.${side.privateKeySecret} = {
    # With networking.wireguard.useNetworkd (default false, nixpkgs
    # nixos/modules/services/networking/wireguard-networkd.nix, even where networkd manages
    # the other interfaces) systemd-networkd reads the key itself, as systemd-network;
    # otherwise the wireguard-<interface> unit reads it as root.
    mode = "0440";
    group = if config.networking.wireguard.useNetworkd then "systemd-network" else "root";
    # A rotated key is read only when the interface is set up again: restart whichever of
    # the two reads it (the hypervisor and the relay use the wireguard-<interface> unit).
    restartUnits =
      if config.networking.wireguard.useNetworkd then
        [ "systemd-networkd.service" ]
      else
        [ "wireguard-${side.interface}.service" ];
  };

  # Where networkd manages the other links (the hypervisor) but the tunnel is made by the
  # wireguard-<interface> script, keep networkd's hands off it, as NixOS's NetBird module
  # does for its own interface.
  systemd.network.networks."40-${side.interface}" =
    lib.mkIf (config.networking.useNetworkd && !config.networking.wireguard.useNetworkd)
      {
        matchConfig.Name = side.interface;
        linkConfig.Unmanaged = true;
      };

  networking.wireguard.interfaces.${side.interface} = {
    ips = [ side.address ];
    listenPort = side.listenPort or null;
    privateKeyFile = config.sops.secrets.${side.privateKeySecret}.path;
    peers = map (p: {
      inherit (p) publicKey allowedIPs;
      endpoint = p.endpoint or null;
      persistentKeepalive = p.persistentKeepalive or null;
    }) side.peers;
  };
}
