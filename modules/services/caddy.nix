# Caddy on the proxy guest: terminates TLS for the domain with the plan's Caddyfile and
# reverse-proxies each route to its guest. private-ca mode serves the wildcard leaf from
# `tools certs issue` (certificate in the repository, key in the proxy's sops file);
# acme-dns01 mode serves what security.acme obtains by Cloudflare DNS-01 (../acme.nix).
# Both run stock `pkgs.caddy`: no DNS plugin, no custom build.
{
  config,
  pkgs,
  ...
}:
let
  inherit (config.homestack) plan;
in
{
  imports = [
    ../acme.nix
    (import ./private-ca-tls.nix "caddy")
  ];

  config = {
    services.caddy = {
      enable = true;
      package = pkgs.caddy;
      # The plan's Caddyfile holds site blocks only; the module's generated file puts its
      # global block (the log level) in front of them.
      extraConfig = plan.artifacts.caddyfile;
    };

    # The Caddyfile binds the guest's address; do not depend on networkd having set it yet.
    boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;
  };
}
