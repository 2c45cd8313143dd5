# Traefik, the TLS reverse proxy: an alternative to caddy (docs/alternatives.md). It starts
# without its upstreams (a missing one answers 502), so it needs nothing at run time.
#
# Ports: the entry points the plan's static configuration declares (lib/render/traefik.nix:
# web 80, websecure 443). Traefik binds nothing else unless asked: its internal `traefik`
# entry point (:8080) is added only for an insecure API, ping or Prometheus metrics on it,
# or an insecure REST provider (traefik/traefik pkg/config/static/static_config.go,
# SetEffectiveConfiguration), and the rendered static configuration sets none of them.
{
  description = "Traefik, the TLS reverse proxy";
  kind = "ingress";
  module = "traefik.nix";
  units = [ "traefik.service" ];
  ports = [
    { name = "http"; port = 80; proto = "tcp"; }
    { name = "https"; port = 443; proto = "tcp"; }
  ];
  health = [
    { kind = "tcp"; port = 443; }
  ];
  # tls/key (private-ca) or cloudflare/api-token (acme-dns01) depend on the certificate
  # mode: lib/secrets.nix adds the one the mode needs, as for caddy.
  secrets = { };
  persist = [ "/var/lib/traefik" ];
  needs = [ ];
}
