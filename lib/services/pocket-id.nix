# PocketID, the OIDC identity provider.
#
# Ports and secrets read from pocket-id/pocket-id backend/internal/common/env_config.go
# (defaultConfig: PORT "1411", HOST "0.0.0.0"; ValidateEnvConfig: "ENCRYPTION_KEY must be
# at least 16 bytes long"). Metrics are OpenTelemetry and off unless METRICS_ENABLED is
# set (the module leaves it unset), so the binary binds nothing else. nixpkgs'
# nixos/modules/services/security/pocket-id.nix keeps its data in /var/lib/pocket-id.
{
  description = "PocketID, the OIDC identity provider";
  module = "pocket-id.nix";
  units = [ "pocket-id.service" ];
  ports = [
    { name = "http"; port = 1411; proto = "tcp"; }
  ];
  health = [
    { kind = "http"; port = 1411; path = "/.well-known/openid-configuration"; }
  ];
  secrets = {
    # 32 characters of a 62-letter alphabet: ~190 bits, twice PocketID's minimum length.
    encryption-key = { name = "pocket-id/encryption-key"; format = "password:32"; generator = "random"; };
  };
  persist = [ "/var/lib/pocket-id" ];
  # PocketID exits at start when its PostgreSQL is not reachable.
  needs = [
    { service = "postgresql"; port = "postgresql"; ifDatabases = true; why = "its database"; }
  ];
}
