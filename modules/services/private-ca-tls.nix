# The private CA's wildcard certificate for the reverse proxy on the proxy guest, Caddy or
# Traefik (`service`, which names its NixOS module, user and unit): in private-ca mode the
# leaf and the CA from the repository (`tools certs issue`) under /etc, where the rendered
# configuration names them, and the leaf's key from the proxy's sops file, readable by the
# proxy's user. In acme-dns01 mode it sets nothing.
service:
{ config, lib, ... }:
let
  inherit (config.homestack) plan root;
  certs = plan.certificates;
  privateCa = certs.mode == "private-ca";
  leaf = root + "/certs/wildcard.crt";
  ca = root + "/certs/ca.crt";
  # The rendered configuration names /etc/homestack/tls/… and /run/secrets/tls/key.
  etcName = path: lib.removePrefix "/etc/" path;
  proxy = config.services.${service};
in
{
  # Not an assertion: the example must evaluate before anyone has made a CA. Until the
  # certificate exists, Caddy fails to start and Traefik serves its own default certificate.
  warnings = lib.optional (privateCa && !builtins.pathExists leaf) "certificates: certs/wildcard.crt is missing; run `tools ca init` and `tools certs issue`, then rebuild";

  environment.etc = lib.mkIf privateCa {
    ${etcName certs.certFile} = lib.mkIf (builtins.pathExists leaf) { source = leaf; };
    ${etcName certs.caFile} = lib.mkIf (builtins.pathExists ca) { source = ca; };
  };

  # keyFile is /run/secrets/tls/key: sops-nix's default path for the name "tls/key".
  sops.secrets = lib.mkIf privateCa {
    "tls/key" = {
      owner = proxy.user;
      group = proxy.group;
      restartUnits = [ "${service}.service" ];
    };
  };
}
