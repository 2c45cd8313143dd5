# acme-dns01 mode: NixOS's own security.acme (lego, which has Cloudflare built in) obtains
# the plan's certificate names (`*.<domain>`, `<domain>`) by DNS-01 and renews them on its
# timer; Caddy serves the files and is reloaded after each renewal. No custom Caddy build.
#
# Options, units and the lego command line were read in nixpkgs'
# nixos/modules/security/acme/default.nix (commit c9634190fe, the version with `profile`
# that ../shared/reference/nixos-options.json lists): `acme-<cert>.service` puts a
# self-signed certificate in place, `acme-order-renew-<cert>.service` runs
# `lego --accept-tos --path . --email <e> --dns <provider> --dns.resolvers <r>
# --server <s> --key-type <t> -d <domain> [-d <extra>…] run`, later `… renew
# --no-random-sleep --days <validMinDays>`; credentialFiles become systemd credentials
# exported as `<NAME>=%d/<NAME>`. The lab runs lego with these flags
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
  sops.secrets."cloudflare/api-token".restartUnits = [ "acme-order-renew-${certName}.service" ];

  # The account key and the certificates survive reboots.
  homestack.persist = [ "/var/lib/acme" ];

  # Caddy starts once a certificate is in place (first acme-<cert>'s self-signed one).
  systemd.services.caddy = {
    wants = [ "acme-${certName}.service" ];
    after = [ "acme-${certName}.service" ];
  };
}
