"""GitOps (`tools gitops`, tools/homestack/deploy/gitops.py) on a bad day.

What is real: git, a repository with commits signed by real SSH keys, `git verify-commit`
against the inventory's admins, `git merge-base --is-ancestor`, status.json on disk.
The host is the model of tests/test_deploy_activation.py (a NixOS hypervisor with
microvm.nix guests), reached without ssh as GitOps does: the same deploy engine runs
every command locally. `nix build` is answered by the test (which system a revision
builds to), and so is `nixos-version --configuration-revision` (the revision the running
system was built from).

modules/gitops.nix is evaluated too: it must run this code, survive its own removal and
not leave the unit failed for an outcome it recorded.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deployfakes import nix_build_json
from test_deploy import make_plan
from test_deploy_activation import GUESTS, NEW, OLD, Hypervisor

from homestack.deploy import gitops
from homestack.deploy.health import Clock
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.process import RecordingRunner, Result

ROOT = Path(__file__).resolve().parent.parent
KEYS = ROOT / "tests" / "keys"


def git(t: Path, *args: str) -> str:
    env = {
        "HOME": str(t),
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH": os.environ["PATH"],
        "GIT_AUTHOR_NAME": "alice",
        "GIT_AUTHOR_EMAIL": "alice@home.arpa",
        "GIT_COMMITTER_NAME": "alice",
        "GIT_COMMITTER_EMAIL": "alice@home.arpa",
    }
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@dataclass
class Host:
    """A hypervisor that pulls from ``origin``, and what each revision builds to."""

    t: Path
    machine: Hypervisor = field(default_factory=Hypervisor)
    revision_of: dict[str, str] = field(default_factory=dict)  # system -> revision
    builds: dict[str, str] = field(default_factory=dict)  # revision -> system
    fetch_failures: int = 0
    build_failures: int = 0
    sleeps: list[float] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def origin(self) -> Path:
        return self.t / "origin"

    @property
    def state(self) -> Path:
        return self.t / "state"

    def commit(self, message: str, key: str | None, builds: str = NEW) -> str:
        sign = (
            ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.t / key}", "commit", "-S"]
            if key
            else ["commit"]
        )
        git(self.t, "-C", str(self.origin), *sign, "-q", "--allow-empty", "-m", message)
        rev = git(self.t, "-C", str(self.origin), "rev-parse", "HEAD")
        self.builds[rev] = builds
        return rev

    def settings(self, **changes: Any) -> gitops.Settings:
        """The unit's settings for this host: its machine, origin, state and signers."""
        return gitops.Settings(
            machine="homelab",
            repository=str(self.origin),
            branch="main",
            state_dir=self.state,
            allowed_signers=self.t / "allowed_signers",
            **changes,
        )

    def run(self) -> gitops.Status:
        machine = RecordingRunner(script=self.answer)
        settings = self.settings(backoff=1)
        clock = Clock(sleep=self.sleeps.append)
        deploy = gitops.local_deploy(
            machine, clock=clock, options=DeployOptions(health_timeout=0, poll_interval=0)
        )
        return gitops.GitOps(
            settings, runner=machine, load_plan=lambda _: make_plan(), deploy=deploy, clock=clock
        ).run()

    def answer(self, args: tuple[str, ...]) -> Result:  # noqa: PLR0911 - a host
        self.calls.append(args)
        if args[0] == "git":
            if "fetch" in args and self.fetch_failures:
                self.fetch_failures -= 1
                return Result(args, 128, "", "fatal: Could not resolve host: git.example\n")
            env = {**os.environ, "HOME": str(self.t), "GIT_CONFIG_NOSYSTEM": "1"}
            done = subprocess.run(args, check=False, capture_output=True, text=True, env=env)
            return Result(args, done.returncode, done.stdout, done.stderr)
        if args[-1] == "--configuration-revision":
            return Result(args, 0, self.revision_of.get(self.machine.running, "") + "\n", "")
        if "build" in args and "--json" in args:  # Nix 2.8: no --print-out-paths
            if self.build_failures:
                self.build_failures -= 1
                return Result(args, 1, "", "error: unable to download 'https://cache': timeout\n")
            name = next(a for a in args if a.startswith(".#")).split(".")[2]
            rev = git(self.t, "-C", str(self.state / "repo"), "rev-parse", "HEAD")
            out = (
                self.builds[rev]
                if name == "homelab"
                else (self.machine.systems[self.builds[rev]][name])
            )
            return Result(args, 0, nix_build_json(out), "")
        if args[0] == "tools":  # secrets and certificates check
            return Result(args, 0, "", "")
        code, out = self.machine.ssh(" ".join(_quote(a) for a in args))
        return Result(args, code, out, "")

    def status(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.state / "status.json").read_text())
        return data


def untouched(host: Host) -> bool:
    """Nothing but reads ran on the machine (status.json records what runs)."""
    return all(c.startswith("readlink ") for c in host.machine.seen)


def _quote(word: str) -> str:
    return shlex.quote(word)


pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


@pytest.fixture
def host(tmp_path: Path) -> Host:
    t = tmp_path
    shutil.copy(KEYS / "admin_alice", t / "alice")
    (t / "alice").chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "stranger")], check=True
    )
    alice = (KEYS / "admin_alice.pub").read_text().split()
    (t / "allowed_signers").write_text(f'alice namespaces="git" {alice[0]} {alice[1]}\n')
    git(t, "init", "-q", "-b", "main", str(t / "origin"))
    h = Host(t)
    # What runs was built from a first commit, as `tools deploy` or provisioning leaves it.
    h.revision_of[OLD] = h.commit("first", "alice", builds=OLD)
    return h


def test_a_signed_descendant_is_deployed_with_the_engine(host: Host) -> None:
    rev = host.commit("two", "alice")
    status = host.run()
    assert (status.state, status.rev, status.exit_code) == (gitops.State.SWITCHED, rev, 0)
    assert host.machine.running == NEW and host.machine.boot_default == NEW
    assert host.status()["state"] == "switched" and host.status()["rev"] == rev
    seen = host.machine.seen
    # the engine's steps: lock, snapshot before anything switches, watchdog, switch, probes
    lock = next(i for i, c in enumerate(seen) if "--unit=homestack-deploy-lock" in c)
    snapshot = next(i for i, c in enumerate(seen) if c.startswith("zfs snapshot"))
    assert lock < snapshot
    assert snapshot < next(i for i, c in enumerate(seen) if "switch-to-configuration test" in c)
    assert any("/dev/tcp/192.168.100.20/5432" in c for c in seen)
    host.revision_of[NEW] = rev
    host.machine.seen.clear()
    assert host.run().state is gitops.State.UNCHANGED
    assert untouched(host)


@pytest.mark.parametrize("key", [None, "stranger"], ids=["unsigned", "untrusted-key"])
def test_a_commit_not_signed_by_an_admin_is_refused(host: Host, key: str | None) -> None:
    rev = host.commit("sneaky", key)
    status = host.run()
    assert (status.state, status.rev) == (gitops.State.REFUSED, rev)
    assert status.message == "commit is not signed by an admin of the inventory"
    assert untouched(host) and host.machine.running == OLD


def test_an_old_signed_commit_cannot_be_replayed(host: Host) -> None:
    """Why: with no record of the deployed commit any admin-signed commit was accepted."""
    first = host.revision_of[OLD]
    newer = host.commit("revoke a key", "alice")
    host.revision_of[NEW] = newer
    host.machine.activate(NEW)  # the host runs the newer commit (e.g. re-provisioned)
    git(host.t, "-C", str(host.origin), "reset", "-q", "--hard", first)  # main moved back
    status = host.run()
    assert status.state is gitops.State.REFUSED
    assert status.message == f"not a descendant of the running revision {newer}"
    assert host.machine.running == NEW and untouched(host)


def test_a_system_with_no_revision_accepts_nothing(host: Host) -> None:
    host.revision_of.clear()  # deployed from a dirty tree: nothing to descend from
    host.commit("two", "alice")
    status = host.run()
    assert status.state is gitops.State.REFUSED
    assert "records no revision" in status.message
    assert untouched(host)


def test_a_guest_failing_its_probe_is_rolled_back_and_not_retried(host: Host) -> None:
    """Why: GitOps compared `booted` with `current` (equal after every microvm.nix switch),
    so a broken guest was recorded as healthy."""
    host.machine.broken.add("/nix/store/new-db")
    rev = host.commit("break db", "alice")
    status = host.run()
    assert (status.state, status.rev) == (gitops.State.ROLLED_BACK, rev)
    assert status.exit_code == gitops.EX_HANDLED
    assert "192.168.100.20" in (host.state / "status.json").read_text() or "homelab" in (
        status.message
    )
    assert host.machine.running == OLD and host.machine.boot_default == OLD
    assert host.machine.booted == {g: f"/nix/store/old-{g}" for g in GUESTS}
    host.machine.reboot()  # and it stays so
    assert host.machine.booted["db"] == "/nix/store/old-db"
    host.machine.seen.clear()
    again = host.run()
    assert again.state is gitops.State.ROLLED_BACK
    assert again.message == "rolled back before; waiting for a new commit"
    assert untouched(host)  # the same commit is not deployed again


def test_a_network_failure_is_retried_with_back_off(host: Host) -> None:
    rev = host.commit("two", "alice")
    host.fetch_failures = 2
    status = host.run()
    assert (status.state, status.rev) == (gitops.State.SWITCHED, rev)
    assert host.sleeps[:2] == [1, 2]  # waits longer each time


def test_a_network_that_stays_down_is_not_held_against_the_commit(host: Host) -> None:
    """Why: any `nix build` failure, a transient one too, blacklisted the commit for good."""
    rev = host.commit("two", "alice")
    host.build_failures = 4  # every attempt of this run
    status = host.run()
    assert status.state is gitops.State.WAITING
    assert status.exit_code == gitops.EX_TEMPFAIL
    assert host.machine.running == OLD
    assert not (host.state / "failed").exists()
    status = host.run()  # the network is back
    assert (status.state, status.rev) == (gitops.State.SWITCHED, rev)


def test_a_deploy_holding_the_lock_makes_gitops_wait(host: Host) -> None:
    """Why: nothing stopped GitOps and `tools deploy` from running at once."""
    host.commit("two", "alice")
    host.machine.units.add("homestack-deploy-lock")  # a laptop is deploying
    status = host.run()
    assert status.state is gitops.State.WAITING
    assert host.machine.running == OLD
    assert not (host.state / "failed").exists()


def test_an_invalid_inventory_in_a_commit_is_recorded_not_a_crash(host: Host) -> None:
    rev = host.commit("typo", "alice")

    def bad_plan(path: Path) -> dict[str, object]:
        raise UserError(f"{path}: guests.db.address: 192.168.101.5 is outside the guest network")

    settings = host.settings()
    runner = RecordingRunner(script=host.answer)
    status = gitops.GitOps(
        settings,
        runner=runner,
        load_plan=bad_plan,
        deploy=lambda *_: pytest.fail("must not deploy"),
    ).run()
    assert (status.state, status.rev) == (gitops.State.FAILED, rev)
    assert "guests.db.address" in host.status()["message"]
    assert status.exit_code == gitops.EX_HANDLED


# --- the module ---------------------------------------------------------------------------

NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB")
LIB = Path(NIXPKGS_LIB) if NIXPKGS_LIB else ROOT / "tests" / "nixos" / "option-paths" / "lib.nix"

EVAL = """
let
  lib = import LIB;
  plan = builtins.fromJSON (builtins.readFile PLAN);
  pkgs = {
    writeText = name: text: builtins.toFile name text;
    git = "git"; openssh = "openssh"; curl = "curl"; bash = "bash"; coreutils = "coreutils";
  };
  config = {
    homestack = {
      inherit plan;
      machine = "homelab";
      host = plan.hosts.homelab;
      gitops = {
        enable = true; repository = "git@git.example:alice/home.git"; branch = "main";
        dates = "*:0/15"; deployKeySecret = "gitops_deploy_key"; knownHosts = null;
        healthTimeout = 2; package = "/nix/store/tools";
      };
    };
    sops.secrets.gitops_deploy_key.path = "/run/secrets/gitops_deploy_key";
    nix.package = "nix";
    systemd.package = "systemd";
    boot.zfs.package = "zfs";
  };
  module = import MODULE { inherit config lib pkgs; };
  unit = module.config.content.systemd.services.homestack-gitops;
in
  assert module.config.condition;
  { inherit (unit) script restartIfChanged unitConfig serviceConfig path; }
"""


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or not LIB.exists(), reason="needs nix-instantiate"
)
def test_the_module_runs_the_engine_and_survives_its_own_removal(tmp_path: Path) -> None:
    from conftest import EXAMPLE

    from homestack.plan import load_plan

    (tmp_path / "plan.json").write_text(json.dumps(load_plan(EXAMPLE)))
    expr = (
        EVAL.replace("LIB", str(LIB))
        .replace("PLAN", str(tmp_path / "plan.json"))
        .replace("MODULE", str(ROOT / "modules" / "gitops.nix"))
    )
    unit = json.loads(
        subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    argv = shlex.split(unit["script"])
    assert argv[:5] == ["exec", "/nix/store/tools/bin/tools", "gitops", "--machine", "homelab"]
    assert argv[argv.index("--health-timeout") + 1] == "2"
    assert "nix-env" not in unit["script"] and "ln" not in argv  # no second engine in bash
    # a commit that renames or disables this unit must not stop its own switch
    assert unit["restartIfChanged"] is False
    assert unit["unitConfig"]["X-StopOnRemoval"] is False
    # an outcome it recorded (refused, rolled back, try later) does not fail the unit
    assert unit["serviceConfig"]["SuccessExitStatus"] == [gitops.EX_HANDLED, gitops.EX_TEMPFAIL]
    assert "zfs" in unit["path"]
