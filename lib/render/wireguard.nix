# The relay tunnel: the relay listens, the home hypervisor dials out with a keepalive
# (no port forwarding at home). Returned as attribute sets for the NixOS modules and
# as wg(8)-style text for people.
plan:
let
  r = plan.relay;
  tunnelPrefix = toString plan.tunnel.prefix;
in
if r == null then
  null
else
  rec {
    relay = {
      host = r.host;
      interface = r.interface;
      address = "${r.address}/${tunnelPrefix}";
      listenPort = r.port;
      privateKeySecret = "wireguard/private-key";
      peers = [
        {
          name = r.peer.host;
          publicKey = r.peer.publicKey;
          allowedIPs = r.peer.allowedIPs;
        }
      ];
    };
    home = {
      host = r.peer.host;
      interface = r.interface;
      address = "${r.peer.address}/${tunnelPrefix}";
      privateKeySecret = "wireguard/private-key";
      peers = [
        {
          name = r.host;
          publicKey = r.publicKey;
          endpoint = "${r.publicAddress}:${toString r.port}";
          allowedIPs = [ "${r.address}/32" ];
          persistentKeepalive = 25;
        }
      ];
    };
    relayText = ''
      # ${r.host}: ${r.interface}
      [Interface]
      Address = ${relay.address}
      ListenPort = ${toString r.port}

      [Peer]
      # ${r.peer.host}
      PublicKey = ${r.peer.publicKey}
      AllowedIPs = ${builtins.concatStringsSep ", " r.peer.allowedIPs}
    '';
    homeText = ''
      # ${r.peer.host}: ${r.interface}
      [Interface]
      Address = ${home.address}

      [Peer]
      # ${r.host}
      PublicKey = ${r.publicKey}
      Endpoint = ${r.publicAddress}:${toString r.port}
      AllowedIPs = ${r.address}/32
      PersistentKeepalive = 25
    '';
  }
