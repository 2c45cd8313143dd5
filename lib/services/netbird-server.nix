# The NetBird server: management (REST and gRPC on one port), signal, relay with its STUN
# server, and the dashboard (a static site served by a local Caddy).
#
# Every port the binaries bind, including built-in defaults the module does not change:
# - management: --port (nixpkgs nixos/modules/services/networking/netbird/management.nix
#   passes cfg.port) and --metrics-port, which that module sets to its metricsPort
#   default 9090 (the binary's own default, management/cmd/root.go, is 8081).
# - signal: --port; --metrics-port defaults to 9090 in netbirdio/netbird
#   signal/cmd/run.go and nixpkgs' signal.nix passes its metricsPort default 9091;
#   startPprof() always binds 127.0.0.1:6060 (and exits if it cannot); a second gRPC
#   listener on 10000 runs only when --port is not 10000 (legacyGRPCPort).
# - relay: relay/cmd/root.go: --metrics-port defaults to 9090 (which clashes with
#   management's) and --health-listen-address to ":9000"; our unit sets NB_METRICS_PORT
#   to 9092 as nixpkgs' own netbird-relay.nix does, NB_LISTEN_ADDRESS and the STUN port.
# - management is built without the `pprof` tag in nixpkgs, so management/cmd/pprof.go's
#   localhost:6060 is not bound there.
# - the dashboard is served by a Caddy of its own, whose admin API takes localhost:2019
#   (caddyserver/caddy admin.go, DefaultAdminListen) as the proxy's does.
{
  description = "NetBird management, signal, relay and dashboard";
  kind = "mesh";
  module = "netbird-server.nix";
  units = [
    "netbird-management.service"
    "netbird-signal.service"
    "netbird-relay.service"
  ];
  ports = [
    { name = "dashboard"; port = 8080; proto = "tcp"; }
    { name = "dashboard-admin"; port = 2019; proto = "tcp"; scope = "loopback"; }
    { name = "management"; port = 33073; proto = "tcp"; }
    { name = "management-metrics"; port = 9090; proto = "tcp"; }
    { name = "signal"; port = 10000; proto = "tcp"; }
    { name = "signal-metrics"; port = 9091; proto = "tcp"; }
    { name = "signal-pprof"; port = 6060; proto = "tcp"; scope = "loopback"; }
    { name = "relay"; port = 33080; proto = "tcp"; }
    { name = "relay-metrics"; port = 9092; proto = "tcp"; }
    { name = "relay-health"; port = 9000; proto = "tcp"; }
    { name = "stun"; port = 3478; proto = "udp"; }
  ];
  # relay/healthcheck's /health dials the relay's public address through the proxy, so
  # the probes stay on the components' own listeners.
  health = [
    { kind = "tcp"; port = 33073; }
    { kind = "tcp"; port = 10000; }
    { kind = "tcp"; port = 33080; }
  ];
  secrets = {
    # management/server/activity/store/crypt.go: base64.StdEncoding of a 32-byte AES key.
    datastore-key = { name = "netbird/datastore-key"; format = "base64:32"; generator = "random"; };
    # TURNConfig.Secret and the relay's auth secret: opaque strings (the relay hashes it
    # with SHA-256, relay/cmd/root.go).
    turn-password = { name = "netbird/turn-password"; format = "password:32"; generator = "random"; };
    relay-secret = { name = "netbird/relay-secret"; format = "password:32"; generator = "random"; };
  };
  persist = [ "/var/lib/netbird-mgmt" ];
  # management fetches the issuer's discovery document at start and exits without it: it
  # resolves the issuer's name through dnsmasq and reaches PocketID through the proxy.
  needs = [
    { service = "postgresql"; port = "postgresql"; ifDatabases = true; why = "its database"; }
    { service = "pocket-id"; port = "http"; through = "ingress"; why = "OIDC discovery at start"; }
    { service = "dnsmasq"; port = "dns"; why = "resolves the issuer's name"; }
  ];
}
