# The sops file at a repository-relative path, for `sops.secrets.<n>.sopsFile`: a Nix path
# when the file exists (sops-nix hashes and checks it at build time), otherwise its path as
# a string, so a machine still evaluates before `tools secrets` has written the file.
root: relative:
let
  file = root + "/${relative}";
in
if builtins.pathExists file then file else toString file
