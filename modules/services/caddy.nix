# Caddy on the proxy guest: terminates TLS for the domain with the plan's Caddyfile and
# reverse-proxies each route to its guest. private-ca mode serves the wildcard leaf from
# `tools certs issue` (certificate in the repository, key in the proxy's sops file);
# acme-dns01 mode serves what security.acme obtains by Cloudflare DNS-01 (../acme.nix).
# Both run stock `pkgs.caddy`: no DNS plugin, no custom build.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (config.homestack) plan root;
  certs = plan.certificates;
  privateCa = certs.mode == "private-ca";
  leaf = root + "/certs/wildcard.crt";
  ca = root + "/certs/ca.crt";
  # The rendered Caddyfile names /etc/homestack/tls/… and /run/secrets/tls/key.
  etcName = path: lib.removePrefix "/etc/" path;
in
{
  imports = [ ../acme.nix ];

  config = {
    # Not an assertion: the example must evaluate before anyone has made a CA. Caddy
    # then fails to start until the certificate exists.
    warnings = lib.optional (privateCa && !builtins.pathExists leaf) "certificates: certs/wildcard.crt is missing; run `tools ca init` and `tools certs issue`, then rebuild";

    services.caddy = {
      enable = true;
      package = pkgs.caddy;
      # The plan's Caddyfile holds site blocks only; the module's generated file puts its
      # global block (the log level) in front of them.
      extraConfig = plan.artifacts.caddyfile;
    };

    environment.etc = lib.mkIf privateCa {
      ${etcName certs.certFile} = lib.mkIf (builtins.pathExists leaf) { source = leaf; };
      ${etcName certs.caFile} = lib.mkIf (builtins.pathExists ca) { source = ca; };
    };

    # keyFile is /run/secrets/tls/key: sops-nix's default path for the name "tls/key".
    sops.secrets = lib.mkIf privateCa {
      "tls/key" = {
        owner = config.services.caddy.user;
        group = config.services.caddy.group;
        restartUnits = [ "caddy.service" ];
      };
    };

    # The Caddyfile binds the guest's address; do not depend on networkd having set it yet.
    boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;
  };
}
