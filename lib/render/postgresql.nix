# pg_hba.conf lines and the roles/databases for the database guest: each owner guest may
# reach only its own database, with a password, from its own address. Everything else
# over the network is rejected. Names are quoted (lib/quote.nix): in pg_hba.conf a quoted
# name is never a keyword such as `all`, and in SQL a quoted identifier is one name.
let
  u = import ../util.nix;
  q = import ../quote.nix;
  inherit (builtins) filter;
in
{
  hba =
    plan: server:
    let
      dbs = filter (d: d.server == server) plan.databases;
      line =
        d:
        let
          what = "databases.${q.show d.name}";
        in
        "host    ${q.pgHbaName "${what} name" d.name} ${q.pgHbaName "${what} role" d.role} ${q.ipv4 "${what} owner address" d.ownerAddress}/32 scram-sha-256";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/postgresql.nix) from inventory.toml. Do not edit."
        "# TYPE  DATABASE        USER            ADDRESS                 METHOD"
        "local   all             postgres                                peer"
        "local   all             all                                     peer"
      ]
      ++ map line dbs
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
        "CREATE ROLE ${q.sqlIdent d.role} LOGIN;"
        "CREATE DATABASE ${q.sqlIdent d.name} OWNER ${q.sqlIdent d.role};"
        "REVOKE ALL ON DATABASE ${q.sqlIdent d.name} FROM PUBLIC;"
      ]) dbs
    );
}
