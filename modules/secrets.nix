# sops-nix wiring shared by every machine: the machine decrypts its own file
# (plan.guests.<g>.secretsFile, or secrets/<host>.yaml) with the age identity derived from
# its own SSH ed25519 host key. No machine shares its decrypted /run/secrets with another.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) root machine;
  sopsFile = import ./sops-file.nix root;
  self = if config.homestack.guest != null then config.homestack.guest else config.homestack.host;
  relative = self.secretsFile or "secrets/${machine}.yaml";
  missing = lib.filter (s: !(builtins.isPath s.sopsFile)) (lib.attrValues config.sops.secrets);
in
{
  options.homestack.secrets.file = mkOption {
    type = types.either types.path types.str;
    default = sopsFile relative;
    defaultText = lib.literalExpression "root + \"/\${(plan.guests.<machine> or plan.hosts.<machine>).secretsFile}\"";
    description = "This machine's own sops file.";
  };

  config = {
    sops.defaultSopsFile = config.homestack.secrets.file;
    # sops-nix can only check files that exist; the warning below says which are missing.
    sops.validateSopsFiles = lib.mkDefault (missing == [ ]);
    sops.age.sshKeyPaths = map (k: k.path) (
      lib.filter (k: k.type == "ed25519") config.services.openssh.hostKeys
    );
    # No RSA host key exists (see common.nix); say so rather than rely on the default.
    sops.gnupg.sshKeyPaths = [ ];

    warnings = lib.optional (missing != [ ]) (
      "${machine}: sops file(s) not found: "
      + lib.concatStringsSep ", " (lib.unique (map (s: toString s.sopsFile) missing))
      + "; write them with `tools secrets set` (until then those secrets are missing at activation)"
    );
  };
}
