"""GitOps on a host: fetch the branch, accept only an admin-signed commit that descends
from the revision the running system was built from, and deploy it to this host and its
guests with the same engine as `tools deploy` (locally: same probes, order, snapshots,
lock and rollback). What it did last is in <state>/status.json (`tools deploy status`).

A failure that may pass (the network, the Git server, a deploy holding the lock) is
retried with back-off and never recorded against the commit; only a commit whose deploy
was rolled back is not tried again.

On an Incus host no one is there to confirm an OpenTofu plan: one that only creates and
updates in place is applied; one that deletes or replaces anything is held for a person
(state "held", naming what it destroys and the command to run), and the commit is deployed
again at every run until that plan is gone, even though the host already runs it.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from homestack.deploy import activation, engine, health, incus
from homestack.deploy.remote import Local
from homestack.deploy.report import DeployReport, Outcome
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.process import Runner, error_line

BRANCH_REF = "refs/heads/homestack-deploy"  # the fetched head, never the checked-out branch
EX_TEMPFAIL = 75  # sysexits.h: try again later
EX_HANDLED = 3  # refused, failed or rolled back: recorded in status.json, not a crash


class State(Enum):
    SWITCHED = "switched"
    UNCHANGED = "unchanged"
    REFUSED = "refused"  # not signed by an admin, or not a descendant of what runs
    ROLLED_BACK = "rolled-back"  # deployed, failed its checks, back on what ran
    FAILED = "failed"  # build or deploy failed; nothing recorded against the commit
    HELD = "held"  # an OpenTofu plan that destroys something waits for a person
    WAITING = "waiting"  # a transient failure; the next run tries again


@dataclass(frozen=True)
class Settings:
    machine: str
    repository: str
    branch: str
    state_dir: Path
    allowed_signers: Path
    attempts: int = 4
    backoff: float = 15.0  # seconds before the 2nd attempt; doubles after each

    @property
    def repo(self) -> Path:
        return self.state_dir / "repo"


@dataclass(frozen=True)
class Status:
    state: State
    rev: str
    message: str

    @property
    def exit_code(self) -> int:
        if self.state is State.WAITING:
            return EX_TEMPFAIL
        return 0 if self.state in (State.SWITCHED, State.UNCHANGED) else EX_HANDLED


Deploy = Callable[[Mapping[str, Any], Path, list[str]], DeployReport]
LoadPlan = Callable[[Path], Mapping[str, Any]]


class GitOps:
    """One run of the GitOps timer."""

    def __init__(
        self,
        settings: Settings,
        *,
        runner: Runner,
        load_plan: LoadPlan,
        deploy: Deploy,
        clock: health.Clock | None = None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.s = settings
        self.runner = runner
        self.load_plan = load_plan
        self.deploy = deploy
        self.clock = clock or health.Clock()
        self.progress = progress

    def git(self, *args: str) -> tuple[int, str, str]:
        result = self.runner.run(["git", "-C", str(self.s.repo), *args], check=False)
        return result.returncode, result.stdout.strip(), result.stderr

    def retried(self, what: str, attempt: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
        """``attempt`` until it works or the attempts are used up, waiting longer each time."""
        wait = self.s.backoff
        detail = ""
        for number in range(1, self.s.attempts + 1):
            ok, detail = attempt()
            if ok:
                return True, detail
            if number < self.s.attempts:
                self.progress(f"{what} failed ({detail}); again in {wait:.0f} s")
                self.clock.sleep(wait)
                wait *= 2
        return False, detail

    def run(self) -> Status:
        self.rev = ""
        try:
            status = self._run()
        except UserError as exc:  # the commit's inventory is invalid, say
            status = Status(State.FAILED, self.rev, str(exc))
        self.record(status)
        return status

    def _run(self) -> Status:  # noqa: PLR0911 - one return per end state
        if not (self.s.repo / ".git").exists():
            self.runner.run(["git", "init", "--quiet", str(self.s.repo)], check=True)

        def fetch() -> tuple[bool, str]:
            code, _, err = self.git(
                "fetch",
                "--quiet",
                "--force",
                self.s.repository,
                f"+refs/heads/{self.s.branch}:{BRANCH_REF}",
            )
            return code == 0, error_line(err, f"exit code {code}")

        ok, detail = self.retried("fetch", fetch)
        if not ok:
            return Status(
                State.WAITING, "", f"cannot fetch {self.s.repository} {self.s.branch}: {detail}"
            )
        _, rev, _ = self.git("rev-parse", BRANCH_REF)
        self.rev = rev
        running = self.running_revision()
        # The host may run a commit whose deploy did not finish (an Incus host's guests wait
        # for a plan only a person may apply): that one is deployed again, not "unchanged".
        if rev == running and rev != self.unfinished():
            return Status(State.UNCHANGED, rev, "already deployed")
        if rev == self.failed_before():
            return Status(State.ROLLED_BACK, rev, "rolled back before; waiting for a new commit")
        code, _, _ = self.git(
            "-c",
            "gpg.format=ssh",
            "-c",
            f"gpg.ssh.allowedSignersFile={self.s.allowed_signers}",
            "verify-commit",
            rev,
        )
        if code != 0:
            return Status(State.REFUSED, rev, "commit is not signed by an admin of the inventory")
        # Only forward from what runs, so an old signed commit (one that still trusts a
        # revoked key, say) cannot be replayed; a system that records no revision was
        # deployed from a dirty tree, and accepting "anything" there is what this prevents.
        if not running:
            return Status(
                State.REFUSED,
                rev,
                "the running system records no revision "
                "(system.configurationRevision): deploy a clean commit once with "
                "`tools deploy`",
            )
        code, _, _ = self.git("merge-base", "--is-ancestor", running, rev)
        if code != 0:
            return Status(State.REFUSED, rev, f"not a descendant of the running revision {running}")
        code, _, err = self.git("checkout", "--quiet", "--force", "--detach", rev)
        if code != 0:
            return Status(State.FAILED, rev, f"checkout failed: {error_line(err, str(code))}")
        plan = self.load_plan(self.s.repo / "inventory.toml")
        host = plan["hosts"].get(self.s.machine)
        if host is None:
            return Status(State.REFUSED, rev, f"{self.s.machine} is not a host of this commit")
        machines = [self.s.machine, *host.get("guests", [])]
        report: DeployReport | None = None

        def deploy() -> tuple[bool, str]:
            nonlocal report
            report = self.deploy(plan, self.s.repo, machines)
            return not self.transient(report), report.error or ""

        self.retried("deploy", deploy)
        assert report is not None
        return self.judge(rev, report)

    @staticmethod
    def transient(report: DeployReport) -> bool:
        """Nothing was changed, for a reason that may pass: a build (fetching inputs over
        the network), or another deploy holding the lock."""
        if report.error and report.error.startswith("build of "):
            return True
        return any(activation.LOCKED in (m.error or "") for m in report.machines)

    def judge(self, rev: str, report: DeployReport) -> Status:
        status = self._judge(rev, report)
        unfinished = self.s.state_dir / "unfinished"
        if status.state in (State.HELD, State.FAILED):
            atomic_write(unfinished, f"{rev}\n".encode())
        elif status.state is not State.WAITING:  # waiting: the next run decides
            unfinished.unlink(missing_ok=True)
        return status

    def _judge(self, rev: str, report: DeployReport) -> Status:
        if self.transient(report):
            return Status(State.WAITING, rev, report.error or activation.LOCKED)
        if report.ok:
            return Status(State.SWITCHED, rev, "healthy")
        if report.held:
            return Status(State.HELD, rev, report.held)
        bad = [m for m in report.machines if not m.outcome.ok]
        first = bad[0] if bad else None
        why = f"{first.name}: {first.state}" if first else (report.error or "deploy failed")
        if any(m.outcome is Outcome.ROLLED_BACK for m in report.machines):
            atomic_write(self.s.state_dir / "failed", f"{rev}\n".encode())
            return Status(State.ROLLED_BACK, rev, why)
        return Status(State.FAILED, rev, why)

    def running_revision(self) -> str:
        result = self.runner.run(activation.revision(), check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def unfinished(self) -> str:
        path = self.s.state_dir / "unfinished"
        return path.read_text().strip() if path.exists() else ""

    def failed_before(self) -> str:
        path = self.s.state_dir / "failed"
        return path.read_text().strip() if path.exists() else ""

    def record(self, status: Status) -> None:
        generation = self.runner.run(activation.running(), check=False).stdout.strip()
        data = {
            "host": self.s.machine,
            "state": status.state.value,
            "rev": status.rev,
            "message": status.message,
            "generation": generation,
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        atomic_write(self.s.state_dir / "status.json", (json.dumps(data, indent=2) + "\n").encode())
        self.progress(f"{status.state.value} {status.rev}: {status.message}")


def local_deploy(
    runner: Runner,
    *,
    options: DeployOptions | None = None,
    progress: engine.Progress = engine._quiet,
    clock: health.Clock | None = None,
) -> Deploy:
    """The engine, run on this machine (`tools deploy --local`), with no one to ask: an
    Incus host's OpenTofu plan is applied only when it destroys nothing; else the
    person runs the deploy by hand in this checkout, sharing its OpenTofu state."""

    def run(plan: Mapping[str, Any], flake: Path, machines: list[str]) -> DeployReport:
        by_hand = f"cd {shlex.quote(str(flake))} && tools deploy --local {machines[0]}"
        return engine.deploy(
            plan,
            runner=runner,
            flake=flake,
            selected=machines,
            options=options,
            ssh=Local(),
            progress=progress,
            clock=clock,
            unattended=incus.Unattended(by_hand=by_hand),
        )

    return run
