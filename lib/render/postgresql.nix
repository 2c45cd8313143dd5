# pg_hba.conf lines and the roles/databases for the database guest: each owner guest may
# reach only its own database, with a password, from its own address. Everything else
# over the network is rejected.
let
  u = import ../util.nix;
  inherit (builtins) filter;
in
{
  hba =
    plan: server:
    let
      dbs = filter (d: d.server == server) plan.databases;
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/postgresql.nix) from inventory.toml. Do not edit."
        "# TYPE  DATABASE        USER            ADDRESS                 METHOD"
        "local   all             postgres                                peer"
        "local   all             all                                     peer"
      ]
      ++ map (d: "host    ${d.name} ${d.role} ${d.ownerAddress}/32 scram-sha-256") dbs
      ++ [ "host    all             all             0.0.0.0/0               reject" ]
    );

  init =
    plan: server:
    let
      dbs = filter (d: d.server == server) plan.databases;
    in
    u.lines (
      [ "-- Rendered by Homestack (lib/render/postgresql.nix). Passwords are set from sops secrets." ]
      ++ u.concatMap (d: [
        "CREATE ROLE \"${d.role}\" LOGIN;"
        "CREATE DATABASE \"${d.name}\" OWNER \"${d.role}\";"
        "REVOKE ALL ON DATABASE \"${d.name}\" FROM PUBLIC;"
      ]) dbs
    );
}
