# Which sops files exist, who may decrypt each, and which secret names the NixOS
# modules read from them. `tools secrets rules` turns this into .sops.yaml and
# `tools secrets check` audits the files against it.
let
  u = import ./util.nix;
  inherit (builtins) attrNames elem filter listToAttrs;

  # Secret names each service's module reads from its machine's own file.
  secretKeys = {
    pocket-id = [ "pocket-id/encryption-key" ];
    netbird-server = [
      "netbird/turn-password"
      "netbird/relay-secret"
      "netbird/datastore-key"
    ];
    caddy = [ ];
    dnsmasq = [ ];
    postgresql = [ ];
  };
in
{
  inherit secretKeys;

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
          recipients = u.uniqueOrdered (adminKeys ++ filter (k: k != null) (map ageOf machines));
        };
      };
      guestKeys =
        g:
        u.concatMap (s: secretKeys.${s} or [ ]) guests.${g}.services
        ++ u.optionals (elem "caddy" guests.${g}.services) (
          if mode == "acme-dns01" then [ "cloudflare/api-token" ] else [ "tls/key" ]
        );
      hostKeys =
        h:
        u.optional (hosts.${h}.wireguard != null) "wireguard/private-key"
        ++ u.optional (hosts.${h}.role == "hypervisor") "netbird/setup-key";
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
