# The NetBird server on the vpn guest: management, signal, relay (with STUN) and the
# dashboard, all behind the proxy at the guest's route, with PocketID as the OIDC provider.
#
# nixpkgs' NetBird server module changed shape across versions (enableNginx vs ingress,
# relay and store options only in newer ones). This module uses the options both layouts
# declare (the components' enable/domain/port/settings) and writes the relay unit itself.
# Two things cannot be said the same way in both: the newer layout asserts that a postgres
# store comes with its own `store.dsnFile`, and declares `environment.NB_DISABLE_GEOLOCATION`
# (null by default, which clashes with a plain systemd environment entry). For those two the
# layout is recognised by its options (`newLayout`).
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) plan guest;
  # Names, ports and secrets come from the catalogue entry (lib/services/netbird-server.nix).
  entry = (import ../../lib/services.nix).netbird-server;
  key = role: entry.secrets.${role}.name;
  ports = guest.portOf.netbird-server; # dashboard, management(-metrics), signal(-metrics), relay(-metrics, -health), stun
  domain = (lib.findFirst (r: r.port == ports.dashboard) (throw "guests.${guest.name}: netbird-server needs a route to port ${toString ports.dashboard} (the dashboard) in inventory.toml") guest.routes).fqdn;
  idRoute = lib.findFirst (
    r: builtins.elem "pocket-id" plan.guests.${r.guest}.services
  ) (throw "netbird-server: no guest runs pocket-id with a route; NetBird needs it as its OIDC provider") plan.routes;
  issuer = "https://${idRoute.fqdn}";
  clientId = config.homestack.netbird.clientId;
  db = lib.findFirst (d: d.owner == guest.name) null guest.databases;
  secret = role: config.sops.secrets.${key role}.path;
  scopes = "openid profile email groups";
  newLayout = lib.hasAttrByPath [
    "services"
    "netbird"
    "server"
    "management"
    "store"
    "dsnFile"
  ] options;
  q = import ../../lib/quote.nix;
  # A libpq key=value DSN (NetBird reads it with pgx): each value single-quoted with \ and '
  # escaped (lib/quote.nix), so a name cannot add a keyword. In an environment file the
  # DSN is escaped once more for systemd's reading.
  dsn =
    let
      what = "databases.${q.show db.name}";
    in
    "host=${q.libpq (q.ipv4 "${what} server address" db.serverAddress)} port=${toString (q.port "${what} port" db.port)} user=${q.libpq db.role} password=${
      q.libpq config.sops.placeholder."postgresql/${db.role}-password"
    } dbname=${q.libpq db.name} sslmode=disable";
  dsnEnv = q.systemdEnv "databases.${q.show db.name} DSN" dsn;
in
{
  imports = [ ./db-client.nix ];

  options.homestack.netbird.clientId = mkOption {
    type = types.str;
    default = "netbird";
    description = ''
      The OIDC client id of NetBird in PocketID. Create a public client in PocketID for
      https://<vpn route>/ (callbacks /nb-auth, /nb-silent-auth, http://localhost:53000) and
      put its id here.
    '';
  };

  config = {
    services.netbird.server = {
      # Each component is enabled on its own: `server.enable` also turns on coturn (and, in
      # some versions, the module's relay and a web server) by default. The shared domain is
      # set anyway: component defaults in some layouts read it.
      inherit domain;
      management = {
        enable = true;
        inherit domain;
        port = ports.management;
        metricsPort = ports.management-metrics;
        turnDomain = domain;
        turnPort = ports.stun;
        oidcConfigEndpoint = "${issuer}/.well-known/openid-configuration";
        # Merged over the module's defaults; { _secret = path; } is read at start.
        settings = {
          DataStoreEncryptionKey._secret = secret "datastore-key";
          # STUN is served by the relay below (public UDP port forwarded by the relay host).
          Stuns = [
            {
              Proto = "udp";
              URI = "stun:${domain}:${toString ports.stun}";
              Username = "";
              Password = null;
            }
          ];
          TURNConfig = {
            Turns = [ ];
            TimeBasedCredentials = false;
            CredentialsTTL = "12h";
            Secret._secret = secret "turn-password";
          };
          Relay = {
            Addresses = [ "rels://${domain}:443/relay" ];
            CredentialsTTL = "24h";
            Secret._secret = secret "relay-secret";
          };
          Signal = {
            Proto = "https";
            URI = "${domain}:443";
          };
          HttpConfig = {
            AuthIssuer = issuer;
            AuthAudience = clientId;
            AuthKeysLocation = "${issuer}/.well-known/jwks.json";
            OIDCConfigEndpoint = "${issuer}/.well-known/openid-configuration";
            IdpSignKeyRefreshEnabled = true;
          };
          IdpManagerConfig.ManagerType = "none";
          DeviceAuthorizationFlow.Provider = "none";
          PKCEAuthorizationFlow.ProviderConfig = {
            Audience = clientId;
            ClientID = clientId;
            ClientSecret = "";
            AuthorizationEndpoint = "${issuer}/authorize";
            TokenEndpoint = "${issuer}/api/oidc/token";
            Scope = scopes;
            RedirectURLs = [ "http://localhost:53000" ];
            UseIDToken = true;
          };
        }
        # Older layout: the engine in the settings, the DSN from the environment file below.
        // lib.optionalAttrs (!newLayout) {
          StoreConfig.Engine = if db != null then "postgres" else "sqlite";
        };
      }
      // lib.optionalAttrs newLayout {
        # Newer layout: its own store options (it passes the DSN as a systemd credential).
        store = {
          engine = if db != null then "postgres" else "sqlite";
          dsnFile = lib.mkIf (db != null) config.sops.templates."netbird-management.dsn".path;
        };
        environment.NB_DISABLE_GEOLOCATION = true;
      };
      signal = {
        enable = true;
        inherit domain;
        port = ports.signal;
        metricsPort = ports.signal-metrics;
      };
      dashboard = {
        enable = true;
        inherit domain;
        managementServer = "https://${domain}";
        settings = {
          AUTH_AUTHORITY = issuer;
          AUTH_CLIENT_ID = clientId;
          AUTH_AUDIENCE = clientId;
          AUTH_SUPPORTED_SCOPES = scopes;
          USE_AUTH0 = false;
          AUTH_REDIRECT_URI = "/nb-auth";
          AUTH_SILENT_REDIRECT_URI = "/nb-silent-auth";
          NETBIRD_TOKEN_SOURCE = "idToken";
        };
      };
      # The relay's STUN replaces coturn. passwordFile has no default and older layouts read
      # it while building the management's default settings: define it anyway.
      coturn = {
        enable = false;
        passwordFile = null;
      };
    };

    systemd.services.netbird-management = lib.mkIf (!newLayout) {
      # Management downloads GeoLite databases at start otherwise, and fails offline.
      environment.NB_DISABLE_GEOLOCATION = "true";
      serviceConfig.EnvironmentFile = lib.mkIf (db != null) [
        config.sops.templates."netbird-management.env".path
      ];
    };
    sops.templates = lib.mkIf (db != null) (
      if newLayout then
        {
          # The DSN alone, loaded by the module with LoadCredential (as root).
          "netbird-management.dsn" = {
            content = dsn;
            owner = "root";
            restartUnits = [ "netbird-management.service" ];
          };
        }
      else
        {
          # NetBird reads NB_STORE_ENGINE_POSTGRES_DSN; releases before that name read only
          # NETBIRD_STORE_ENGINE_POSTGRES_DSN (later ones still accept it): set both.
          "netbird-management.env" = {
            content = ''
              NB_STORE_ENGINE_POSTGRES_DSN=${dsnEnv}
              NETBIRD_STORE_ENGINE_POSTGRES_DSN=${dsnEnv}
            '';
            # Read by systemd (EnvironmentFile=) as root before the service starts.
            owner = "root";
            restartUnits = [ "netbird-management.service" ];
          };
        }
    );

    # The relay (WebSocket behind the proxy at /relay, STUN on UDP 3478), written here
    # because only newer nixpkgs has a module for it.
    systemd.services.netbird-relay = {
      description = "NetBird relay";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment = {
        NB_LISTEN_ADDRESS = ":${toString ports.relay}";
        # The binary's defaults are metrics on 9090 (management's port) and health on
        # :9000 (relay/cmd/root.go); both from the catalogue, as every other port.
        NB_METRICS_PORT = toString ports.relay-metrics;
        NB_HEALTH_LISTEN_ADDRESS = ":${toString ports.relay-health}";
        NB_EXPOSED_ADDRESS = "rels://${domain}:443/relay";
        NB_ENABLE_STUN = "true";
        NB_STUN_PORTS = toString ports.stun;
        NB_LOG_LEVEL = "info";
      };
      script = ''
        NB_AUTH_SECRET="$(cat "$CREDENTIALS_DIRECTORY/auth-secret")"
        export NB_AUTH_SECRET
        exec ${lib.getExe' pkgs.netbird-relay "netbird-relay"}
      '';
      serviceConfig = {
        DynamicUser = true;
        LoadCredential = [ "auth-secret:${secret "relay-secret"}" ];
        Restart = "on-failure";
      };
    };

    sops.secrets = {
      ${key "datastore-key"}.restartUnits = [ "netbird-management.service" ];
      ${key "turn-password"}.restartUnits = [ "netbird-management.service" ];
      ${key "relay-secret"}.restartUnits = [
        "netbird-management.service"
        "netbird-relay.service"
      ];
    };

    # The dashboard is a static site; the proxy forwards everything else on the route here.
    services.caddy = {
      enable = true;
      virtualHosts."http://:${toString ports.dashboard}".extraConfig = ''
        root * ${config.services.netbird.server.dashboard.finalDrv}
        try_files {path} {path}.html {path}/ /index.html
        file_server
      '';
    };
  };
}
