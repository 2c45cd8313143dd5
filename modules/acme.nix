# acme-dns01 mode: NixOS's own security.acme (lego, which has Cloudflare built in) obtains
# the plan's certificate names (`*.<domain>`, `<domain>`) by DNS-01 and renews them on its
# timer; Caddy serves the files and is reloaded after each renewal. No custom Caddy build.
#
# Options and the lego command line they make were read in nixpkgs'
# nixos/modules/security/acme/default.nix: `--accept-tos --path . -d <domain> --email <e>
# --key-type <t> --dns <provider> --dns.resolvers <r> [-d <extra>…] run`, and
# `… renew --no-random-sleep --days <validMinDays>`; credentialFiles become systemd
# credentials exported as `<NAME>=%d/<NAME>`. The lab runs lego with exactly these flags
# (tools/homestack/lab/acme.py).
{ config, lib, ... }:
let
  inherit (config.homestack) plan;
  certs = plan.certificates;
  # Absent in private-ca mode; attribute names below must still evaluate there.
  acme = certs.acme or { };
  certName = acme.certName or "homestack";
  caddy = config.services.caddy;
in
lib.mkIf (certs.mode == "acme-dns01") {
  security.acme = {
    acceptTerms = true;
    certs.${certName} = {
      domain = lib.head certs.names;
      extraDomainNames = lib.tail certs.names;
      email = certs.acmeEmail;
      inherit (acme) dnsProvider dnsResolver keyType validMinDays;
      # lego reads CLOUDFLARE_DNS_API_TOKEN from this file (its `_FILE` convention): one
      # token with Zone:Read and DNS:Edit on this zone only (docs/certificates.md).
      credentialFiles.CLOUDFLARE_DNS_API_TOKEN_FILE =
        config.sops.secrets."cloudflare/api-token".path;
      # Caddy reads fullchain.pem and key.pem (mode 0640) through this group.
      group = caddy.group;
      reloadServices = [ "caddy.service" ];
    };
  };

  # Decrypted for systemd's LoadCredential (read as root), not for any service user.
  sops.secrets."cloudflare/api-token".restartUnits = [ "acme-${certName}.service" ];

  # Caddy starts only once a certificate (first the module's self-signed one) is there.
  homestack.persist = [ "/var/lib/acme" ];

  systemd.services.caddy = {
    wants = [ "acme-finished-${certName}.target" ];
    after = [ "acme-selfsigned-${certName}.service" ];
  };
}
