# The NetBird server on the vpn guest: management, signal, relay (with STUN) and the
# dashboard, all behind the proxy at the guest's route, with PocketID as the OIDC provider.
#
# nixpkgs' NetBird server module changed shape across versions (enableNginx vs ingress,
# relay and store options only in newer ones). This module uses only the options both
# layouts declare (the components' enable/domain/port/settings) and writes the rest itself:
# the relay unit, the database DSN and the GeoLite switch are plain systemd settings.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) plan guest;
  ports = {
    dashboard = 8080;
    management = 33073;
    signal = 10000;
    relay = 33080;
    stun = 3478;
  };
  domain = (lib.findFirst (r: r.port == ports.dashboard) (throw "guests.${guest.name}: netbird-server needs a route to port ${toString ports.dashboard} (the dashboard) in inventory.toml") guest.routes).fqdn;
  idRoute = lib.findFirst (
    r: builtins.elem "pocket-id" plan.guests.${r.guest}.services
  ) (throw "netbird-server: no guest runs pocket-id with a route; NetBird needs it as its OIDC provider") plan.routes;
  issuer = "https://${idRoute.fqdn}";
  clientId = config.homestack.netbird.clientId;
  db = lib.findFirst (d: d.owner == guest.name) null guest.databases;
  secret = name: config.sops.secrets.${name}.path;
  scopes = "openid profile email groups";
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
      # some versions, the module's relay and a web server) by default.
      management = {
        enable = true;
        inherit domain;
        port = ports.management;
        turnDomain = domain;
        turnPort = ports.stun;
        oidcConfigEndpoint = "${issuer}/.well-known/openid-configuration";
        # Merged over the module's defaults; { _secret = path; } is read at start.
        settings = {
          DataStoreEncryptionKey._secret = secret "netbird/datastore-key";
          StoreConfig.Engine = if db != null then "postgres" else "sqlite";
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
            Secret._secret = secret "netbird/turn-password";
          };
          Relay = {
            Addresses = [ "rels://${domain}:443/relay" ];
            CredentialsTTL = "24h";
            Secret._secret = secret "netbird/relay-secret";
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
        };
      };
      signal = {
        enable = true;
        inherit domain;
        port = ports.signal;
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

    systemd.services.netbird-management = {
      # Management downloads GeoLite databases at start otherwise, and fails offline.
      environment.NB_DISABLE_GEOLOCATION = "true";
      serviceConfig.EnvironmentFile = lib.mkIf (db != null) [
        config.sops.templates."netbird-management.env".path
      ];
    };
    sops.templates."netbird-management.env" = lib.mkIf (db != null) {
      content = ''
        NETBIRD_STORE_ENGINE_POSTGRES_DSN=host=${db.serverAddress} port=${toString db.port} user=${db.role} password=${
          config.sops.placeholder."postgresql/${db.role}-password"
        } dbname=${db.name} sslmode=disable
      '';
      # Read by systemd (EnvironmentFile=) as root before the service starts.
      owner = "root";
      restartUnits = [ "netbird-management.service" ];
    };

    # The relay (WebSocket behind the proxy at /relay, STUN on UDP 3478), written here
    # because only newer nixpkgs has a module for it.
    systemd.services.netbird-relay = {
      description = "NetBird relay";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment = {
        NB_LISTEN_ADDRESS = ":${toString ports.relay}";
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
        LoadCredential = [ "auth-secret:${secret "netbird/relay-secret"}" ];
        Restart = "on-failure";
      };
    };

    sops.secrets = {
      "netbird/datastore-key".restartUnits = [ "netbird-management.service" ];
      "netbird/turn-password".restartUnits = [ "netbird-management.service" ];
      "netbird/relay-secret".restartUnits = [
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

    homestack.persist = [ "/var/lib/netbird-mgmt" ];
  };
}
