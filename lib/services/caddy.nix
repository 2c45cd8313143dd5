# Caddy, the TLS reverse proxy. It starts without its upstreams (a missing one answers
# 502), so it needs nothing at run time.
#
# The admin API listens on localhost:2019 unless the global `admin` option says otherwise
# (caddyserver/caddy caddyconfig/httpcaddyfile and admin.go: DefaultAdminListen).
{
  description = "Caddy, the TLS reverse proxy";
  kind = "ingress";
  module = "caddy.nix";
  units = [ "caddy.service" ];
  ports = [
    { name = "http"; port = 80; proto = "tcp"; }
    { name = "https"; port = 443; proto = "tcp"; }
    { name = "admin"; port = 2019; proto = "tcp"; scope = "loopback"; }
  ];
  health = [
    { kind = "tcp"; port = 443; }
  ];
  # tls/key (private-ca) or cloudflare/api-token (acme-dns01) depend on the certificate
  # mode: lib/secrets.nix adds the one the mode needs.
  secrets = { };
  persist = [ "/var/lib/caddy" ];
  needs = [ ];
}
