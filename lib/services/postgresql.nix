# PostgreSQL. 5432 is its default `port` (nixpkgs nixos/modules/services/databases/
# postgresql.nix, settings.port); the role passwords are secrets of the database owners
# (lib/secrets.nix), and its data lives under /var/lib/postgresql.
{
  description = "PostgreSQL";
  module = "postgresql.nix";
  units = [ "postgresql.service" ];
  ports = [
    { name = "postgresql"; port = 5432; proto = "tcp"; }
  ];
  health = [
    { kind = "tcp"; port = 5432; }
  ];
  secrets = { };
  persist = [ "/var/lib/postgresql" ];
  needs = [ ];
}
