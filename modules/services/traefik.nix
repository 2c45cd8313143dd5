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
  inherit (config.homestack) plan;
  privateCa = plan.certificates.mode == "private-ca";
  rendered = plan.artifacts.traefik;
in
{
  imports = [ (import ./private-ca-tls.nix "traefik") ];

  services.traefik = {
    enable = true;
    static.settings = rendered.static;
    dynamic = {
      dir = "/var/lib/traefik/dynamic";
      files.homestack.settings = rendered.dynamic;
    };
    environmentFiles = lib.mkIf (!privateCa) [ config.sops.templates."traefik.env".path ];
  };

  # acme-dns01: the provider's token (private-ca's key: private-ca-tls.nix).
  sops.secrets = lib.mkIf (!privateCa) {
    "cloudflare/api-token".restartUnits = [ "traefik.service" ];
  };
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
