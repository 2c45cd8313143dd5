# The WireGuard tunnel between the home hypervisor and the public relay, from the plan's
# rendered peer sets: the relay listens, the home side dials out with a keepalive, so the
# home router needs no port forward.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (config.homestack) plan machine;
  wg = plan.artifacts.wireguard;
  home = plan.relay == null || plan.relay.host != machine;
  side = if home then wg.home else wg.relay;
  # The mesh's UDP ports the relay forwards home (STUN): the relay passes them on without
  # rewriting the source, so the guest sees (and STUN reports) the peer's own public
  # address; the replies must then leave through the tunnel, or the relay's conntrack never
  # sees them and the peer gets an answer from the home router's address instead. They are
  # routed by source address and port to a table whose only routes are the tunnel's.
  meshUdp = lib.optionals (home && plan.relay != null) (
    lib.filter (f: f.proto == "udp") plan.relay.forwards
  );
  meshTable = "51820";
  ip = "${pkgs.iproute2}/bin/ip";
  rule = f: "from ${f.address} ipproto udp sport ${toString f.port} lookup ${meshTable} priority 1000";
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
      inherit (p) publicKey;
      # Replies of the mesh's UDP go to any address through the relay: WireGuard sends only
      # to a peer whose allowedIPs hold the destination.
      allowedIPs = p.allowedIPs ++ lib.optional (meshUdp != [ ]) "0.0.0.0/0";
      endpoint = p.endpoint or null;
      persistentKeepalive = p.persistentKeepalive or null;
    }) side.peers;
  }
  // lib.optionalAttrs (meshUdp != [ ]) {
    # The peers' routes (0.0.0.0/0 among them) go to their own table, not the main one;
    # the main table keeps the tunnel's subnet through the interface address.
    table = meshTable;
    postSetup = map (f: "${ip} rule del ${rule f} 2>/dev/null || true; ${ip} rule add ${rule f}") meshUdp;
    postShutdown = map (f: "${ip} rule del ${rule f} 2>/dev/null || true") meshUdp;
  };
}
