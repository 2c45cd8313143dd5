"""Deploy against a model of a NixOS hypervisor that keeps the semantics rollback depends on.

The model (`Hypervisor`) is a small state machine, not a list of canned answers:

- what runs (`/run/current-system`) and the boot default (the system profile) are apart;
  `switch-to-configuration test` changes the first, `boot` needs the profile, `switch` both;
- a transient unit started by `systemd-run` gets systemd's built-in PATH, which on NixOS
  holds neither nix-env nor ln (nixpkgs patches DEFAULT_PATH to systemd's own bin/);
- a command run directly in the SSH session dies with it; one in `systemd-run --wait`
  finishes on its own (nixpkgs#39118);
- microvm.nix: activating a generation runs `install-microvm-<g>`, which re-links
  `/var/lib/microvms/<g>/current` to the runner that generation declares, and
  `restartIfChanged` (modules/hypervisor.nix) restarts the VM, so `booted == current`;
  a reboot does the same from the boot default (microvm.nix nixos-modules/host/default.nix);
- a timer armed with `--on-active` fires when the test says time has passed, and is gone
  after a reboot.

Each test is one bullet of the "Why" of the rollback issue: it fails against the engine
that armed `/bin/sh -c 'nix-env … && …'`, switched in the SSH session and rolled guests
back with `ln -sfn`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from test_deploy import STAMP, make_plan

from homestack.deploy import engine
from homestack.deploy.health import Clock
from homestack.deploy.report import Outcome
from homestack.deploy.steps import DeployOptions
from homestack.process import RecordingRunner, Result

PROFILE = "/nix/var/nix/profiles/system"
GUESTS = ("auth", "db", "proxy", "vpn")
OLD, NEW = "/nix/store/old-homelab", "/nix/store/new-homelab"
TRANSIENT_PATH = ("systemctl", "systemd-run")  # what systemd's own bin/ offers by name


class Lost(Exception):
    """The SSH session dropped while this command ran."""


@dataclass
class Hypervisor:
    """One NixOS hypervisor running microvm.nix guests (see the module docstring)."""

    # store path of a host system -> runner of each guest it declares
    systems: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            OLD: {g: f"/nix/store/old-{g}" for g in GUESTS},
            NEW: {g: f"/nix/store/new-{g}" for g in GUESTS},
        }
    )
    broken: set[str] = field(default_factory=set)  # systems / runners that fail their checks
    generations: list[str] = field(default_factory=lambda: [OLD])
    profile: int = 1  # the boot default: generations[profile - 1]
    running: str = OLD
    current: dict[str, str] = field(default_factory=dict)
    booted: dict[str, str] = field(default_factory=dict)
    timers: dict[str, list[str]] = field(default_factory=dict)
    units: set[str] = field(default_factory=set)  # other transient units (the deploy lock)
    watchdog_ran: dict[str, bool] = field(default_factory=dict)
    online: bool = True
    drop_on: str | None = None  # the session drops while this runs (not the watchdog's arming)
    reboot_on: str | None = None  # the machine reboots right after this command
    fire_on: str | None = None  # the watchdog fires just before this command
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reboot()

    # -- machine events --------------------------------------------------------------
    @property
    def boot_default(self) -> str:
        return self.generations[self.profile - 1]

    def activate(self, system: str) -> None:
        self.running = system
        for guest, runner in self.systems[system].items():  # install-microvm-<g>
            self.current[guest] = runner
            self.booted[guest] = runner  # restartIfChanged

    def reboot(self) -> None:
        self.timers.clear()
        self.units.clear()
        self.activate(self.boot_default)

    def fire(self) -> None:
        """Every armed watchdog's time is up: it runs in a transient unit."""
        for unit, command in list(self.timers.items()):
            del self.timers[unit]
            self.watchdog_ran[unit] = True
            self.transient(command)

    def transient(self, argv: list[str]) -> int:
        if argv[:2] == ["/bin/sh", "-c"]:
            for part in argv[2].split("&&"):
                words = shlex.split(part)
                if "/" not in words[0] and words[0] not in TRANSIENT_PATH:
                    return 127  # sh: nix-env: not found
                if self.execute(words)[0] != 0:
                    return 1
            return 0
        return self.execute(argv)[0]

    # -- commands --------------------------------------------------------------------
    def ssh(self, remote: str) -> tuple[int, str]:
        words = shlex.split(remote)
        if self.fire_on and self.fire_on in remote:
            self.fire_on = None
            self.fire()
        if not self.online:
            return 255, ""
        self.seen.append(remote)
        if self.drop_on and self.drop_on in remote and "--on-active" not in remote:
            self.drop_on = None
            self.online = False
            if words[0] == "systemd-run":  # its own unit: it finishes without us
                self.execute(words)
            elif "switch-to-configuration" in remote:  # killed with the session, half-way
                self.running = "/nix/store/half-switched"
            return 255, ""
        answer = self.execute(words)
        if self.reboot_on and self.reboot_on in remote and "--on-active" not in remote:
            self.reboot_on = None
            self.online = False
            self.reboot()
        return answer

    def execute(self, w: list[str]) -> tuple[int, str]:  # noqa: PLR0911, PLR0912 - a machine
        if w[:2] == ["readlink", "-f"]:
            return 0, (self.running if w[2] == "/run/current-system" else self.boot_default) + "\n"
        if w == ["readlink", PROFILE]:
            return 0, f"system-{self.profile}-link\n"
        if w[0] == "readlink" and w[1].startswith("/var/lib/microvms/"):
            guest, link = w[1].split("/")[-2:]
            return 0, (self.current if link == "current" else self.booted)[guest] + "\n"
        if w[0] == "systemd-run" and "--wait" not in w:
            unit = next(a for a in w if a.startswith("--unit=")).removeprefix("--unit=")
            if unit in self.timers or unit in self.units:
                return 1, ""  # Unit … already exists
            if "--on-active" not in " ".join(w):
                self.units.add(unit)
                return 0, ""
            start = next(i for i, a in enumerate(w) if not a.startswith("-") and i > 0)
            self.timers[unit] = w[start:]
            return 0, ""
        if w[:2] == ["systemctl", "stop"] and w[2].endswith(".service"):
            self.units.discard(w[2].removesuffix(".service"))
            return 0, ""
        if w[0] == "systemd-run":
            start = next(i for i, a in enumerate(w) if i > 0 and not a.startswith("-"))
            return self.execute(w[start:])
        if w[:2] == ["systemctl", "stop"] and w[2].endswith(".timer"):
            self.timers.pop(w[2].removesuffix(".timer"), None)
            return 0, ""
        if w[:2] == ["systemctl", "show"]:
            return 0, "inactive\n"
        if w[:3] == ["nix-env", "-p", PROFILE] and w[3] == "--set":
            self.generations.append(w[4])
            self.profile = len(self.generations)
            return 0, ""
        if w[:3] == ["nix-env", "-p", PROFILE] and w[3] == "--switch-generation":
            self.profile = int(w[4])
            return 0, ""
        if w[0].endswith("/bin/switch-to-configuration"):
            system = w[0].removesuffix("/bin/switch-to-configuration")
            if system == PROFILE:
                system = self.boot_default
            if w[1] in ("test", "switch"):
                self.activate(system)
            if w[1] in ("boot", "switch") and system != self.boot_default:
                return 1, ""  # the bootloader installs the profile; it must be set first
            return (4 if system in self.broken else 0), ""
        if w[:2] == ["ln", "-sfn"]:
            self.current[w[3].split("/")[-2]] = w[2]
            return 0, ""
        if w[:2] == ["systemctl", "restart"] and w[2].startswith("microvm@"):
            guest = w[2].removeprefix("microvm@").removesuffix(".service")
            self.booted[guest] = self.current[guest]
            return 0, ""
        if "is-system-running" in w:
            return (1, "degraded\n") if self.running in self.broken else (0, "running\n")
        if w[:2] == ["systemctl", "is-active"]:
            return 0, "active\n"
        if w[0] in ("curl", "timeout"):  # a guest's probe: does the runner it booted work?
            guest = next(g for g in GUESTS if make_plan()["guests"][g]["address"] in " ".join(w))
            return (7 if self.booted[guest] in self.broken else 0), ""
        if w[:2] == ["ls", "-1"]:
            return 0, "\n".join(GUESTS) + "\n"
        if w[:5] == ["zfs", "list", "-H", "-o", "name"]:
            return 0, "\n".join(w[5:]) + "\n"
        return 0, ""


def deploy(machine: Hypervisor, **options: Any) -> engine.DeployReport:
    def script(call: tuple[str, ...]) -> Result | None:
        if "build" in call and "--json" in call:  # nix build --json (Nix 2.8 has no
            name = next(a for a in call if a.startswith(".#")).split(".")[2]  # --print-out-paths)
            built = [{"outputs": {"out": f"/nix/store/new-{name}"}}]
            return Result(call, 0, json.dumps(built) + "\n", "")
        if call[0] != "ssh":
            return None
        if call[call.index("--") - 1] != "root@homelab":
            return None  # the relay: not modelled here
        code, out = machine.ssh(call[-1])
        return Result(call, code, out, "")

    opts = DeployOptions(health_timeout=0, poll_interval=0, **options)
    return engine.deploy(
        make_plan(),
        runner=RecordingRunner(script=script),
        flake=Path("/f"),
        selected=["homelab", *GUESTS],
        options=opts,
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )


def outcome(report: engine.DeployReport, name: str) -> Outcome:
    return next(m for m in report.machines if m.name == name).outcome


def test_a_healthy_deploy_ends_with_the_new_system_as_boot_default() -> None:
    machine = Hypervisor()
    report = deploy(machine)
    assert report.ok, report.summary()
    assert machine.running == NEW and machine.boot_default == NEW
    assert machine.booted == {g: f"/nix/store/new-{g}" for g in GUESTS}
    assert not machine.timers  # disarmed
    machine.reboot()
    assert machine.running == NEW


def test_the_watchdog_rolls_back_when_the_laptop_vanished() -> None:
    """Why: the watchdog ran `nix-env`/`ln` by name in a transient unit (PATH lacks them)."""
    machine = Hypervisor(broken={"/nix/store/new-db"})
    machine.drop_on = "is-system-running"  # the laptop is gone before the health check
    report = deploy(machine)
    assert outcome(report, "homelab") is Outcome.UNKNOWN
    assert machine.running == NEW and machine.timers  # the watchdog waits
    machine.fire()
    assert machine.running == OLD
    assert machine.booted == {g: f"/nix/store/old-{g}" for g in GUESTS}


def test_a_dropped_session_does_not_kill_the_switch_half_way() -> None:
    """Why: switch-to-configuration ran in the SSH session (nixpkgs#39118)."""
    machine = Hypervisor(broken={NEW})
    machine.drop_on = "switch-to-configuration"
    deploy(machine)
    assert machine.running == NEW  # the switch finished on its own
    machine.fire()
    assert machine.running == OLD


def test_a_reboot_before_the_probes_passed_boots_the_previous_generation() -> None:
    """Why: the new generation was the boot default before it was checked."""
    machine = Hypervisor(broken={NEW})
    machine.reboot_on = "switch-to-configuration"  # power-cycled right after the switch
    report = deploy(machine)
    assert not report.ok
    assert machine.running == OLD and machine.boot_default == OLD
    assert machine.booted == {g: f"/nix/store/old-{g}" for g in GUESTS}


def test_a_watchdog_that_fired_before_the_disarm_is_reported_as_a_rollback() -> None:
    """Why: disarming reported success after the watchdog had already fired."""
    machine = Hypervisor()
    machine.fire_on = "systemctl stop homestack-rollback-homelab"
    report = deploy(machine)
    assert outcome(report, "homelab") is Outcome.ROLLED_BACK, report.summary()
    assert not report.ok
    assert machine.running == OLD and machine.boot_default == OLD


def test_a_guest_failing_its_probe_rolls_back_through_the_hypervisor() -> None:
    """Why: after a microvm.nix host switch `booted == current`, so a broken guest runner
    was taken for "already deployed", never probed before the host was committed, and
    never rolled back."""
    machine = Hypervisor(broken={"/nix/store/new-db"})
    report = deploy(machine)
    assert not report.ok
    assert outcome(report, "homelab") is Outcome.ROLLED_BACK, report.summary()
    assert "192.168.100.20" in (next(m for m in report.machines if m.name == "homelab").error or "")
    assert machine.booted["db"] == "/nix/store/old-db"
    assert machine.running == OLD and machine.boot_default == OLD


def test_a_guest_rollback_survives_the_next_boot() -> None:
    """Why: a rollback by `ln -sfn <old> current` is undone by install-microvm-<g>."""
    machine = Hypervisor(broken={"/nix/store/new-db"})
    deploy(machine)
    machine.reboot()
    assert machine.booted["db"] == "/nix/store/old-db"
    assert machine.current["db"] == "/nix/store/old-db"


def test_previous_is_what_runs_not_the_profile_link() -> None:
    """Why: "previous" was the profile link; after a `test` activation or a half-done
    deploy the profile points at a system that does not run."""
    other = "/nix/store/other-homelab"
    machine = Hypervisor(broken={NEW})
    machine.systems[other] = {g: f"/nix/store/other-{g}" for g in GUESTS}
    machine.generations.append(other)  # the boot default moved; OLD still runs
    machine.profile = 2
    report = deploy(machine)
    assert outcome(report, "homelab") is Outcome.ROLLED_BACK, report.summary()
    assert machine.running == OLD
    assert machine.boot_default == other  # a deploy that failed did not touch it


def test_one_deploy_at_a_time_per_host() -> None:
    """Why: nothing stopped GitOps and `tools deploy` from switching one host at once."""
    machine = Hypervisor(broken={NEW})
    machine.units.add("homestack-deploy-lock")  # GitOps is deploying
    report = deploy(machine)
    homelab = next(m for m in report.machines if m.name == "homelab")
    assert homelab.outcome is Outcome.FAILED
    assert "another deploy" in homelab.state
    assert machine.running == OLD and not machine.timers
    assert not any("switch-to-configuration" in c for c in machine.seen)
    machine.units.clear()  # it finished: the lock is free again, and released after us
    deploy(machine)
    assert "homestack-deploy-lock" not in machine.units


def test_the_host_lock_is_held_until_its_guests_were_checked() -> None:
    """Why: the lock was given back when the hypervisor's own switch ended, so another
    deploy could switch the host under guests this one was still checking."""
    machine = Hypervisor()
    report = deploy(machine)
    assert report.ok, report.summary()
    unlock = "systemctl stop homestack-deploy-lock.service"
    assert machine.seen.count(unlock) == 1
    guest_reads = [i for i, c in enumerate(machine.seen) if c.endswith("/current")]
    assert len(guest_reads) == len(GUESTS)
    assert machine.seen.index(unlock) > max(guest_reads)
    assert "homestack-deploy-lock" not in machine.units
    # Long enough for the host's run and each of the three waves of guests after it.
    take = next(c for c in machine.seen if "--unit=homestack-deploy-lock" in c)
    options = DeployOptions()
    one = options.watchdog + 2 * options.system_timeout + 600
    assert f"--property=RuntimeMaxSec={4 * one}" in take


def test_a_host_that_failed_gives_its_lock_back_at_once() -> None:
    machine = Hypervisor(broken={NEW})
    report = deploy(machine)
    assert outcome(report, "homelab") is Outcome.ROLLED_BACK
    unlock = "systemctl stop homestack-deploy-lock.service"
    assert machine.seen.count(unlock) == 1
    assert not any(c.endswith("/current") for c in machine.seen[machine.seen.index(unlock) :])
    assert "homestack-deploy-lock" not in machine.units
