"""modules/gitops.nix, run for real: the module's own script (evaluated by Nix from the
module with the example plan) fetches from a real Git repository with commits signed by
real SSH keys, and must switch, refuse, or roll back.

Evaluated with nixpkgs' `lib` when NIXPKGS_LIB names a checkout of it, else with the small
stand-in of tests/nixos/option-paths/lib.nix. The host it runs on is not NixOS, said
plainly: `nix build`, `nix-env`, `systemctl` and each configuration's
`switch-to-configuration` are small scripts of this test first on PATH, and the script's
/var/lib and /nix/var/nix/profiles are this test's directories, bind-mounted in a private
mount namespace. git, ssh-keygen (signature checks), jq and bash are the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE

ROOT = Path(__file__).resolve().parent.parent
KEYS = ROOT / "tests" / "keys"
# nixpkgs' lib when a checkout is named (NIXPKGS_LIB=<dir with default.nix>), else the
# small stand-in the option-path check uses: enough for this module's string helpers.
NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB")
LIB = Path(NIXPKGS_LIB) if NIXPKGS_LIB else ROOT / "tests" / "nixos" / "option-paths" / "lib.nix"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not LIB.exists() or shutil.which("nix-instantiate") is None
    or shutil.which("jq") is None or shutil.which("nix") is None,
    reason="needs root, nix-instantiate, nix and jq",
)

EVAL = """
let
  lib = import LIB;
  plan = builtins.fromJSON (builtins.readFile PLAN);
  pkgs = {
    writeText = name: text: builtins.toFile name text;
    git = "git"; openssh = "openssh"; jq = "jq"; curl = "curl"; bash = "bash";
    coreutils = "coreutils";
  };
  config = {
    homestack = {
      inherit plan;
      machine = "homelab";
      host = plan.hosts.homelab;
      gitops = {
        enable = true; repository = REPO; branch = "main"; dates = "*:0/15";
        deployKeySecret = "gitops_deploy_key"; knownHosts = null; healthTimeout = 2;
      };
    };
    sops.secrets.gitops_deploy_key.path = "/run/secrets/gitops_deploy_key";
    nix.package = "nix";
    systemd.package = "systemd";
  };
  module = import MODULE { inherit config lib pkgs; };
in
  assert module.config.condition;
  module.config.content.systemd.services.homestack-gitops.script
"""

FAKES = {
    "nix": """#!/bin/sh
echo "nix $*" >> "$LOG"
cat "$T/next-build"
""",
    "nix-env": r"""#!/bin/sh
set -eu
echo "nix-env $*" >> "$LOG"
profile=$2; dir=$(dirname "$profile"); base=$(basename "$profile")
case $3 in
  --set)
    last=$(ls "$dir" | sed -n "s/^$base-\([0-9]*\)-link$/\1/p" | sort -n | tail -1)
    next=$((${last:-0} + 1))
    ln -s "$4" "$dir/$base-$next-link"; ln -sfn "$base-$next-link" "$profile" ;;
  --switch-generation) ln -sfn "$base-$4-link" "$profile" ;;
esac
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$LOG"
case $1 in
  is-system-running) [ "$(cat "$T/state")" = healthy ] && echo running && exit 0
                     echo degraded; exit 1 ;;
esac
""",
}


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host for the script, and a repository with commits signed by alice."""
    t = tmp_path
    from homestack.plan import load_plan

    plan = load_plan(EXAMPLE)
    assert (KEYS / "admin_alice.pub").read_text().split()[1] in plan["users"]["alice"]["sshKeys"][0]
    (t / "plan.json").write_text(json.dumps(plan))
    expr = (EVAL.replace("LIB", str(LIB)).replace("PLAN", str(t / "plan.json"))
            .replace("REPO", json.dumps(str(t / "origin")))
            .replace("MODULE", str(ROOT / "modules" / "gitops.nix")))
    # `nix eval` (unlike nix-instantiate --eval) writes the allowed-signers file to the store.
    script = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval",
                             "--impure", "--raw", "--expr", expr],
                            check=True, capture_output=True, text=True).stdout
    (t / "gitops.sh").write_text(script)

    for name, text in FAKES.items():
        (t / "bin").mkdir(exist_ok=True)
        (t / "bin" / name).write_text(text)
        (t / "bin" / name).chmod(0o755)
    for name in ("good", "broken"):
        switch = t / "systems" / name / "bin" / "switch-to-configuration"
        switch.parent.mkdir(parents=True)
        health = "healthy" if name != "broken" else "degraded"
        switch.write_text(
            f'#!/bin/sh\necho "switch {name}" >> "$LOG"\necho {health} > "$T/state"\n'
        )
        switch.chmod(0o755)
    (t / "state").write_text("healthy\n")
    profiles = t / "profiles"
    profiles.mkdir()
    (profiles / "system-1-link").symlink_to(t / "systems" / "good")
    (profiles / "system").symlink_to("system-1-link")
    for guest in ("auth", "db", "proxy", "vpn"):  # every guest runs what is declared
        d = t / "varlib" / "microvms" / guest
        d.mkdir(parents=True)
        (d / "current").symlink_to("/nix/store/runner")
        (d / "booted").symlink_to("/nix/store/runner")
    (t / "varlib" / "homestack" / "gitops").mkdir(parents=True)

    key = t / "alice"
    shutil.copy(KEYS / "admin_alice", key)
    key.chmod(0o600)
    stranger = t / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    git(t, "init", "-q", "-b", "main", str(t / "origin"))
    return t


def git(t: Path, *args: str) -> str:
    env = {"HOME": str(t), "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ["PATH"],
           "GIT_AUTHOR_NAME": "alice", "GIT_AUTHOR_EMAIL": "alice@home.arpa",
           "GIT_COMMITTER_NAME": "alice", "GIT_COMMITTER_EMAIL": "alice@home.arpa"}
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def commit(t: Path, message: str, key: str | None) -> str:
    origin = str(t / "origin")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={t / key}", "commit", "-S"] \
        if key else ["commit"]
    git(t, "-C", origin, *sign, "-q", "--allow-empty", "-m", message)
    return git(t, "-C", origin, "rev-parse", "HEAD")


def run_timer(t: Path, builds: str) -> tuple[int, dict[str, str], list[str]]:
    """One run of the GitOps service; its exit status, status.json, and what it ran."""
    (t / "next-build").write_text(str(t / "systems" / builds) + "\n")
    (t / "log").write_text("")
    boot = (f"mount --bind {t}/varlib /var/lib && "
            f"mount --bind {t}/profiles /nix/var/nix/profiles && exec bash {t}/gitops.sh")
    env = {"PATH": f"{t}/bin:{os.environ['PATH']}", "LOG": str(t / "log"), "T": str(t),
           "HOME": str(t), "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", boot],
                          env=env, capture_output=True, text=True, check=False, timeout=60)
    status_file = t / "varlib" / "homestack" / "gitops" / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    return proc.returncode, status, (t / "log").read_text().splitlines()


def profile(t: Path) -> str:
    return str((t / "profiles" / "system").readlink())


def test_signed_commit_is_switched_then_left_alone(host: Path) -> None:
    rev = commit(host, "one", "alice")
    code, status, log = run_timer(host, "good")
    assert code == 0, status
    assert (status["state"], status["rev"], status["message"]) == ("switched", rev, "healthy")
    assert status["generation"] == "system-2-link" == profile(host)
    assert log[0] == ("nix --extra-experimental-features nix-command flakes build --no-link "
                      "--print-out-paths git+file:///var/lib/homestack/gitops/repo"
                      f"?ref=homestack-deploy&rev={rev}#nixosConfigurations.homelab.config"
                      ".system.build.toplevel")
    assert "switch good" in log
    code, status, log = run_timer(host, "good")
    assert (code, status["state"]) == (0, "unchanged")
    assert log == []


@pytest.mark.parametrize("key", [None, "stranger"], ids=["unsigned", "untrusted-key"])
def test_commit_not_signed_by_an_admin_is_refused(host: Path, key: str | None) -> None:
    commit(host, "one", "alice")
    run_timer(host, "good")
    rev = commit(host, "sneaky", key)
    code, status, log = run_timer(host, "broken")
    assert code == 1
    assert (status["state"], status["rev"]) == ("refused", rev)
    assert status["message"] == "commit is not signed by an admin of the inventory"
    assert log == [] and profile(host) == "system-2-link"


def test_unhealthy_switch_is_rolled_back_and_not_retried(host: Path) -> None:
    commit(host, "one", "alice")
    run_timer(host, "good")
    rev = commit(host, "two", "alice")
    code, status, log = run_timer(host, "broken")
    assert code == 1
    assert (status["state"], status["rev"]) == ("rolled-back", rev)
    assert status["message"] == "switch or health check failed; back on generation 2"
    assert profile(host) == "system-2-link"
    assert (host / "state").read_text().strip() == "healthy"
    assert log[-2:] == ["nix-env -p /nix/var/nix/profiles/system --switch-generation 2",
                        "switch good"]
    code, _, log = run_timer(host, "broken")
    assert (code, log) == (0, [])  # the same commit is not tried again
