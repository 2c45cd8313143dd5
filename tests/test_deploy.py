"""Deploy orchestration, with every external command recorded and scripted.

The plan below has the shape docs/plan.md describes (one relay, one hypervisor with
four guests); the runner answers like the machines would, and a rule makes one command
fail so each failure point can be tried.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homestack.deploy import engine
from homestack.deploy.health import Clock
from homestack.deploy.order import Kind, waves
from homestack.deploy.remote import Ssh
from homestack.deploy.report import Outcome
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.process import RecordingRunner, Result

STAMP = "20260101T000000Z"
SYSTEMD_RUN = "systemd-run --wait --collect --no-ask-password --pipe --quiet --service-type=exec"
SWITCH = f"{SYSTEMD_RUN} --unit=homestack-switch-"  # + machine-stamp …/switch-to-configuration
RUNNING = "timeout 300 systemctl is-system-running"
HOSTS = {"root@relay": "cloud-relay", "root@homelab": "homelab"}


def _guest(
    name: str, address: str, health: list[dict[str, Any]], depends: list[str]
) -> dict[str, Any]:
    return {
        "name": name,
        "host": "homelab",
        "address": address,
        "state": {
            "size": 1024,
            "dataset": f"tank/microvms/{name}",
            "hostPath": f"/var/lib/microvms/{name}/state",
            "guestPath": "/persist",
        },
        "health": health,
        "dependsOn": depends,
    }


def make_plan() -> dict[str, Any]:
    return {
        "hosts": {
            "cloud-relay": {
                "name": "cloud-relay",
                "role": "relay",
                "target": "root@relay",
                "guests": [],
                "zfs": None,
            },
            "homelab": {
                "name": "homelab",
                "role": "hypervisor",
                "target": "root@homelab",
                "guests": ["auth", "db", "proxy", "vpn"],
                "zfs": {"pool": "tank", "hostId": "8425e349"},
            },
        },
        "guests": {
            "auth": _guest(
                "auth",
                "192.168.100.10",
                [
                    {
                        "service": "pocket-id",
                        "kind": "http",
                        "port": 1411,
                        "path": "/.well-known/openid-configuration",
                    }
                ],
                ["db"],
            ),
            "vpn": _guest(
                "vpn",
                "192.168.100.11",
                [{"service": "netbird", "kind": "tcp", "port": 33073}],
                ["db"],
            ),
            "proxy": _guest(
                "proxy",
                "192.168.100.2",
                [{"service": "caddy", "kind": "tcp", "port": 443}],
                ["auth", "vpn"],
            ),
            "db": _guest(
                "db", "192.168.100.20", [{"service": "postgresql", "kind": "tcp", "port": 5432}], []
            ),
        },
        "deployOrder": [["cloud-relay", "homelab"], ["db"], ["auth", "vpn"], ["proxy"]],
    }


def text(call: Sequence[str]) -> str:
    """The command as the machine sees it: the remote part of an ssh call."""
    return call[-1] if call[0] == "ssh" else shlex.join(call)


def target(call: Sequence[str]) -> str | None:
    return call[call.index("--") - 1] if call[0] == "ssh" else None


@dataclass
class Rule:
    """Answer commands starting with ``pattern`` (containing it, if it starts with ``*``),
    on ``where`` if given, with ``code``, ``times`` times (None: always)."""

    pattern: str
    code: int
    where: str | None = None
    times: int | None = None
    stdout: str = ""
    after: str | None = None  # only once a command starting with this has run

    def matches(self, cmd: str) -> bool:
        if self.pattern.startswith("*"):
            return self.pattern[1:] in cmd
        return cmd.startswith(self.pattern)


@dataclass
class Machines:
    """A scripted fleet: answers as healthy machines would, except where a rule says.

    What runs follows the switches (`switch-to-configuration test` of a system makes it
    run, and on the hypervisor points every guest at that generation's runner, as
    microvm.nix does); tests/test_deploy_activation.py models the rest."""

    rules: list[Rule] = field(default_factory=list)
    on_hypervisor: str = "auth\ndb\nproxy\nvpn\n"
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[str] = field(default_factory=list)
    running: dict[str, str] = field(
        default_factory=lambda: {t: f"/nix/store/old-{h}" for t, h in HOSTS.items()}
    )

    def __call__(self, call: tuple[str, ...]) -> Result | None:  # noqa: PLR0911 - a fake ssh
        cmd = text(call)
        with self.lock:
            self.seen.append(cmd)
            for rule in self.rules:
                armed = rule.after is None or any(c.startswith(rule.after) for c in self.seen)
                if (
                    rule.matches(cmd)
                    and rule.where in (None, target(call))
                    and rule.times != 0
                    and armed
                ):
                    if rule.times is not None:
                        rule.times -= 1
                    return Result(call, rule.code, rule.stdout, f"{rule.pattern}: scripted failure")
        if "build" in call and "--json" in call:  # `nix build --json`, as Nix 2.8 prints it
            name = next(a for a in call if a.startswith(".#")).split(".")[2]
            built = [
                {"drvPath": f"/nix/store/{name}.drv", "outputs": {"out": f"/nix/store/new-{name}"}}
            ]
            return Result(call, 0, json.dumps(built) + "\n", "")
        where = target(call) or ""
        if "/bin/switch-to-configuration test" in cmd and "--on-active" not in cmd:
            self.running[where] = cmd.split()[-2].removesuffix("/bin/switch-to-configuration")
        if cmd == "readlink -f /run/current-system":
            return Result(call, 0, self.running.get(where, "") + "\n", "")
        if cmd.startswith("readlink /var/lib/microvms/"):
            age = self.running.get(where, "/nix/store/old-").split("/")[-1].split("-")[0]
            return Result(call, 0, f"/nix/store/{age}-{cmd.split('/')[-2]}\n", "")
        if cmd == "ls -1 /var/lib/microvms":
            return Result(call, 0, self.on_hypervisor, "")
        if cmd.startswith("zfs list -H -o name "):  # every dataset exists
            return Result(call, 0, "\n".join(cmd.split()[5:]) + "\n", "")
        return None


def run(
    rules: list[Rule] | None = None,
    selected: Sequence[str] = (),
    *,
    machines: Machines | None = None,
    problems: Sequence[str] = (),
    **options: Any,
) -> tuple[engine.DeployReport, list[tuple[str, ...]]]:
    """Deploy against the scripted fleet; validation (a library call, recorded here as
    ("validate",) among the commands) finds ``problems``."""
    fleet = machines or Machines(rules or [])
    runner = RecordingRunner(script=fleet)

    def validate() -> Sequence[str]:
        runner.calls.append(("validate",))
        return problems

    opts = DeployOptions(health_timeout=0, poll_interval=0, **options)
    report = engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        selected=selected,
        options=opts,
        validate=validate,
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    return report, runner.calls


def outcome(report: engine.DeployReport, name: str) -> Outcome:
    return next(m for m in report.machines if m.name == name).outcome


def index(calls: list[tuple[str, ...]], needle: str, where: str | None = None) -> int:
    for i, call in enumerate(calls):
        if needle in text(call) and where in (None, target(call)):
            return i
    raise AssertionError(f"no call with {needle!r} on {where}")


def on(calls: list[tuple[str, ...]], where: str) -> list[str]:
    return [text(c) for c in calls if target(c) == where]


# --- order --------------------------------------------------------------------------------


def test_waves_follow_the_plan() -> None:
    names = [[m.name for m in wave] for wave in waves(make_plan())]
    assert names == [["cloud-relay", "homelab"], ["db"], ["auth", "vpn"], ["proxy"]]
    # a guest comes with its hypervisor, which declares its runner
    assert [[m.name for m in w] for w in waves(make_plan(), ["proxy", "db"])] == [
        ["homelab"],
        ["db"],
        ["proxy"],
    ]
    assert [[m.name for m in w] for w in waves(make_plan(), ["cloud-relay"])] == [["cloud-relay"]]
    homelab = waves(make_plan())[0][1]
    assert homelab.kind is Kind.HOST
    assert homelab.datasets == (
        "tank/microvms/auth",
        "tank/microvms/db",
        "tank/microvms/proxy",
        "tank/microvms/vpn",
    )


def test_unknown_machine_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no host or guest named 'nas'"):
        waves(make_plan(), ["nas"])


def test_a_machine_missing_from_the_order_is_a_user_error() -> None:
    plan = make_plan()
    plan["deployOrder"] = [["cloud-relay", "homelab"], ["db"], ["auth", "vpn"]]
    with pytest.raises(UserError, match="does not place proxy"):
        waves(plan)


def test_full_deploy_switches_everything_in_order() -> None:
    report, calls = run()
    assert report.ok, report.summary()
    assert [m.outcome for m in report.machines] == [Outcome.SWITCHED] * 6
    # validate, then every build, before anything touches a machine
    builds = [i for i, c in enumerate(calls) if "build" in c and "--json" in c]
    assert len(builds) == 6
    assert calls[0] == ("validate",)
    assert not any(c[0] == "tools" for c in calls)  # the library, never a `tools` on PATH
    assert max(builds) < min(i for i, c in enumerate(calls) if c[0] == "ssh")
    # a wave starts only when the one before finished: the hypervisor's generation is the
    # boot default before any guest is looked at
    last_host = max(
        index(calls, "nix-env -p /nix/var/nix/profiles/system --set", "root@homelab"),
        index(calls, "nix-env -p /nix/var/nix/profiles/system --set", "root@relay"),
    )
    assert index(calls, "readlink /var/lib/microvms/db/current") > last_host
    db_done = max(i for i, c in enumerate(calls) if "/dev/tcp/192.168.100.20/5432" in text(c))
    assert max(i for i, c in enumerate(calls) if "/dev/tcp/192.168.100.11/33073" in text(c)) > (
        db_done
    )
    assert max(i for i, c in enumerate(calls) if "/dev/tcp/192.168.100.2/443" in text(c)) > max(
        i for i, c in enumerate(calls) if "192.168.100.10:1411" in text(c)
    )


def test_host_switch_keeps_the_boot_default_until_healthy() -> None:
    _, calls = run(selected=["cloud-relay"])
    relay = f"cloud-relay-{STAMP}"
    assert on(calls, "root@relay") == [
        (
            f"systemd-run --unit=homestack-deploy-lock '--description=Homestack deploy {STAMP}' "
            "--property=RuntimeMaxSec=2100 --collect /run/current-system/sw/bin/sleep infinity"
        ),
        "readlink -f /run/current-system",
        (
            f"systemd-run --unit=homestack-rollback-{relay} --on-active=900 "
            "--timer-property=AccuracySec=1s --collect "
            "/nix/store/old-cloud-relay/bin/switch-to-configuration test"
        ),
        f"{SWITCH}{relay} /nix/store/new-cloud-relay/bin/switch-to-configuration test",
        "timeout 300 systemctl is-system-running --wait",
        f"systemctl stop homestack-rollback-{relay}.timer",
        f"systemctl show --property=ActiveState --value homestack-rollback-{relay}.service",
        "readlink -f /run/current-system",
        "nix-env -p /nix/var/nix/profiles/system --set /nix/store/new-cloud-relay",
        f"{SWITCH}{relay}-boot /nix/store/new-cloud-relay/bin/switch-to-configuration boot",
        "systemctl stop homestack-deploy-lock.service",
    ]
    # what it runs is read first, so every report can say it from what was seen
    copy = index(calls, "copy --to ssh://root@relay /nix/store/new-cloud-relay")
    assert index(calls, "readlink -f /run/current-system", "root@relay") < copy


def after_hypervisor(calls: list[tuple[str, ...]]) -> list[str]:
    """What ran on the hypervisor after its own run (it made the new system the boot
    default), up to the release of its lock, which waits for its guests."""
    cmds = on(calls, "root@homelab")
    boot = max(i for i, c in enumerate(cmds) if "--unit=homestack-switch-homelab-" in c)
    assert cmds[-1] == "systemctl stop homestack-deploy-lock.service"
    return cmds[boot + 1 : -1]


def test_hypervisor_probes_every_guest_before_its_generation_is_the_boot_default() -> None:
    _, calls = run(selected=["homelab"])
    cmds = on(calls, "root@homelab")
    probes = [i for i, c in enumerate(cmds) if "192.168.100." in c]
    assert len(probes) == 4
    # in the plan's order: db, then auth and vpn, then proxy
    assert "192.168.100.20" in cmds[probes[0]] and "192.168.100.2/" in cmds[probes[-1]]
    assert max(probes) < cmds.index(
        "nix-env -p /nix/var/nix/profiles/system --set /nix/store/new-homelab"
    )


def test_guest_is_checked_on_the_runner_its_hypervisor_declares() -> None:
    report, calls = run(selected=["auth"])
    assert outcome(report, "auth") is Outcome.SWITCHED
    auth = next(m for m in report.machines if m.name == "auth")
    assert auth.previous == "/nix/store/old-auth"  # booted before the hypervisor switched
    assert after_hypervisor(calls) == [
        "readlink /var/lib/microvms/auth/booted",
        "readlink /var/lib/microvms/auth/current",
        "readlink /var/lib/microvms/auth/booted",  # booted by the hypervisor's switch already
        "systemctl is-active microvm@auth.service",
        (
            "curl --fail --silent --show-error --max-time 5 --output /dev/null "
            "http://192.168.100.10:1411/.well-known/openid-configuration"
        ),
    ]
    assert not any("ln -sfn" in text(c) for c in calls)


def test_guest_already_current_is_not_restarted() -> None:
    rules = [Rule("readlink /var/lib/microvms/db/booted", 0, stdout="/nix/store/new-db\n")]
    report, calls = run(rules, ["db"])
    assert outcome(report, "db") is Outcome.UNCHANGED
    assert not any("restart" in text(c) for c in calls)


def test_machines_of_one_wave_run_in_parallel() -> None:
    # Both copies of wave 1 must be in flight at the same time to pass the barrier.
    barrier = threading.Barrier(2, timeout=5)
    fleet = Machines()

    def script(call: tuple[str, ...]) -> Result | None:
        if "copy" in call and call[-1] in ("/nix/store/new-cloud-relay", "/nix/store/new-homelab"):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return Result(call, 1, "", "copies ran one after the other")
        return fleet(call)

    runner = RecordingRunner(script=script)
    report = engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        options=DeployOptions(health_timeout=0, poll_interval=0),
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    assert report.ok, report.summary()


def test_snapshots_come_before_any_switch_and_are_taken_once() -> None:
    _, calls = run()
    snaps = [i for i, c in enumerate(calls) if text(c).startswith("zfs snapshot")]
    assert len(snaps) == 1  # the hypervisor's switch can restart every guest: all at once
    assert text(calls[snaps[0]]) == "zfs snapshot -r " + " ".join(
        f"tank/microvms/{g}@homestack-{STAMP}" for g in ("auth", "db", "proxy", "vpn")
    )
    assert snaps[0] < index(calls, f"{SWITCH}homelab", "root@homelab")


def test_a_new_guest_without_a_dataset_yet_is_not_snapshotted() -> None:
    fleet = Machines(
        [
            Rule(
                "zfs list -H -o name",
                1,
                stdout="tank/microvms/auth\ntank/microvms/db\ntank/microvms/proxy\n",
            )
        ]
    )
    report, calls = run(machines=fleet)
    assert report.ok
    assert text(calls[index(calls, "zfs snapshot")]) == "zfs snapshot -r " + " ".join(
        f"tank/microvms/{g}@homestack-{STAMP}" for g in ("auth", "db", "proxy")
    )
    homelab = report.machines[1]
    snapshot = next(step for step in homelab.steps if step.name == "snapshot")
    assert snapshot.detail == "no dataset yet (new guest): tank/microvms/vpn"


def test_watchdog_that_cannot_be_disarmed_is_reported() -> None:
    report, _ = run([Rule("systemctl stop homestack-rollback-cloud-relay-", 255)], ["cloud-relay"])
    relay = report.machines[0]
    assert relay.outcome is Outcome.UNKNOWN
    assert "is healthy, but the connection was lost before its watchdog was disarmed" in relay.state


def test_build_only_switches_nothing() -> None:
    report, calls = run(build_only=True)
    assert report.ok
    assert {m.outcome for m in report.machines} == {Outcome.BUILT}
    assert not any(c[0] == "ssh" for c in calls)


# --- failure points -----------------------------------------------------------------------


def test_validation_failure_stops_before_building() -> None:
    report, calls = run(problems=["secrets/vpn.yaml: does not verify: MAC mismatch"])
    assert not report.ok
    assert "secrets/vpn.yaml: does not verify: MAC mismatch" in (report.error or "")
    assert not any("build" in c for c in calls)
    assert {m.outcome for m in report.machines} == {Outcome.NOT_STARTED}


def test_build_failure_changes_nothing() -> None:
    report, calls = run([Rule("*nixosConfigurations.auth.", 1)])
    assert report.error is not None and report.error.startswith("build of auth failed")
    assert not any(c[0] == "ssh" for c in calls)
    assert "nothing was changed" in report.machines[0].state


def test_snapshot_failure_stops_before_copy() -> None:
    report, calls = run([Rule("zfs snapshot", 1)], ["db"])
    assert outcome(report, "homelab") is Outcome.FAILED
    assert outcome(report, "db") is Outcome.NOT_STARTED
    assert not any("copy" in c for c in calls)
    assert not any("ln -sfn" in text(c) for c in calls)


def test_copy_failure_leaves_the_host_untouched() -> None:
    report, calls = run([Rule("*copy --to ssh://root@homelab", 1)])
    homelab = next(m for m in report.machines if m.name == "homelab")
    assert homelab.outcome is Outcome.FAILED
    assert "not switched" in homelab.state
    assert not any("nix-env" in text(c) for c in calls if target(c) == "root@homelab")
    # the relay of the same wave finished; the later waves never started
    assert outcome(report, "cloud-relay") is Outcome.SWITCHED
    assert {outcome(report, g) for g in ("db", "auth", "vpn", "proxy")} == {Outcome.NOT_STARTED}


ROLLBACK_HOMELAB = (
    f"{SWITCH}homelab-{STAMP}-rollback /nix/store/old-homelab/bin/switch-to-configuration test"
)


@pytest.mark.parametrize(
    "rule",
    [
        Rule(f"{SWITCH}homelab", 4, "root@homelab", times=1),
        Rule(RUNNING, 1, "root@homelab", times=1, stdout="degraded\n"),
        Rule(
            "systemctl is-active microvm@vpn.service", 3, "root@homelab", times=1, stdout="failed\n"
        ),
        Rule("*/dev/tcp/192.168.100.20/5432", 1, "root@homelab", times=1),
        Rule(f"{SWITCH}homelab", 255, "root@homelab", times=1),  # connection lost
        Rule(RUNNING, 255, "root@homelab", times=1),
        Rule("nix-env -p /nix/var/nix/profiles/system --set /nix/store/new", 1, "root@homelab"),
    ],
    ids=[
        "switch",
        "system-degraded",
        "guest-unit",
        "guest-probe",
        "lost-in-switch",
        "lost-in-health",
        "boot-default",
    ],
)
def test_host_failure_after_the_switch_rolls_back(rule: Rule) -> None:
    report, calls = run([rule], ["homelab"])
    homelab = report.machines[0]
    assert homelab.outcome is Outcome.ROLLED_BACK, homelab
    assert "/nix/store/old-homelab" in homelab.state
    cmds = on(calls, "root@homelab")
    start = cmds.index(ROLLBACK_HOMELAB)
    if rule.pattern.startswith("nix-env"):  # the boot default may have moved: put back too
        assert cmds[start + 1 : start + 3] == [
            "nix-env -p /nix/var/nix/profiles/system --set /nix/store/old-homelab",
            f"{SWITCH}homelab-{STAMP}-rollback-boot "
            "/nix/store/old-homelab/bin/switch-to-configuration boot",
        ]
        assert cmds[-2] == "timeout 300 systemctl is-system-running --wait"  # disarmed before
    else:  # the boot default was never touched; the rollback is verified, then disarmed
        assert not any(c.startswith("nix-env") for c in cmds)
        assert "timeout 300 systemctl is-system-running --wait" in cmds[start + 1 :]
        assert cmds[-2] == f"systemctl stop homestack-rollback-homelab-{STAMP}.timer"
    assert cmds[-1] == "systemctl stop homestack-deploy-lock.service"
    assert not report.ok


@pytest.mark.parametrize(
    "rule",
    [
        Rule(
            "systemctl is-active microvm@db.service",
            3,
            stdout="failed\n",
            after="readlink /var/lib/microvms/db/current",
        ),
        Rule("*/dev/tcp/192.168.100.20/5432", 1, after="readlink /var/lib/microvms/db/current"),
    ],
    ids=["unit", "endpoint"],
)
def test_guest_failing_after_its_hypervisor_is_reported_not_relinked(rule: Rule) -> None:
    report, calls = run([rule], ["db", "proxy"])
    assert outcome(report, "homelab") is Outcome.SWITCHED
    db = report.machines[1]
    assert db.outcome is Outcome.FAILED, db
    assert "goes back with homelab's previous generation" in db.state
    assert not any("ln -sfn" in text(c) for c in calls)  # microvm.nix would undo it
    assert outcome(report, "proxy") is Outcome.NOT_STARTED


def test_guest_not_declared_by_its_hypervisor_is_not_switched() -> None:
    report, _ = run(
        [Rule("readlink /var/lib/microvms/db/current", 0, stdout="/nix/store/other-db\n")], ["db"]
    )
    db = report.machines[1]
    assert db.outcome is Outcome.FAILED
    assert "deploy homelab with it" in (db.error or "")


def test_rollback_that_cannot_connect_says_the_state_is_unknown() -> None:
    back = f"{SWITCH}cloud-relay-{STAMP}-rollback"
    report, _ = run(
        [Rule(RUNNING, 1, "root@relay", times=1), Rule(back, 255, "root@relay")], ["cloud-relay"]
    )
    relay = report.machines[0]
    assert relay.outcome is Outcome.UNKNOWN
    assert "may still run /nix/store/new-cloud-relay" in relay.state
    assert f"homestack-rollback-cloud-relay-{STAMP}.timer" in relay.state  # the watchdog will


def test_rollback_that_fails_is_reported_as_unknown() -> None:
    back = f"{SWITCH}cloud-relay-{STAMP}-rollback"
    report, _ = run(
        [Rule(RUNNING, 1, "root@relay", times=1), Rule(back, 1, "root@relay")], ["cloud-relay"]
    )
    assert report.machines[0].outcome is Outcome.UNKNOWN
    assert "rollback failed" in report.machines[0].state


def test_rollback_that_stays_unhealthy_says_so() -> None:
    report, _ = run([Rule(RUNNING, 1, "root@relay", stdout="degraded\n")], ["cloud-relay"])
    relay = report.machines[0]
    assert relay.outcome is Outcome.ROLLED_BACK
    assert "still unhealthy: degraded" in relay.state


def test_connection_lost_before_the_switch_changes_nothing() -> None:
    # reached, what it runs seen, then the link drops: it still runs what was seen
    report, calls = run([Rule("zfs list", 255, "root@homelab")], ["db"])
    homelab = report.machines[0]
    assert homelab.outcome is Outcome.FAILED
    assert homelab.state == "not switched; still runs /nix/store/old-homelab"
    assert not any("nix-env" in text(c) for c in calls)


def test_an_unreachable_machine_is_unknown_never_guessed() -> None:
    # nothing was ever seen of the relay: its state is unknown, not "its previous one"
    refused = "ssh: connect to host relay port 22: Connection refused"
    fleet = Machines()
    runner = RecordingRunner(
        script=lambda call: (
            Result(call, 255, "", refused) if target(call) == "root@relay" else fleet(call)
        )
    )
    report = engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        selected=["cloud-relay"],
        options=DeployOptions(health_timeout=0, poll_interval=0),
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    relay = report.machines[0]
    assert relay.outcome is Outcome.UNKNOWN
    assert relay.state.startswith("unknown: not switched")
    assert "previous configuration" not in relay.state
    assert relay.error == (f"root@relay: connection refused (is sshd running there?) ({refused})")
    assert not any("copy" in c for c in runner.calls)


def test_first_install_of_a_guest_is_checked_like_any_other() -> None:
    # a new guest has no `booted` before its hypervisor's switch starts it
    report, _ = run([Rule("readlink /var/lib/microvms/db/booted", 1, times=1)], ["db"])
    db = report.machines[1]
    assert db.outcome is Outcome.SWITCHED, db
    assert db.previous is None


# --- guests that left the inventory -------------------------------------------------------


def test_stale_guest_is_removed_after_confirmation_with_a_final_snapshot() -> None:
    fleet = Machines(on_hypervisor="auth\ndb\nold\nproxy\nvpn\n")
    report, calls = run(machines=fleet, yes=True)
    assert report.removals[0].removed, report.removals
    cmds = on(calls, "root@homelab")
    stop = cmds.index("systemctl stop microvm@old.service")
    assert cmds[stop : stop + 6] == [
        "systemctl stop microvm@old.service",
        f"zfs snapshot -r tank/microvms/old@homestack-final-{STAMP}",
        (
            "sh -c 'zfs list -H -o name tank/homestack-removed >/dev/null 2>&1 || "
            "zfs create -o canmount=off -o mountpoint=none tank/homestack-removed'"
        ),
        f"zfs rename -u tank/microvms/old tank/homestack-removed/old-{STAMP}",
        f"zfs set mountpoint=none tank/homestack-removed/old-{STAMP}",
        "rm -rf --one-file-system /var/lib/microvms/old",
    ]
    # only once the hypervisor runs its new configuration (which no longer declares it)
    assert stop > cmds.index("nix-env -p /nix/var/nix/profiles/system --set /nix/store/new-homelab")


def test_stale_guest_is_kept_without_confirmation() -> None:
    fleet = Machines(on_hypervisor="auth\ndb\nold\nproxy\nvpn\n")
    questions: list[str] = []

    def confirm(question: str) -> bool:
        questions.append(question)
        return False

    runner = RecordingRunner(script=fleet)
    report = engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        options=DeployOptions(health_timeout=0, poll_interval=0),
        confirm=confirm,
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    assert "guest old is on homelab but no longer in the inventory" in questions[0]
    assert not report.removals[0].removed
    assert not any("microvm@old" in text(c) for c in runner.calls)


def test_stale_guest_is_kept_when_the_hypervisor_rolled_back() -> None:
    fleet = Machines(
        [Rule(RUNNING, 1, "root@homelab", times=1)], on_hypervisor="auth\ndb\nold\nproxy\nvpn\n"
    )
    report, calls = run(machines=fleet, yes=True)
    assert outcome(report, "homelab") is Outcome.ROLLED_BACK
    assert not any("microvm@old" in text(c) for c in calls)


# --- dry run ------------------------------------------------------------------------------


def test_dry_run_prints_the_same_commands_a_deploy_runs() -> None:
    printed: list[str] = []
    report = engine.deploy(
        make_plan(),
        runner=engine.DryRunRunner(printed.append),
        flake=Path("/flake"),
        options=DeployOptions(dry_run=True),
        stamp=STAMP,
    )
    assert report.ok
    _, recorded = run()
    calls = [c for c in recorded if c != ("validate",)]  # a library call, not a command
    real = [text(c) for c in calls]
    assert len(printed) == len(real)
    for line, call in zip(printed, calls, strict=True):
        # same program, same machine, same step; only run-time values are placeholders
        assert shlex.split(line)[-1].split()[0] == text(call).split()[0] or call[0] != "ssh"
    assert any("@homelab-toplevel@" in p for p in printed)
    assert any("@running-system@/bin/switch-to-configuration test" in p for p in printed)


# --- quoting ------------------------------------------------------------------------------

WORD_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@given(st.lists(st.text(min_size=1, alphabet=WORD_CHARS), min_size=1, max_size=6))
def test_remote_commands_reach_the_remote_shell_word_for_word(words: list[str]) -> None:
    argv = Ssh().argv("root@host", words)
    assert argv[-2:-1] == ["--"]
    assert shlex.split(argv[-1]) == words


@given(st.text(alphabet=WORD_CHARS))
def test_dry_run_quoting_is_the_same_word(word: str) -> None:
    assert shlex.split(engine.display_quote(word)) == [word]
