"""The steps on one machine: snapshot, copy, switch, health checks, and rollback.

A host switches like `nixos-rebuild switch --target-host`: `nix-env --set` the system
profile, then its `switch-to-configuration switch`. A guest is switched on its hypervisor:
its microvm.nix runner (the whole VM system, also part of the hypervisor's closure, since
the hypervisor declares it) is pointed at by `/var/lib/microvms/<g>/current` and
`microvm@<g>` restarted, in the plan's order; going back is pointing `current` at the runner
the VM was booted from before (`booted`) and restarting it. Before either, a watchdog
timer is armed on the machine that puts the previous configuration back by itself unless
the deploy disarms it, so even a switch that cuts the network off does not strand it.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from homestack.deploy import health
from homestack.deploy.order import Machine
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


class MachineRun:
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
        self.watchdog = f"homestack-rollback-{machine.name}-{ctx.stamp}"
        self.armed = False
        self.switched = False  # set the moment the machine may run the new configuration

    # -- helpers ---------------------------------------------------------------------
    def say(self, message: str) -> None:
        self.ctx.progress(self.m.name, message)

    def report(self, outcome: Outcome, state: str, error: str | None = None) -> MachineReport:
        return MachineReport(
            name=self.m.name, kind=self.m.kind.value, outcome=outcome, state=state,
            new=self.new, previous=self.previous, snapshot=self.snapshot, error=error,
            steps=tuple(self.log.steps),
        )

    def must(self, step: str, command: list[str]) -> str:
        result = self.remote.run(command)
        if result.returncode != 0:
            detail = _last_line(result.stderr or result.stdout) or f"exit code {result.returncode}"
            self.log.add(step, False, detail)
            raise StepFailed(f"{step}: {detail}")
        self.log.add(step, True)
        return result.stdout.strip()

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
        self.say(f"copy {self.new} to {self.m.target}")
        result = self.ctx.runner.run(
            copy_command(self.m.target, self.new), check=False,
            env={"NIX_SSHOPTS": self.ctx.ssh.nix_sshopts()},
        )
        if result.returncode != 0:
            detail = _last_line(result.stderr) or f"exit code {result.returncode}"
            self.log.add("copy", False, detail)
            raise StepFailed(f"copy: {detail}")
        self.log.add("copy", True)

    def arm(self, restore: str) -> None:
        """Start the on-machine timer that runs ``restore`` unless disarmed."""
        command = ["systemd-run", f"--unit={self.watchdog}",
                   f"--on-active={self.ctx.options.watchdog}", "--timer-property=AccuracySec=1s",
                   "/bin/sh", "-c", restore]
        self.must("arm watchdog", command)
        self.armed = True
        self.say(f"now runs {self.describe_old()}; watchdog armed: it goes back there by itself "
                 f"in {self.ctx.options.watchdog} s unless the deploy confirms the switch")

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

    def healthy(self) -> health.Failure | None:
        self.say("health checks")
        o = self.ctx.options
        failure = health.check(self.m, self.remote, system_timeout=o.system_timeout,
                               timeout=o.health_timeout, interval=o.poll_interval,
                               clock=self.ctx.clock)
        self.log.add("health", failure is None,
                     "" if failure is None else f"{failure.check}: {failure.detail}")
        return failure

    def watchdog_note(self) -> str:
        if not self.armed:
            return ""
        return (f"; its watchdog {self.watchdog}.timer puts the previous version back by itself"
                f" {self.ctx.options.watchdog} s after the switch")

    # -- the procedure ---------------------------------------------------------------
    def run(self) -> MachineReport:  # noqa: PLR0911 - one return per end state
        try:
            # First what it runs now: every report after this can say it from what was seen.
            self.previous = self.current()
            self.seen = True
            self.take_snapshot()
            self.copy()
            if self.previous is not None and self.previous == self.new and self.is_guest:
                failure = self.healthy()
                if failure is None:
                    return self.report(Outcome.UNCHANGED, f"already runs {self.new}")
                return self.report(Outcome.FAILED, f"runs {self.new} (unchanged) but is unhealthy",
                                   f"{failure.check}: {failure.detail}")
            if self.previous is not None:
                self.arm(self.restore_script(self.previous))
            self.activate()
            failure = self.healthy()
            if failure is not None:
                return self.roll_back(f"health check failed: {failure.check}: {failure.detail}")
            if not self.disarm():
                self.say("healthy, but its watchdog could not be disarmed")
                return self.report(
                    Outcome.UNKNOWN,
                    f"runs {self.describe_new()} and is healthy, but the connection was lost "
                    f"before its watchdog was disarmed: {self.watchdog}.timer will put "
                    f"{self.describe_old()} back unless stopped by hand",
                    "lost the connection while disarming the watchdog")
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
            note = (f" (its watchdog {self.watchdog}.timer may still fire: harmless, it"
                    " re-activates that same version)") if self.armed else ""
            return self.not_switched(note, str(exc))

    def not_switched(self, note: str, error: str) -> MachineReport:
        """The report of a machine this deploy did not switch: what it runs if that was seen,
        else "unknown" (an unreachable machine's state is never guessed)."""
        if not self.seen:
            return self.report(Outcome.UNKNOWN, "unknown: not switched, and what it runs "
                               "could not be seen (nothing was changed on it)", error)
        return self.report(Outcome.FAILED, f"not switched; still runs {self.describe_old()}{note}",
                           error)

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
                return self.report(Outcome.UNKNOWN, f"rollback failed ({detail}); "
                                   f"state must be checked by hand{self.watchdog_note()}", reason)
            self.disarm()
            self.say(f"rolled back to {self.describe_old()} ({detail})")
            return self.report(Outcome.ROLLED_BACK,
                               f"rolled back: runs {self.describe_old()} again ({detail})", reason)
        self.say(f"could not reach {self.m.target} to roll back")
        return self.report(Outcome.UNKNOWN,
                           f"may still run {self.describe_new()}: rollback could not connect "
                           f"({last}){self.watchdog_note()}", reason)

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
        out = self.must("record generation", ["readlink", PROFILE])
        match = re.fullmatch(r"system-(.+)-link", out)
        return match.group(1) if match else None

    def activate(self) -> None:
        """Make the new configuration current; from the first command on, failures roll back."""
        # A failed `ln`/`nix-env --set` may still have changed the link: treat it as switched.
        self.switched = True
        if self.is_guest:
            self.say(f"point {self.m.current_link} at the new runner, restart {self.m.unit}")
            self.must("link runner", ["ln", "-sfn", self.new, self.m.current_link])
            self.must("restart", ["systemctl", "restart", self.m.unit])
            return
        self.say("switch")
        self.must("set profile", ["nix-env", "-p", PROFILE, "--set", self.new])
        self.must("switch", [SWITCH, "switch"])

    def restore_script(self, previous: str) -> str:
        if self.is_guest:
            return (f"ln -sfn {shlex.quote(previous)} {self.m.current_link}"
                    f" && systemctl restart {self.m.unit}")
        return (f"nix-env -p {PROFILE} --switch-generation {shlex.quote(previous)}"
                f" && {SWITCH} switch")

    def restore(self, previous: str) -> tuple[bool, str]:
        """Put ``previous`` back; (worked, how the machine is now)."""
        if self.is_guest:
            steps = [["ln", "-sfn", previous, self.m.current_link],
                     ["systemctl", "restart", self.m.unit]]
        else:
            steps = [["nix-env", "-p", PROFILE, "--switch-generation", previous],
                     [SWITCH, "switch"]]
        for command in steps:
            result = self.remote.run(command)
            if result.returncode != 0:
                self.log.add("rollback", False, shlex.join(command))
                return False, f"{command[0]} exited with {result.returncode}"
        self.log.add("rollback", True)
        if self.is_guest:
            ok, detail = health.poll(self.remote, health.unit_active(self.m.unit),
                                     self.ctx.options.health_timeout,
                                     self.ctx.options.poll_interval, self.ctx.clock)
        else:
            result = self.remote.run(health.system_running(self.ctx.options.system_timeout))
            ok, detail = result.returncode == 0, result.stdout.strip()
        return True, "healthy" if ok else f"but still unhealthy: {detail}"

    def no_previous(self) -> str:
        return (f"runs {self.describe_new()} and there is no previous version to return to; "
                "fix the configuration and deploy again")

    def describe_old(self) -> str:
        if not self.seen:
            return "what it ran before (not seen)"
        if self.previous is None:
            return "its previous configuration"
        return self.previous if self.is_guest else f"generation {self.previous}"

    def describe_new(self) -> str:
        return self.new


def _last_line(text: str) -> str:
    return error_line(text, "")
