# PostgreSQL on the database guest: listens on the guest's own address, pg_hba exactly as
# the plan renders it (each owner guest reaches only its own database, with a password),
# databases and owners from the plan, and each role's password from its sops file.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (config.homestack) plan guest root;
  sopsFile = import ../sops-file.nix root;
  databases = lib.filter (d: d.server == guest.name) plan.databases;
  secretName = d: "postgresql/${d.role}-password";
  cfg = config.services.postgresql;
  psql = "${cfg.finalPackage}/bin/psql";
  q = import ../../lib/quote.nix;
  # One database's SQL, identifiers quoted with " doubled (lib/quote.nix). A file rather
  # than a heredoc: no name can end the shell's input early. psql's :'pw' quoting keeps the
  # secret out of the SQL text.
  passwordSql =
    d:
    pkgs.writeText "homestack-postgresql-password.sql" ''
      ALTER ROLE ${q.sqlIdent d.role} WITH LOGIN PASSWORD :'pw';
      REVOKE ALL ON DATABASE ${q.sqlIdent d.name} FROM PUBLIC;
    '';
in
{
  assertions = map (d: {
    assertion = d.role == d.name;
    message = "databases: ${d.name} is owned by role ${d.role}; the PostgreSQL module gives ownership only to a role of the same name";
  }) databases;

  services.postgresql = {
    enable = true;
    enableTCPIP = true;
    # enableTCPIP sets listen_addresses = "*" at normal priority; only the guest's address.
    settings.listen_addresses = lib.mkForce "127.0.0.1,${guest.address}";
    settings.port = guest.portOf.postgresql.postgresql;
    settings.password_encryption = "scram-sha-256";
    # The plan's pg_hba is complete (local peer, one line per owner, reject the rest);
    # NixOS would otherwise append its own defaults after it.
    authentication = lib.mkForce plan.artifacts.pgHba;
    ensureDatabases = map (d: d.name) databases;
    ensureUsers = map (d: {
      name = d.role;
      ensureDBOwnership = true;
      ensureClauses.login = true;
    }) databases;
  };

  # Binding the guest address must not depend on the order networkd and postgres start in.
  boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;

  sops.secrets = lib.listToAttrs (
    map (d: {
      name = secretName d;
      value = {
        sopsFile = sopsFile d.secretsFile;
        key = d.secretKey;
        owner = "postgres";
        group = "postgres";
        restartUnits = [ "homestack-postgresql-passwords.service" ];
      };
    }) databases
  );

  # PostgreSQL has no password option: set each role's password (and close its database to
  # other roles) after the roles exist.
  systemd.services.homestack-postgresql-passwords = lib.mkIf (databases != [ ]) {
    description = "Set PostgreSQL role passwords from sops secrets";
    after = [
      "postgresql.service"
      "postgresql-setup.service"
    ];
    requires = [ "postgresql.service" ];
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      User = "postgres";
    };
    script = lib.concatMapStrings (d: ''
      ${psql} -X -v ON_ERROR_STOP=1 -v pw="$(cat ${lib.escapeShellArg config.sops.secrets.${secretName d}.path})" -f ${passwordSql d}
    '') databases;
  };
}
