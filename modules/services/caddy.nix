# Caddy on the proxy guest: terminates TLS for the domain with the plan's Caddyfile and
# reverse-proxies each route to its guest. private-ca mode serves the wildcard leaf from
# `tools certs issue` (certificate in the repository, key in the proxy's sops file);
# acme-dns01 mode lets Caddy obtain it through Cloudflare DNS-01.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) plan root;
  certs = plan.certificates;
  privateCa = certs.mode == "private-ca";
  leaf = root + "/certs/wildcard.crt";
  ca = root + "/certs/ca.crt";
  # The rendered Caddyfile names /etc/homestack/tls/… and /run/secrets/tls/key.
  etcName = path: lib.removePrefix "/etc/" path;
in
{
  options.homestack.caddy.package = mkOption {
    type = types.nullOr types.package;
    default = null;
    example = lib.literalExpression ''
      pkgs.caddy.withPlugins {
        plugins = [ "github.com/caddy-dns/cloudflare@<version>" ];
        hash = "sha256-…";
      }
    '';
    description = ''
      The Caddy to run; null means `pkgs.caddy`, which is enough in private-ca mode.
      acme-dns01 mode needs a Caddy with the Cloudflare DNS plugin (plain `pkgs.caddy` fails
      at start with "module not registered: dns.providers.cloudflare"): set it in
      guests/<proxy>/default.nix as in the example. Every plugin needs an `@version`, and
      the hash is learnt from the first build, which needs network access.
    '';
  };

  config = {
    assertions = [
      {
        assertion = privateCa || config.homestack.caddy.package != null;
        message = "certificates.mode = \"acme-dns01\" needs Caddy with the Cloudflare DNS plugin: set homestack.caddy.package = pkgs.caddy.withPlugins { plugins = [ \"github.com/caddy-dns/cloudflare@<version>\" ]; hash = \"…\"; } in the proxy guest (docs/nixos.md)";
      }
    ];

    # Not an assertion: the example must evaluate before anyone has made a CA. Caddy
    # then fails to start until the certificate exists.
    warnings = lib.optional (privateCa && !builtins.pathExists leaf) "certificates: certs/wildcard.crt is missing; run `tools ca init` and `tools certs issue`, then rebuild";

    services.caddy = {
      enable = true;
      package = if config.homestack.caddy.package != null then config.homestack.caddy.package else pkgs.caddy;
      # The plan's Caddyfile holds site blocks only; the module's generated file puts its
      # global block (the ACME account email, the log level) in front of them.
      extraConfig = plan.artifacts.caddyfile;
      email = lib.mkIf (!privateCa) certs.acmeEmail;
      environmentFile = lib.mkIf (!privateCa) config.sops.templates."caddy.env".path;
    };

    environment.etc = lib.mkIf privateCa {
      ${etcName certs.certFile} = lib.mkIf (builtins.pathExists leaf) { source = leaf; };
      ${etcName certs.caFile} = lib.mkIf (builtins.pathExists ca) { source = ca; };
    };

    sops.secrets = if privateCa then {
      # keyFile is /run/secrets/tls/key: sops-nix's default path for the name "tls/key".
      "tls/key" = {
        owner = config.services.caddy.user;
        group = config.services.caddy.group;
        restartUnits = [ "caddy.service" ];
      };
    } else {
      "cloudflare/api-token".restartUnits = [ "caddy.service" ];
    };
    sops.templates = lib.mkIf (!privateCa) {
      "caddy.env" = {
        content = "CLOUDFLARE_API_TOKEN=${config.sops.placeholder."cloudflare/api-token"}\n";
        owner = config.services.caddy.user;
        group = config.services.caddy.group;
      };
    };

    # The Caddyfile binds the guest's address; do not depend on networkd having set it yet.
    boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;
  };
}
