"""The steps on one machine: snapshot, copy, switch, health checks, and rollback.

A host is activated by the protocol of homestack.deploy.activation: watchdog armed,
`switch-to-configuration test` in its own unit, the catalogue's probes (a hypervisor's
include every guest it runs), a race-free disarm, and only then the new boot default.
A guest's runner is part of its hypervisor's generation (microvm.nix links `current` and
restarts the VM when the hypervisor switches), so a guest is checked after its
hypervisor, in the plan's order, and goes back with its hypervisor's generation.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from homestack.deploy import activation, health
from homestack.deploy.order import STATE_DIR, Machine
from homestack.deploy.remote import ConnectionLost, Remote, Ssh
from homestack.deploy.report import MachineReport, Outcome, StepLog
from homestack.errors import UserError
from homestack.process import Runner, error_line

PROFILE = "/nix/var/nix/profiles/system"
SWITCH = f"{PROFILE}/bin/switch-to-configuration"
NIX = ("nix", "--extra-experimental-features", "nix-command flakes")
RECONNECT_TRIES = 3


@dataclass(frozen=True)
class DeployOptions:
    """Knobs of one deploy run."""

    dry_run: bool = False
    build_only: bool = False
    yes: bool = False  # remove guests that left the inventory without asking
    health_timeout: float = 120.0  # seconds each health check may take to pass
    poll_interval: float = 2.0
    system_timeout: int = 300  # `systemctl is-system-running --wait`
    watchdog: int = 900  # seconds until an undisarmed watchdog rolls back by itself


@dataclass
class Snapshots:
    """Datasets snapshotted in this run: each once, before the first switch touching it."""

    stamp: str
    done: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, datasets: tuple[str, ...]) -> list[str]:
        with self.lock:
            todo = [d for d in datasets if d not in self.done]
            self.done.update(todo)
            return todo


@dataclass(frozen=True)
class Context:
    runner: Runner
    ssh: Ssh
    options: DeployOptions
    clock: health.Clock
    stamp: str  # UTC time of this run: names snapshots and watchdog units
    snapshots: Snapshots
    progress: Callable[[str, str], None]
    # guest -> runner it was booted from before its hypervisor switched (set by that run)
    booted: dict[str, str] = field(default_factory=dict)
    # hypervisor -> how many later waves hold its guests: its lock is kept until they ran
    guest_waves: dict[str, int] = field(default_factory=dict)
    # hypervisors whose lock this run still holds, released when the deploy ends (engine)
    held: dict[str, Remote] = field(default_factory=dict)


def release(remote: Remote) -> None:
    """Give a host's deploy lock back; if the host cannot be reached, it ends by itself."""
    with contextlib.suppress(ConnectionLost):
        remote.run(activation.unlock())


class StepFailed(Exception):
    """A step before the switch failed; the machine still runs what it ran before."""


def build_command(installable: str) -> list[str]:
    """`nix build` of one installable, its store path printed as JSON. `--json`, not
    `--print-out-paths`: the Nix that scripts/bootstrap installs (Debian's 2.8) lacks the
    latter; `--json` prints `[{"drvPath": …, "outputs": {"out": …}}]` on 2.8 and later."""
    return [*NIX, "build", installable, "--no-link", "--json"]


def built_path(stdout: str) -> str | None:
    """The `out` path from `nix build --json`, or None if there is none."""
    try:
        built = json.loads(stdout or "null")
    except json.JSONDecodeError:
        return None
    if not isinstance(built, list) or not built or not isinstance(built[-1], dict):
        return None
    outputs = built[-1].get("outputs")
    out = outputs.get("out") if isinstance(outputs, dict) else None
    return out if isinstance(out, str) and out else None


def copy_command(target: str, path: str) -> list[str]:
    return [*NIX, "copy", "--to", f"ssh://{target}", path]


def snapshot_command(datasets: list[str], name: str) -> list[str]:
    # One `zfs snapshot` for all of them: ZFS takes them atomically, so the guests' data
    # is consistent across guests (db and its clients).
    return ["zfs", "snapshot", "-r", *[f"{d}@{name}" for d in datasets]]


class Reporting:
    """What every machine's run shares: progress lines and the report it ends with."""

    ctx: Context
    m: Machine
    new: str
    previous: str | None
    snapshot: str | None
    log: StepLog
    remote: Remote

    def say(self, message: str) -> None:
        self.ctx.progress(self.m.name, message)

    def must(self, step: str, command: list[str]) -> str:
        """Run ``command`` on the machine as ``step`` of its log; StepFailed if it fails."""
        result = self.remote.run(command)
        if result.returncode != 0:
            detail = error_line(result.stderr or result.stdout, f"exit code {result.returncode}")
            self.log.add(step, False, detail)
            raise StepFailed(f"{step}: {detail}")
        self.log.add(step, True)
        return result.stdout.strip()

    def report(self, outcome: Outcome, state: str, error: str | None = None) -> MachineReport:
        return MachineReport(
            name=self.m.name,
            kind=self.m.kind.value,
            outcome=outcome,
            state=state,
            new=self.new,
            previous=self.previous,
            snapshot=self.snapshot,
            error=error,
            steps=tuple(self.log.steps),
        )


class MachineRun(Reporting):
    """Deploys one machine and always ends with a report saying what it runs now."""

    def __init__(self, ctx: Context, machine: Machine, new: str) -> None:
        self.ctx = ctx
        self.m = machine
        self.new = new
        self.remote = Remote(ctx.runner, ctx.ssh, machine.target)
        self.log = StepLog()
        self.previous: str | None = None
        self.seen = False  # whether `previous` was read from the machine (None: first install)
        self.snapshot: str | None = None
        self.watchdog = activation.watchdog_unit(machine.name, ctx.stamp)
        self.unit = activation.switch_unit(machine.name, ctx.stamp)
        self.armed = False
        self.committed = False  # the new system was made the boot default (or half so)
        self.switched = False  # set the moment the machine may run the new configuration

    # -- steps shared by hosts and guests --------------------------------------------
    def take_snapshot(self) -> None:
        todo = self.ctx.snapshots.claim(self.m.datasets)
        if not todo:
            return
        # A guest added to the inventory has no dataset until this deploy creates it.
        listed = self.remote.run(["zfs", "list", "-H", "-o", "name", *todo])
        existing = [d for d in todo if d in listed.stdout.split()]
        missing = [d for d in todo if d not in existing]
        if missing:
            self.log.add("snapshot", True, f"no dataset yet (new guest): {', '.join(missing)}")
        if not existing:
            return
        name = f"homestack-{self.ctx.stamp}"
        self.say(f"snapshot {', '.join(existing)} @{name}")
        # A guest's datasets live on its hypervisor: self.remote is that machine.
        self.must("snapshot", snapshot_command(existing, name))
        self.snapshot = name

    def copy(self) -> None:
        if self.ctx.ssh.local:  # built on this very machine
            return
        self.say(f"copy {self.new} to {self.m.target}")
        result = self.ctx.runner.run(
            copy_command(self.m.target, self.new),
            check=False,
            env={"NIX_SSHOPTS": self.ctx.ssh.nix_sshopts()},
        )
        if result.returncode != 0:
            detail = error_line(result.stderr, f"exit code {result.returncode}")
            self.log.add("copy", False, detail)
            raise StepFailed(f"copy: {detail}")
        self.log.add("copy", True)

    def arm(self, previous: str) -> None:
        """Start the on-machine timer that re-activates ``previous`` unless disarmed."""
        self.must(
            "arm watchdog", activation.arm(previous, self.watchdog, self.ctx.options.watchdog)
        )
        self.armed = True
        self.say(
            f"now runs {self.describe_old()}; watchdog armed: it goes back there by itself "
            f"in {self.ctx.options.watchdog} s unless the deploy confirms the switch"
        )

    def disarm(self) -> bool:
        """Stop the watchdog; False if the machine could not be reached to do so."""
        for _ in range(RECONNECT_TRIES):
            if not self.armed:
                return True
            try:
                self.remote.run(["systemctl", "stop", f"{self.watchdog}.timer"])
            except ConnectionLost:
                self.ctx.clock.sleep(self.ctx.options.poll_interval)
                continue
            self.armed = False
        return not self.armed

    def confirm(self) -> activation.Disarmed | None:
        """Disarm and say what the machine runs once the watchdog can no longer fire;
        None when the machine could not be reached."""
        for _ in range(RECONNECT_TRIES):
            try:
                self.remote.run(activation.stop_timer(self.watchdog))
                # Stopping the timer does not stop a rollback it already started: wait
                # for that to finish, then look at what runs.
                deadline = self.ctx.clock.monotonic() + self.ctx.options.system_timeout
                while activation.watchdog_busy(
                    self.remote.run(activation.watchdog_state(self.watchdog)).stdout
                ):
                    if self.ctx.clock.monotonic() >= deadline:
                        break
                    self.ctx.clock.sleep(self.ctx.options.poll_interval)
                now = activation.store_path(self.remote.run(activation.running()).stdout)
            except ConnectionLost:
                self.ctx.clock.sleep(self.ctx.options.poll_interval)
                continue
            self.armed = False
            verdict = activation.judge(now, self.new)
            self.log.add("disarm watchdog", verdict is activation.Disarmed.CONFIRMED, verdict.value)
            return verdict
        return None

    def healthy(self) -> health.Failure | None:
        self.say("health checks")
        o = self.ctx.options
        failure = health.check(
            self.m,
            self.remote,
            system_timeout=o.system_timeout,
            timeout=o.health_timeout,
            interval=o.poll_interval,
            clock=self.ctx.clock,
        )
        self.log.add(
            "health",
            failure is None,
            "" if failure is None else f"{failure.check}: {failure.detail}",
        )
        return failure

    def watchdog_note(self) -> str:
        if not self.armed:
            return ""
        return (
            f"; its watchdog {self.watchdog}.timer puts the previous version back by itself"
            f" {self.ctx.options.watchdog} s after the switch"
        )

    # -- the procedure ---------------------------------------------------------------
    def run(self) -> MachineReport:
        """The procedure, under the host's deploy lock (guests: their hypervisor's)."""
        if self.is_guest:
            return self.steps()
        try:
            taken = self.remote.run(activation.lock(self.ctx.stamp, self.lock_seconds))
        except ConnectionLost as exc:  # nothing seen: its state is unknown, never guessed
            return self.not_switched("", str(exc))
        if taken.returncode != 0:
            self.log.add("lock", False, activation.LOCKED)
            return self.report(
                Outcome.FAILED,
                f"not switched; {activation.LOCKED}",
                f"{activation.LOCKED} (unit {activation.LOCK_UNIT})",
            )
        keep = False
        try:
            report = self.steps()
            # Its guests are checked in later waves: no other deploy may switch the host
            # under them, so the lock stays until the whole deploy ends.
            keep = report.outcome.ok and self.ctx.guest_waves.get(self.m.name, 0) > 0
            return report
        finally:
            if keep:
                self.ctx.held[self.m.name] = self.remote
            else:
                release(self.remote)

    @property
    def lock_seconds(self) -> int:
        """Long enough for this host's run and each later wave with its guests; a lock
        left behind (a vanished laptop) ends by itself after that (RuntimeMaxSec)."""
        o = self.ctx.options
        one = o.watchdog + 2 * o.system_timeout + 600
        return one * (1 + self.ctx.guest_waves.get(self.m.name, 0))

    def steps(self) -> MachineReport:  # noqa: PLR0911 - one return per end state
        try:
            # First what it runs now: every report after this can say it from what was seen.
            self.previous = self.current()
            self.seen = True
            self.take_snapshot()
            self.copy()
            if self.is_guest:
                return self.check_guest()
            if self.previous == self.new:
                failure = self.healthy()
                if failure is None:
                    return self.report(Outcome.UNCHANGED, f"already runs {self.new}")
                return self.report(
                    Outcome.FAILED,
                    f"runs {self.new} (unchanged) but is unhealthy",
                    f"{failure.check}: {failure.detail}",
                )
            self.record_guests()
            if self.previous is not None:
                self.arm(self.previous)
            self.activate()
            failure = self.healthy()
            if failure is not None:
                return self.roll_back(f"health check failed: {failure.check}: {failure.detail}")
            verdict = self.confirm()
            if verdict is None:
                self.say("healthy, but its watchdog could not be disarmed")
                return self.report(
                    Outcome.UNKNOWN,
                    f"runs {self.describe_new()} and is healthy, but the connection was lost "
                    f"before its watchdog was disarmed: {self.watchdog}.timer will put "
                    f"{self.describe_old()} back unless stopped by hand (a reboot does too)",
                    "lost the connection while disarming the watchdog",
                )
            if verdict is activation.Disarmed.FIRED:
                self.say("its watchdog fired before it could be disarmed")
                return self.report(
                    Outcome.ROLLED_BACK,
                    f"rolled back: runs {self.describe_old()} again (its watchdog fired before "
                    "the deploy could disarm it)",
                    "the watchdog fired first",
                )
            self.commit()
            self.say("switched, healthy")
            return self.report(Outcome.SWITCHED, f"runs {self.describe_new()}")
        except (StepFailed, UserError) as exc:
            if self.switched:
                return self.roll_back(str(exc))
            self.disarm()
            self.say(f"failed before switching: {exc}")
            return self.not_switched("", str(exc))
        except ConnectionLost as exc:
            if self.switched:
                return self.roll_back(str(exc))
            self.say(f"{exc}; nothing was switched")
            note = (
                (
                    f" (its watchdog {self.watchdog}.timer may still fire: harmless, it"
                    " re-activates that same version)"
                )
                if self.armed
                else ""
            )
            return self.not_switched(note, str(exc))

    def not_switched(self, note: str, error: str) -> MachineReport:
        """The report of a machine this deploy did not switch: what it runs if that was seen,
        else "unknown" (an unreachable machine's state is never guessed)."""
        if not self.seen:
            return self.report(
                Outcome.UNKNOWN,
                "unknown: not switched, and what it runs "
                "could not be seen (nothing was changed on it)",
                error,
            )
        return self.report(
            Outcome.FAILED, f"not switched; still runs {self.describe_old()}{note}", error
        )

    def record_guests(self) -> None:
        """The runner each guest was booted from, before this hypervisor's switch."""
        for guest in self.m.guests:
            link = f"{STATE_DIR}/{guest}/booted"
            result = self.remote.run(["readlink", link])
            # "" for a guest not booted yet (a new one): it has no previous runner
            self.ctx.booted[guest] = result.stdout.strip() if result.returncode == 0 else ""

    def commit(self) -> None:
        """Make the new system the boot default (the watchdog is confirmed gone)."""
        self.committed = True
        self.say("healthy: make it the boot default")
        for command in activation.commit(self.new, f"{self.unit}-boot"):
            self.must("boot default", command)

    def check_guest(self) -> MachineReport:
        """A guest was switched by its hypervisor's generation: restart it if that did not,
        and check it. It has no rollback of its own (see the module's docstring)."""
        self.previous = self.ctx.booted.get(self.m.name, self.previous) or None
        declared = self.remote.run(["readlink", self.m.current_link]).stdout.strip()
        if declared != self.new:
            return self.report(
                Outcome.FAILED,
                f"not switched; its hypervisor declares {declared or 'nothing'}",
                f"{self.m.current_link} is not {self.new}: deploy {self.m.hypervisor} with it",
            )
        if self.current() != self.new:
            self.switched = True
            self.say(f"restart {self.m.unit} on the runner its hypervisor declares")
            self.must("restart", ["systemctl", "restart", self.m.unit])
        failure = self.healthy()
        if failure is not None:
            return self.report(
                Outcome.FAILED,
                f"runs {self.new} but is unhealthy; it goes back with {self.m.hypervisor}'s "
                "previous generation (see docs/deploy.md)",
                f"{failure.check}: {failure.detail}",
            )
        if self.previous == self.new:
            return self.report(Outcome.UNCHANGED, f"already runs {self.new}")
        self.say("switched, healthy")
        return self.report(Outcome.SWITCHED, f"runs {self.new} (with {self.m.hypervisor})")

    def roll_back(self, reason: str) -> MachineReport:
        self.say(f"{reason} -> rolling back to {self.describe_old()}")
        if self.previous is None:
            return self.report(Outcome.UNKNOWN, self.no_previous(), reason)
        last: ConnectionLost | None = None
        for attempt in range(RECONNECT_TRIES):
            try:
                ok, detail = self.restore(self.previous)
            except ConnectionLost as exc:
                last = exc
                self.log.add("rollback", False, f"attempt {attempt + 1}: {exc}")
                self.ctx.clock.sleep(self.ctx.options.poll_interval)
                continue
            if not ok:
                self.say(f"ROLLBACK FAILED: {detail}")
                return self.report(
                    Outcome.UNKNOWN,
                    f"rollback failed ({detail}); "
                    f"state must be checked by hand{self.watchdog_note()}",
                    reason,
                )
            self.disarm()
            self.say(f"rolled back to {self.describe_old()} ({detail})")
            return self.report(
                Outcome.ROLLED_BACK,
                f"rolled back: runs {self.describe_old()} again ({detail})",
                reason,
            )
        self.say(f"could not reach {self.m.target} to roll back")
        return self.report(
            Outcome.UNKNOWN,
            f"may still run {self.describe_new()}: rollback could not connect "
            f"({last}){self.watchdog_note()}",
            reason,
        )

    # -- what differs between hosts and guests ---------------------------------------
    @property
    def is_guest(self) -> bool:
        return self.m.hypervisor is not None

    def current(self) -> str | None:
        """The generation (host) or runner (guest) now active, or None if there is none."""
        if self.is_guest:
            result = self.remote.run(["readlink", self.m.booted_link])
            link = result.stdout.strip()
            return link if result.returncode == 0 and link else None
        return activation.store_path(self.must("record what runs", activation.running()))

    def activate(self) -> None:
        """Make the new configuration current; from the first command on, failures roll back."""
        # A switch that failed may still have changed things: treat it as switched.
        self.switched = True
        self.say("switch (test: the boot default stays the previous generation until healthy)")
        self.must("switch", activation.switch(self.new, activation.Action.TEST, self.unit))

    def restore(self, previous: str) -> tuple[bool, str]:
        """Put ``previous`` back; (worked, how the machine is now)."""
        if self.is_guest:
            self.log.add("rollback", False, "a guest goes back with its hypervisor")
            return False, (
                f"a guest goes back with its hypervisor's generation: deploy "
                f"{self.m.hypervisor} again, or roll it back"
            )
        unit = f"{self.unit}-rollback"
        steps = [activation.switch(previous, activation.Action.TEST, unit)]
        if self.committed:  # the boot default may already be the new one: put it back
            steps += activation.commit(previous, f"{unit}-boot")
        for command in steps:
            result = self.remote.run(command)
            if result.returncode != 0:
                self.log.add("rollback", False, shlex.join(command))
                return False, f"{command[0]} exited with {result.returncode}"
        self.log.add("rollback", True)
        if self.is_guest:
            ok, detail = health.poll(
                self.remote,
                health.unit_active(self.m.unit),
                self.ctx.options.health_timeout,
                self.ctx.options.poll_interval,
                self.ctx.clock,
            )
        else:
            result = self.remote.run(health.system_running(self.ctx.options.system_timeout))
            ok, detail = result.returncode == 0, result.stdout.strip()
        return True, "healthy" if ok else f"but still unhealthy: {detail}"

    def no_previous(self) -> str:
        return (
            f"runs {self.describe_new()} and there is no previous version to return to; "
            "fix the configuration and deploy again"
        )

    def describe_old(self) -> str:
        if not self.seen:
            return "what it ran before (not seen)"
        if self.previous is None:
            return "its previous configuration"
        return self.previous

    def describe_new(self) -> str:
        return self.new
