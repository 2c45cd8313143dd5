# For a guest that owns databases: its role passwords (from the shared sops files it may
# decrypt) and a libpq connection URL per database, assembled by sops-nix templates.
{ config, lib, ... }:
let
  inherit (config.homestack) guest root;
  sopsFile = import ../sops-file.nix root;
in
{
  sops.secrets = lib.listToAttrs (
    map (d: {
      name = "postgresql/${d.role}-password";
      value = {
        sopsFile = sopsFile d.secretsFile;
        key = d.secretKey;
      };
    }) guest.databases
  );
}
