# `db`: PostgreSQL for the guests that own databases; never reachable from `proxy`.
{
  imports = [ ../../modules/services/postgresql.nix ];
}
