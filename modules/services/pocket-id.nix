# PocketID, the OIDC identity provider, published by the proxy at its route (id.<domain>).
# Its database lives on the database guest when the inventory says so, else in SQLite on
# the guest's persistent state.
{ config, lib, ... }:
let
  inherit (config.homestack) plan guest;
  # Names, ports and secrets come from the catalogue entry (lib/services/pocket-id.nix).
  entry = (import ../../lib/services.nix).pocket-id;
  encryptionKey = entry.secrets.encryption-key.name;
  port = guest.portOf.pocket-id.http;
  route = lib.findFirst (r: r.port == port) (throw "guests.${guest.name}: pocket-id needs a route to port ${toString port} in inventory.toml") guest.routes;
  db = lib.findFirst (d: d.owner == guest.name) null guest.databases;
  ph = config.sops.placeholder;
  q = import ../../lib/quote.nix;
  # A postgres:// URL: names percent-encoded (lib/quote.nix), so none can add a host, an
  # option or a line to the environment file.
  dbUrl =
    let
      what = "databases.${q.show db.name}";
    in
    "postgres://${q.url "${what} role" db.role}:${ph."postgresql/${db.role}-password"}@${q.ipv4 "${what} server address" db.serverAddress}:${toString (q.port "${what} port" db.port)}/${q.url "${what} name" db.name}?sslmode=disable";
in
{
  imports = [ ./db-client.nix ];

  services.pocket-id = {
    enable = true;
    settings = {
      APP_URL = "https://${route.fqdn}";
      # Behind Caddy: take the client address from X-Forwarded-For.
      TRUST_PROXY = true;
      ANALYTICS_DISABLED = true;
      PORT = toString route.port;
    };
    # The encryption key and the database URL carry secrets: an environment file rendered
    # by sops-nix (the `credentials` option exists only in newer nixpkgs).
    environmentFile = config.sops.templates."pocket-id.env".path;
  };

  sops.secrets.${encryptionKey}.restartUnits = entry.units;
  sops.templates."pocket-id.env" = {
    content =
      ''
        ENCRYPTION_KEY=${ph.${encryptionKey}}
      ''
      + lib.optionalString (db != null) ''
        DB_CONNECTION_STRING=${dbUrl}
      '';
    # Read by systemd (EnvironmentFile=) as root before the service starts.
    owner = "root";
    restartUnits = entry.units;
  };
}
