# The relay tunnel: the relay listens, the home hypervisor dials out with a keepalive
# (no port forwarding at home). Returned as attribute sets for the NixOS modules and
# as wg(8)-style text for people.
# wg(8) files have no quoting: every value is checked first (lib/quote.nix) and anything
# outside its alphabet (base64 keys, IPv4 addresses, ports, plain names) is refused.
let
  q = import ../quote.nix;
in
plan:
let
  r0 = plan.relay;
  relayWhat = "hosts.${r0.host}.wireguard";
  peerWhat = "hosts.${r0.peer.host}.wireguard";
  # The relay section of the plan, each value checked; only these are interpolated.
  r = {
    host = q.plainName "relay host" r0.host;
    interface = q.plainName "${relayWhat} interface" r0.interface;
    address = q.ipv4 "${relayWhat}.address" r0.address;
    port = q.port "${relayWhat}.port" r0.port;
    publicKey = q.wireguardKey "${relayWhat}.public_key" r0.publicKey;
    publicAddress = q.ipv4 "hosts.${r0.host}.public_address" r0.publicAddress;
    peer = {
      host = q.plainName "relay peer host" r0.peer.host;
      address = q.ipv4 "${peerWhat}.address" r0.peer.address;
      publicKey = q.wireguardKey "${peerWhat}.public_key" r0.peer.publicKey;
      allowedIPs = map (q.ipv4Cidr "${peerWhat} allowed IPs") r0.peer.allowedIPs;
    };
  };
  tunnelPrefix = toString (q.prefixLength "networks.tunnel.cidr prefix" plan.tunnel.prefix);
in
if r0 == null then
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
