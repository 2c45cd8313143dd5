# GitOps pull mode: the host fetches the repository itself with its own read-only deploy
# key (a sops secret), refuses any commit not signed by an admin of the inventory or not
# descending from the revision it runs (system.configurationRevision), and deploys it to
# itself and its guests on a timer with `tools gitops`: the deploy engine of `tools deploy`,
# run locally (tools/homestack/deploy/gitops.py). What it did last is in
# /var/lib/homestack/gitops/status.json (`tools deploy status`).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;
  cfg = config.homestack.gitops;
  inherit (config.homestack) plan machine;
  host = config.homestack.host;
  # Exit status of `tools gitops` for an outcome it handled and recorded (refused, failed,
  # rolled back) and for "try again later": neither leaves the unit failed, which would
  # make the system "degraded" and fail the next deploy's health check.
  handled = [
    3
    75
  ];
  stateDir = "/var/lib/homestack/gitops";
  # On an Incus host the engine also runs OpenTofu here (tools/homestack/deploy/incus.py):
  # the `tofu` and `incus` clients, and the state passphrase that OpenTofu reads from
  # TF_VAR_state_passphrase (tools/homestack/tofu.py), from a sops secret through an
  # EnvironmentFile that sops-nix renders at activation (sops.templates, sops.placeholder).
  incus = (host.engine or "microvm") == "incus";
  tofuEnv = "homestack-gitops-tofu.env";

  # `git verify-commit` with SSH signatures: one "<principal> <key>" line per admin key.
  allowedSigners = pkgs.writeText "homestack-allowed-signers" (
    lib.concatMapStrings (
      name: lib.concatMapStrings (key: "${name} namespaces=\"git\" ${key}\n") plan.users.${name}.sshKeys
    ) plan.admins
  );

  sshCommand = lib.concatStringsSep " " [
    "ssh -i ${config.sops.secrets.${cfg.deployKeySecret}.path}"
    "-o IdentitiesOnly=yes -o BatchMode=yes"
    "-o UserKnownHostsFile=${stateDir}/known_hosts"
    "-o StrictHostKeyChecking=${if cfg.knownHosts == null then "accept-new" else "yes"}"
  ];

  # The deploy engine itself (`tools gitops` runs `tools deploy`'s code on this host):
  # health probes, order, snapshots, lock and rollback exist once, in tools/homestack/deploy.
  gitops = lib.escapeShellArgs [
    "${cfg.package}/bin/tools"
    "gitops"
    "--machine"
    machine
    "--repository"
    cfg.repository
    "--branch"
    cfg.branch
    "--state-dir"
    stateDir
    "--allowed-signers"
    "${allowedSigners}"
    "--health-timeout"
    (toString cfg.healthTimeout)
  ];
in
{
  options.homestack.gitops = {
    enable = mkEnableOption "pulling and switching to the repository's signed commits on a timer";
    repository = mkOption {
      type = types.str;
      example = "git@github.com:alice/homelab.git";
      description = "Git URL of this Homestack repository, fetched over SSH with the deploy key.";
    };
    branch = mkOption {
      type = types.str;
      default = "main";
      description = "Branch whose head commit is deployed.";
    };
    dates = mkOption {
      type = types.str;
      default = "*:0/15";
      description = "When to look for a new commit (systemd OnCalendar).";
    };
    deployKeySecret = mkOption {
      type = types.str;
      default = "gitops_deploy_key";
      description = "Name of the secret in this machine's sops file holding the read-only SSH deploy key.";
    };
    statePassphraseSecret = mkOption {
      type = types.str;
      default = "tofu_state_passphrase";
      description = "Name of the secret in this machine's sops file holding the passphrase of OpenTofu's state (Incus hosts only).";
    };
    knownHosts = mkOption {
      type = types.nullOr types.lines;
      default = null;
      example = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
      description = "known_hosts lines of the Git server; null trusts its key on first use.";
    };
    healthTimeout = mkOption {
      type = types.ints.positive;
      default = 300;
      description = "Seconds each health check may take to pass before the switch is rolled back.";
    };
    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      defaultText = lib.literalExpression "self.packages.x86_64-linux.tools (set by modules/machines.nix)";
      description = "The Homestack tools package whose deploy engine GitOps runs.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = host != null;
        message = "homestack.gitops: ${machine} is a guest; GitOps runs on hosts (its hypervisor deploys it)";
      }
      {
        assertion = cfg.package != null;
        message = "homestack.gitops.package: ${machine} has GitOps on but no tools package; set it to the flake's packages.x86_64-linux.tools";
      }
    ];

    sops.secrets = {
      ${cfg.deployKeySecret} = { };
    }
    // lib.optionalAttrs incus { ${cfg.statePassphraseSecret} = { }; };
    sops.templates = lib.optionalAttrs incus {
      ${tofuEnv}.content = "TF_VAR_state_passphrase=${config.sops.placeholder.${cfg.statePassphraseSecret}}\n";
    };

    systemd.tmpfiles.rules = [ "d ${stateDir} 0700 root root -" ];

    systemd.services.homestack-gitops = {
      description = "Homestack GitOps: fetch, verify, deploy with the deploy engine";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # It switches the system itself: a switch must never restart or stop it mid-way, even
      # one whose configuration renames or disables this unit. nixpkgs' own upgrade
      # service does the same (nixos/modules/tasks/auto-upgrade.nix).
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      # What the engine runs on this machine (tools/homestack/deploy/steps.py): nix-env and
      # nix build, systemd-run/systemctl, zfs snapshots, the probes' curl and bash.
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
        pkgs.curl
        pkgs.bash
        pkgs.coreutils
        config.systemd.package
      ]
      ++ lib.optional (host.zfs or null != null) config.boot.zfs.package
      ++ lib.optionals incus [
        pkgs.opentofu
        config.virtualisation.incus.clientPackage
      ];
      environment = {
        GIT_SSH_COMMAND = sshCommand;
        # nix and git want a home; nixpkgs' auto-upgrade service sets the same
        HOME = "/root";
      };
      preStart = lib.optionalString (cfg.knownHosts != null) ''
        install -m 0600 ${pkgs.writeText "gitops-known-hosts" cfg.knownHosts} ${stateDir}/known_hosts
      '';
      script = "exec ${gitops}";
      serviceConfig = {
        Type = "oneshot";
        SuccessExitStatus = handled;
      }
      // lib.optionalAttrs incus { EnvironmentFile = config.sops.templates.${tofuEnv}.path; };
    };

    systemd.timers.homestack-gitops = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.dates;
        RandomizedDelaySec = "2min";
        Persistent = true;
      };
    };
  };
}
