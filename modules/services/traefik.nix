# Traefik on the proxy guest: the static and dynamic configuration rendered by lib from the
# plan's routes (lib/render/traefik.nix). private-ca mode serves the wildcard leaf from
# `tools certs issue` (certificate in the repository, key in the proxy's sops file);
# acme-dns01 mode lets Traefik's built-in Cloudflare provider obtain it (no plugin build).
#
# Option names of nixpkgs' nixos/modules/services/web-servers/traefik.nix as of NixOS 26.05
# (the pinned nixpkgs): static.settings, dynamic.dir, dynamic.files.<name>.settings,
# environmentFiles. dynamic.files needs dynamic.dir, where the module links each file as
# _nixos-<name>.yml and adds the directory as the file provider.
{
  config,
  lib,
  ...
}:
let
  inherit (config.homestack) plan root;
  certs = plan.certificates;
  privateCa = certs.mode == "private-ca";
  leaf = root + "/certs/wildcard.crt";
  ca = root + "/certs/ca.crt";
  etcName = path: lib.removePrefix "/etc/" path;
  rendered = plan.artifacts.traefik;
in
{
  # Not an assertion: the example must evaluate before anyone has made a CA. Traefik then
  # serves its own default certificate until the leaf exists.
  warnings = lib.optional (privateCa && !builtins.pathExists leaf) "certificates: certs/wildcard.crt is missing; run `tools ca init` and `tools certs issue`, then rebuild";

  services.traefik = {
    enable = true;
    static.settings = rendered.static;
    dynamic = {
      dir = "/var/lib/traefik/dynamic";
      files.homestack.settings = rendered.dynamic;
    };
    environmentFiles = lib.mkIf (!privateCa) [ config.sops.templates."traefik.env".path ];
  };

  environment.etc = lib.mkIf privateCa {
    ${etcName certs.certFile} = lib.mkIf (builtins.pathExists leaf) { source = leaf; };
    ${etcName certs.caFile} = lib.mkIf (builtins.pathExists ca) { source = ca; };
  };

  sops.secrets =
    if privateCa then
      {
        # keyFile is /run/secrets/tls/key: sops-nix's default path for the name "tls/key".
        "tls/key" = {
          owner = config.services.traefik.user;
          group = config.services.traefik.group;
          restartUnits = [ "traefik.service" ];
        };
      }
    else
      { "cloudflare/api-token".restartUnits = [ "traefik.service" ]; };
  sops.templates = lib.mkIf (!privateCa) {
    # Traefik's Cloudflare provider (lego) reads CF_DNS_API_TOKEN.
    "traefik.env" = {
      content = "CF_DNS_API_TOKEN=${config.sops.placeholder."cloudflare/api-token"}\n";
      owner = config.services.traefik.user;
      group = config.services.traefik.group;
    };
  };

  # The entry points bind the guest's address; do not depend on networkd having set it yet.
  boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;
}
