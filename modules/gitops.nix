# GitOps pull mode: the host fetches the repository itself with its own read-only deploy
# key (a sops secret), refuses any commit not signed by an admin of the inventory, and
# switches to it on a timer, with the same health checks and rollback as `tools deploy`.
# What it did last is in /var/lib/homestack/gitops/status.json (`tools deploy status`).
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
  stateDir = "/var/lib/homestack/gitops";

  # `git verify-commit` with SSH signatures: one "<principal> <key>" line per admin key.
  allowedSigners = pkgs.writeText "homestack-allowed-signers" (
    lib.concatMapStrings (
      name: lib.concatMapStrings (key: "${name} namespaces=\"git\" ${key}\n") plan.users.${name}.sshKeys
    ) plan.admins
  );

  # The guests of this hypervisor, in the plan's deploy order.
  guests = lib.filter (g: lib.elem g (host.guests or [ ])) (lib.flatten plan.deployOrder);

  # One shell test per health endpoint of a guest, run from this host: the probe's argv
  # from the plan (lib/services/ via lib/plan.nix), the one `tools deploy` runs too.
  endpoint = _: h: lib.escapeShellArgs h.argv;

  guestChecks = lib.concatMapStrings (g: ''
    [ -n "$failed_guest" ] || check_guest ${g} ${
      lib.escapeShellArg (lib.concatStringsSep " && " (map (endpoint g) plan.guests.${g}.health))
    }
  '') guests;

  sshCommand = lib.concatStringsSep " " [
    "ssh -i ${config.sops.secrets.${cfg.deployKeySecret}.path}"
    "-o IdentitiesOnly=yes -o BatchMode=yes"
    "-o UserKnownHostsFile=${stateDir}/known_hosts"
    "-o StrictHostKeyChecking=${if cfg.knownHosts == null then "accept-new" else "yes"}"
  ];

  script = ''
    set -uo pipefail
    profile=/nix/var/nix/profiles/system
    repo=${stateDir}/repo
    nix() { command nix --extra-experimental-features 'nix-command flakes' "$@"; }

    status() { # state rev message
      jq -n --arg host ${machine} --arg state "$1" --arg rev "$2" --arg message "$3" \
        --arg generation "$(readlink "$profile")" --arg time "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{host: $host, state: $state, rev: $rev, message: $message,
          generation: $generation, time: $time}' > ${stateDir}/status.json.new
      mv ${stateDir}/status.json.new ${stateDir}/status.json
      echo "homestack-gitops: $1 $2: $3"
    }

    wait_for() { # seconds command...: retry until it succeeds
      local deadline=$(( $(date +%s) + $1 )); shift
      until "$@"; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 2
      done
    }

    healthy() {
      timeout ${toString cfg.healthTimeout} systemctl is-system-running --wait || return 1
      for g in ${lib.escapeShellArgs guests}; do
        wait_for ${toString cfg.healthTimeout} systemctl is-active --quiet "microvm@$g.service" || return 1
      done
    }

    # A guest whose runner changed is restarted (in the plan's order) and checked; if its
    # service does not answer it goes back to the runner it was booted from.
    check_guest() { # guest endpoint-test
      local dir=/var/lib/microvms/$1 old
      old=$(readlink "$dir/booted" || true)
      [ "$old" = "$(readlink "$dir/current")" ] && return 0
      systemctl restart "microvm@$1.service"
      if wait_for ${toString cfg.healthTimeout} systemctl is-active --quiet "microvm@$1.service" \
        && wait_for ${toString cfg.healthTimeout} bash -c "$2"; then
        return 0
      fi
      if [ -n "$old" ]; then
        ln -sfn "$old" "$dir/current"
        systemctl restart "microvm@$1.service"
      fi
      failed_guest=$1
      return 1
    }

    export GIT_SSH_COMMAND=${lib.escapeShellArg sshCommand}
    # The fetched head goes to its own branch (never the checked-out one), which the
    # build below reads with `git+file://…?ref=…&rev=…`.
    [ -d "$repo/.git" ] || git init --quiet "$repo"
    if ! git -C "$repo" fetch --quiet --force ${lib.escapeShellArg cfg.repository} \
      ${lib.escapeShellArg "+refs/heads/${cfg.branch}:refs/heads/homestack-deploy"}; then
      status failed "" "cannot fetch ${cfg.repository} ${cfg.branch}"
      exit 1
    fi
    rev=$(git -C "$repo" rev-parse refs/heads/homestack-deploy)
    last=$(cat ${stateDir}/deployed 2>/dev/null || true)
    if [ "$rev" = "$last" ]; then
      status unchanged "$rev" "already deployed"
      exit 0
    fi
    # A commit that failed once is not retried every few minutes: push a fix.
    if [ "$rev" = "$(cat ${stateDir}/failed 2>/dev/null || true)" ]; then
      echo "homestack-gitops: $rev failed before; waiting for a new commit"
      exit 0
    fi
    if ! git -C "$repo" -c gpg.format=ssh -c gpg.ssh.allowedSignersFile=${allowedSigners} \
      verify-commit "$rev"; then
      status refused "$rev" "commit is not signed by an admin of the inventory"
      exit 1
    fi
    # A signed but older commit would roll the host back: only move forward.
    if [ -n "$last" ] && ! git -C "$repo" merge-base --is-ancestor "$last" "$rev"; then
      status refused "$rev" "not a descendant of the deployed commit $last"
      exit 1
    fi

    # The steps of `nixos-rebuild switch`, split so that a failed build (nothing changed)
    # is told apart from a failed switch (rolled back).
    if ! new=$(nix build --no-link --print-out-paths \
      "git+file://$repo?ref=homestack-deploy&rev=$rev#nixosConfigurations.${machine}.config.system.build.toplevel"); then
      echo "$rev" > ${stateDir}/failed
      status failed "$rev" "build failed; nothing was switched"
      exit 1
    fi
    prev=$(readlink "$profile"); prev=''${prev#system-}; prev=''${prev%-link}
    failed_guest=""
    if nix-env -p "$profile" --set "$new" && "$profile/bin/switch-to-configuration" switch \
      && healthy; then
      ${guestChecks}
      if [ -z "$failed_guest" ]; then
        echo "$rev" > ${stateDir}/deployed
        status switched "$rev" "healthy"
        exit 0
      fi
      why="guest $failed_guest is unhealthy (it was put back on its previous runner)"
    else
      why="switch or health check failed"
    fi
    echo "$rev" > ${stateDir}/failed
    if nix-env -p "$profile" --switch-generation "$prev" \
      && "$profile/bin/switch-to-configuration" switch; then
      # Guests already restarted on a new runner go back to what this generation declares.
      for g in ${lib.escapeShellArgs guests}; do
        dir=/var/lib/microvms/$g
        [ "$(readlink "$dir/booted")" = "$(readlink "$dir/current")" ] \
          || systemctl restart "microvm@$g.service"
      done
      status rolled-back "$rev" "$why; back on generation $prev"
    else
      status failed "$rev" "$why; ROLLBACK to generation $prev FAILED: check by hand"
    fi
    exit 1
  '';
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
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = host != null;
        message = "homestack.gitops: ${machine} is a guest; GitOps runs on hosts (its hypervisor deploys it)";
      }
    ];

    sops.secrets.${cfg.deployKeySecret} = { };

    systemd.tmpfiles.rules = [ "d ${stateDir} 0700 root root -" ];

    systemd.services.homestack-gitops = {
      description = "Homestack GitOps: fetch, verify, switch, check, roll back";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # It switches the system itself: a switch must never restart or stop it mid-way.
      restartIfChanged = false;
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
        pkgs.jq
        pkgs.curl
        pkgs.bash
        pkgs.coreutils
        config.systemd.package
      ];
      preStart = lib.optionalString (cfg.knownHosts != null) ''
        install -m 0600 ${pkgs.writeText "gitops-known-hosts" cfg.knownHosts} ${stateDir}/known_hosts
      '';
      inherit script;
      serviceConfig.Type = "oneshot";
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
