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
    # networkd (when the machine uses it) reads the key as systemd-network.
    mode = "0440";
    group = if config.networking.useNetworkd then "systemd-network" else "root";
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
