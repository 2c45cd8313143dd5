# Which sops files exist, who may decrypt each, which secret names the NixOS modules read
# from them, and the format and generator of each value. `tools secrets rules` turns this
# into .sops.yaml, `tools secrets check` audits the files against it, `tools secrets
# generate` fills missing values and `check --values` verifies them.
#
# Formats: password:N (N characters of [A-Za-z0-9]), base64:N (standard base64 of N
# bytes), hex:N (N bytes as lowercase hex), uuid (NetBird's setup keys: an upper-case
# UUID), wireguard-key (base64 of 32 bytes), pem-key (a PEM private key),
# openssh-ed25519 (an OpenSSH private key), token (any non-empty single line).
# Generators: random (from the format), wireguard (a pair; the public half goes to the
# inventory), ssh-host-key (`tools secrets bootstrap`), ca (`tools ca init`), certs
# (`tools certs issue`), manual (only a person can get it: a DNS API token, a setup key
# issued by the NetBird dashboard).
let
  u = import ./util.nix;
  services = import ./services.nix;
  alternatives = import ./alternatives.nix;
  inherit (builtins) attrNames elem filter listToAttrs mapAttrs;

  # Secret names each service's module reads from its machine's own file.
  secretKeys = mapAttrs (_: s: map (r: s.secrets.${r}.name) (attrNames s.secrets)) services;

  # Secrets that belong to no service of the catalogue.
  other = {
    "wireguard/private-key" = { format = "wireguard-key"; generator = "wireguard"; };
    "netbird/setup-key" = { format = "uuid"; generator = "manual"; };
    # Issued by Headscale (`headscale preauthkeys create`, docs/alternatives.md): it makes
    # its keys itself and has no command to take one made elsewhere.
    "headscale/preauth-key" = { format = "token"; generator = "manual"; };
    "tls/key" = { format = "pem-key"; generator = "certs"; };
    "cloudflare/api-token" = { format = "token"; generator = "manual"; };
    "ssh_host_ed25519_key" = { format = "openssh-ed25519"; generator = "ssh-host-key"; };
    "ca/key" = { format = "pem-key"; generator = "ca"; };
    # PostgreSQL role passwords (secrets/shared/pg-<db>.yaml).
    "password" = { format = "password:32"; generator = "random"; };
  };
  fromServices = builtins.concatMap (
    s: map (r: { inherit (services.${s}.secrets.${r}) name format generator; }) (attrNames services.${s}.secrets)
  ) (attrNames services);
  formatOf =
    key:
    let
      found = filter (e: e.name == key) fromServices;
    in
    if found != [ ] then { inherit (builtins.head found) format generator; } else other.${key};
in
{
  inherit secretKeys formatOf;

  files =
    {
      inv,
      admins,
      users,
      hosts,
      guests,
      databases,
      mode,
    }:
    let
      ageOf =
        m:
        if hosts ? ${m} then
          hosts.${m}.ageKey
        else if guests ? ${m} then
          guests.${m}.ageKey
        else
          users.${m}.ageKey;
      adminKeys = filter (k: k != null) (map (a: users.${a}.ageKey) admins);
      file = path: machines: keys: purpose: {
        name = path;
        value = {
          inherit path machines keys purpose;
          admins = admins;
          formats = listToAttrs (map (k: { name = k; value = formatOf k; }) keys);
          recipients = u.uniqueOrdered (adminKeys ++ filter (k: k != null) (map ageOf machines));
        };
      };
      guestKeys =
        g:
        u.concatMap (s: secretKeys.${s} or [ ]) guests.${g}.services
        ++ u.optionals (builtins.any (s: elem s alternatives.ingressServices) guests.${g}.services) (
          if mode == "acme-dns01" then [ "cloudflare/api-token" ] else [ "tls/key" ]
        );
      hostKeys =
        h:
        u.optional (hosts.${h}.wireguard != null) "wireguard/private-key"
        ++ u.optional (hosts.${h}.role == "hypervisor") (
          if (alternatives.choice inv).mesh == "headscale" then "headscale/preauth-key" else "netbird/setup-key"
        );
    in
    listToAttrs (
      map (h: file "secrets/${h}.yaml" [ h ] (hostKeys h) "secrets of host ${h}") (attrNames hosts)
      ++ map (g: file "secrets/${g}.yaml" [ g ] (guestKeys g) "secrets of guest ${g}") (attrNames guests)
      ++ map (
        g: file "secrets/host-keys/${g}.yaml" [ guests.${g}.host ] [ "ssh_host_ed25519_key" ] "SSH host key of guest ${g}, installed by ${guests.${g}.host} before first boot"
      ) (attrNames guests)
      ++ map (h: file "secrets/host-keys/${h}.yaml" [ ] [ "ssh_host_ed25519_key" ] "SSH host key of host ${h}, for provisioning") (attrNames hosts)
      ++ map (d: file d.secretsFile (u.uniqueOrdered [ d.server d.owner ]) [ d.secretKey ] "password of database role ${d.role}") databases
      ++ [ (file "secrets/ca.yaml" [ ] [ "ca/key" ] "the private CA's key (admins only)") ]
    );
}
