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
from test_deploy_incus import DELETE_OLD, INCUS, Fleet

from homestack.deploy import gitops
from homestack.deploy.health import Clock
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.plan import load_plan
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


# --- an Incus host: its OpenTofu plan, with no one to ask ----------------------------------


@dataclass
class IncusHost:
    """An Incus hypervisor that pulls from ``host.origin``: git for real, every other
    command answered by the scripted fleet of tests/test_deploy_incus.py (OpenTofu and a
    real Incus are not run here), the running system's revision by ``revision_of``."""

    host: Host
    fleet: Fleet = field(default_factory=Fleet)
    revision_of: dict[str, str] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def answer(self, args: tuple[str, ...]) -> Result:
        self.calls.append(shlex.join(args))
        if args[0] == "git":
            return self.host.answer(args)
        if args[-1] == "--configuration-revision":
            return Result(args, 0, self.revision_of.get(self.fleet.host, "") + "\n", "")
        return self.fleet(args) or Result(args, 0, "", "")

    def run(self) -> gitops.Status:
        self.calls.clear()
        runner = RecordingRunner(script=self.answer)
        settings = gitops.Settings(
            machine="homelab",
            repository=str(self.host.origin),
            branch="main",
            state_dir=self.host.state,
            allowed_signers=self.host.t / "allowed_signers",
            backoff=1,
        )
        clock = Clock(sleep=lambda _: None)
        deploy = gitops.local_deploy(
            runner,
            clock=clock,
            options=DeployOptions(health_timeout=0, poll_interval=0),
            progress=lambda machine, message: self.said.append(f"{machine}: {message}"),
        )
        plan = load_plan(INCUS)
        return gitops.GitOps(
            settings, runner=runner, load_plan=lambda _: plan, deploy=deploy, clock=clock
        ).run()


@pytest.fixture
def incus_host(host: Host, monkeypatch: pytest.MonkeyPatch) -> IncusHost:
    monkeypatch.setenv("TF_VAR_state_passphrase", "correct horse battery staple")
    h = IncusHost(host)
    h.revision_of[h.fleet.host] = host.revision_of[OLD]  # what runs was built from "first"
    return h


def test_on_incus_a_plan_that_destroys_nothing_is_applied_unattended(
    incus_host: IncusHost,
) -> None:
    rev = incus_host.host.commit("two", "alice")
    status = incus_host.run()
    assert (status.state, status.rev, status.exit_code) == (gitops.State.SWITCHED, rev, 0)
    calls = incus_host.calls
    apply = next(i for i, c in enumerate(calls) if c.startswith("tofu -chdir=infra/incus apply"))
    assert any(c.startswith("tofu -chdir=infra/incus show -json") for c in calls[:apply])
    assert "homelab: the plan only creates and updates in place: applying it" in incus_host.said
    assert incus_host.fleet.running["db"] == "/nix/store/new-db"  # guests switched after it


def test_on_incus_a_plan_that_destroys_is_held_for_a_person(incus_host: IncusHost) -> None:
    """Why: GitOps stopped at every plan with changes, or (with --yes) would have applied
    one that deletes an instance with nobody reading it."""
    rev = incus_host.host.commit("remove old", "alice")
    incus_host.fleet.changes = DELETE_OLD
    status = incus_host.run()
    assert (status.state, status.rev) == (gitops.State.HELD, rev)
    assert status.exit_code == gitops.EX_HANDLED  # recorded; the unit does not fail
    repo = incus_host.host.state / "repo"
    assert status.message == (
        "homelab: the OpenTofu plan deletes or replaces incus_instance.old (deleted), "
        "incus_storage_volume.old-state (deleted); unattended, only plans that create or "
        f"update in place are applied: run `cd {repo} && tools deploy --local homelab` "
        "on homelab"
    )
    assert incus_host.host.status()["state"] == "held"
    # nothing was applied, nothing in Incus touched, no guest switched
    calls = incus_host.calls
    assert not any(c.startswith("tofu -chdir=infra/incus apply") for c in calls)
    assert not any(c.startswith(("incus snapshot", "incus export", "incus storage")) for c in calls)
    assert not any("switch-to-configuration switch" in c for c in calls)
    assert incus_host.fleet.host == "/nix/store/new-homelab"  # the host itself switched

    # The host now runs the commit, but it is not "already deployed": it is tried again.
    incus_host.revision_of[incus_host.fleet.host] = rev
    again = incus_host.run()
    assert again.state is gitops.State.HELD
    assert any(c.startswith("tofu -chdir=infra/incus plan") for c in incus_host.calls)

    # A person applied it by hand: the next run finds nothing to destroy and finishes.
    incus_host.fleet.plan_code = 0
    done = incus_host.run()
    assert (done.state, done.rev) == (gitops.State.SWITCHED, rev)
    assert incus_host.fleet.running["db"] == "/nix/store/new-db"
    assert incus_host.run().state is gitops.State.UNCHANGED


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
    opentofu = "opentofu";
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
        statePassphraseSecret = "tofu_state_passphrase";
      };
    };
    sops.secrets.gitops_deploy_key.path = "/run/secrets/gitops_deploy_key";
    sops.placeholder.tofu_state_passphrase = "<SOPS:tofu_state_passphrase>";
    sops.templates."homestack-gitops-tofu.env".path = "/run/secrets/rendered/tofu.env";
    virtualisation.incus.clientPackage = "incus-client";
    nix.package = "nix";
    systemd.package = "systemd";
    boot.zfs.package = "zfs";
  };
  module = import MODULE { inherit config lib pkgs; };
  unit = module.config.content.systemd.services.homestack-gitops;
in
  assert module.config.condition;
  {
    inherit (unit) script restartIfChanged unitConfig serviceConfig path;
    secrets = builtins.attrNames module.config.content.sops.secrets;
    templates = module.config.content.sops.templates;
  }
"""


def _module_unit(tmp_path: Path, inventory: Path) -> dict[str, Any]:
    """modules/gitops.nix evaluated for the hypervisor `homelab` of ``inventory``."""
    from homestack.plan import load_plan

    (tmp_path / "plan.json").write_text(json.dumps(load_plan(inventory)))
    expr = (
        EVAL.replace("LIB", str(LIB))
        .replace("PLAN", str(tmp_path / "plan.json"))
        .replace("MODULE", str(ROOT / "modules" / "gitops.nix"))
    )
    unit: dict[str, Any] = json.loads(
        subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    return unit


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or not LIB.exists(), reason="needs nix-instantiate"
)
def test_on_an_incus_host_it_has_opentofu_incus_and_the_state_passphrase(tmp_path: Path) -> None:
    """Why: GitOps on an Incus host runs OpenTofu, which needs its client, the Incus
    client, and TF_VAR_state_passphrase; none of them was there."""
    unit = _module_unit(tmp_path, ROOT / "tests" / "inventories" / "incus" / "inventory.toml")
    assert "opentofu" in unit["path"] and "incus-client" in unit["path"]
    assert unit["serviceConfig"]["EnvironmentFile"] == "/run/secrets/rendered/tofu.env"
    assert unit["templates"]["homestack-gitops-tofu.env"]["content"] == (
        "TF_VAR_state_passphrase=<SOPS:tofu_state_passphrase>\n"
    )
    assert unit["secrets"] == ["gitops_deploy_key", "tofu_state_passphrase"]


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None or not LIB.exists(), reason="needs nix-instantiate"
)
def test_the_module_runs_the_engine_and_survives_its_own_removal(tmp_path: Path) -> None:
    from conftest import EXAMPLE

    unit = _module_unit(tmp_path, EXAMPLE)
    # a microvm host runs no OpenTofu: no client, no passphrase
    assert "opentofu" not in unit["path"] and "EnvironmentFile" not in unit["serviceConfig"]
    assert unit["secrets"] == ["gitops_deploy_key"] and unit["templates"] == {}
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
