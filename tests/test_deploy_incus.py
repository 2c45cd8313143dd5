"""`tools deploy` on an Incus hypervisor, against a scripted fleet: the fixture's plan,
every command recorded (OpenTofu is never run here; the runner answers for it)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from homestack.deploy import engine
from homestack.deploy.health import Clock
from homestack.deploy.report import Outcome
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.plan import load_plan
from homestack.process import RecordingRunner, Result

INCUS = Path(__file__).parent / "inventories" / "incus" / "inventory.toml"
STAMP = "20260101T000000Z"
GUESTS = ("auth", "db", "proxy", "vpn")  # each brings its hypervisor
PLAN_TEXT = (
    "  # incus_instance.db will be updated in-place\nPlan: 0 to add, 4 to change, 0 to destroy."
)


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(INCUS)


def text(call: Sequence[str]) -> str:
    return call[-1] if call[0] == "ssh" else shlex.join(call)


@dataclass
class Fleet:
    """Healthy machines and instances; ``fail`` makes commands containing it exit 1."""

    fail: list[str] = field(default_factory=list)
    plan_code: int = 2
    running: dict[str, str] = field(default_factory=dict)  # instance -> system
    host: str = "/nix/store/old-homelab"

    def __call__(self, call: tuple[str, ...]) -> Result | None:
        cmd = text(call)
        if any(f in cmd for f in self.fail):
            return Result(call, 1, "", "scripted failure")
        if "build" in call and "--json" in call:
            name = next(a for a in call if a.startswith(".#")).split(".")[2]
            out = [{"outputs": {"out": f"/nix/store/new-{name}"}}]
            return Result(call, 0, json.dumps(out), "")
        if call[:2] == ("tofu", "-chdir=infra/incus") and call[2] == "plan":
            return Result(call, self.plan_code, PLAN_TEXT + "\n", "")
        words = shlex.split(cmd)
        if words[:2] == ["incus", "exec"]:
            inst, inner = words[2], words[4:]
            if inner == ["readlink", "-f", "/run/current-system"]:
                return Result(call, 0, self.running.get(inst, f"/nix/store/old-{inst}") + "\n", "")
            if inner[-1:] == ["switch"]:
                self.running[inst] = inner[0].removesuffix("/bin/switch-to-configuration")
        if "/bin/switch-to-configuration test" in cmd and "--on-active" not in cmd:
            self.host = cmd.split()[-2].removesuffix("/bin/switch-to-configuration")
        if cmd == "readlink -f /run/current-system":  # the hypervisor, as test_deploy models it
            return Result(call, 0, self.host + "\n", "")
        return None


def deploy(
    plan: dict[str, Any], tmp_path: Path, fleet: Fleet, *, yes: bool = True, answer: bool = False
) -> tuple[engine.DeployReport, list[str], list[str]]:
    runner = RecordingRunner(script=fleet)
    said: list[str] = []
    asked: list[str] = []

    def confirm(question: str) -> bool:
        asked.append(question)
        return answer

    report = engine.deploy(
        plan,
        runner=runner,
        flake=tmp_path,
        selected=GUESTS,
        options=DeployOptions(yes=yes, health_timeout=0, poll_interval=0),
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
        confirm=confirm,
        progress=lambda m, msg: said.append(f"{m}: {msg}"),
    )
    return report, [text(c) for c in runner.calls], said + [f"asked: {q}" for q in asked]


def at(calls: list[str], needle: str) -> int:
    return next(i for i, c in enumerate(calls) if needle in c)


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_VAR_state_passphrase", "correct horse battery staple")


def test_host_then_images_export_plan_snapshots_apply_then_guests(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    report, calls, said = deploy(plan, tmp_path, Fleet())
    assert report.ok, report.summary()
    assert {m.name: m.outcome for m in report.machines} == {
        "homelab": Outcome.SWITCHED,
        **dict.fromkeys(["auth", "db", "proxy", "vpn"], Outcome.SWITCHED),
    }
    # the guests' systems are toplevels switched inside the instances, not microvm runners
    assert not any("microvm" in c for c in calls if "build" in c)
    order = [
        at(calls, "nix-env -p /nix/var/nix/profiles/system --set /nix/store/new-homelab"),
        at(calls, "build '.#incusImages.db' --out-link images/db"),
        at(calls, "tofu -chdir=infra/incus init -input=false"),
        at(calls, "tofu -chdir=infra/incus plan -input=false"),
        at(calls, "incus snapshot create db homestack-" + STAMP),
        at(calls, "incus storage volume snapshot create homestack db-state homestack-"),
        at(calls, f"tofu -chdir=infra/incus apply -input=false homestack-{STAMP}.tfplan"),
        at(calls, "incus exec db -- nix-store --import"),
        at(calls, "incus exec db -- /nix/store/new-db/bin/switch-to-configuration switch"),
        at(calls, "/dev/tcp/192.168.100.20/5432"),
    ]
    assert order == sorted(order)
    # every stateful instance is snapshotted before the apply
    apply = at(calls, "tofu -chdir=infra/incus apply")
    for guest in ("auth", "db", "proxy", "vpn"):
        assert at(calls, f"incus snapshot create {guest} homestack-{STAMP}") < apply
    # the plan is shown before it is applied
    shown = said.index("homelab: plan: Plan: 0 to add, 4 to change, 0 to destroy.")
    assert shown < said.index("homelab: tofu apply")
    # the export was written for tofu to read, and the plan file is gone
    assert sorted(p.name for p in (tmp_path / "infra/incus").iterdir()) == [
        "images.tf.json",
        "instances.tf.json",
        "main.tf.json",
        "network.tf.json",
    ]
    db = next(m for m in report.machines if m.name == "db")
    assert db.snapshot == f"homestack-{STAMP}"
    assert db.previous == "/nix/store/old-db"


def test_without_consent_the_plan_is_shown_and_nothing_applied(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    report, calls, said = deploy(plan, tmp_path, Fleet(), yes=False, answer=False)
    assert any(s.startswith("asked: apply this OpenTofu plan") for s in said)
    assert any("Plan: 0 to add" in s for s in said)
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    assert not any("incus snapshot create" in c for c in calls)
    assert not any("switch-to-configuration switch" in c for c in calls)
    outcomes = {m.name: m.outcome for m in report.machines}
    assert outcomes["homelab"] is Outcome.SWITCHED
    assert outcomes["db"] is Outcome.NOT_STARTED
    assert not report.ok
    assert "not applied" in next(m for m in report.machines if m.name == "db").state


def test_consent_on_a_terminal_applies(plan: dict[str, Any], tmp_path: Path) -> None:
    report, calls, _ = deploy(plan, tmp_path, Fleet(), yes=False, answer=True)
    assert report.ok, report.summary()
    assert any("tofu -chdir=infra/incus apply" in c for c in calls)


def test_no_changes_needs_no_apply(plan: dict[str, Any], tmp_path: Path) -> None:
    report, calls, said = deploy(plan, tmp_path, Fleet(plan_code=0), yes=False)
    assert report.ok, report.summary()
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    assert not any(s.startswith("asked:") for s in said)


def test_a_failing_probe_rolls_the_guest_back_to_its_previous_system(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    fleet = Fleet(fail=["/dev/tcp/192.168.100.20/5432"])
    report, calls, _ = deploy(plan, tmp_path, fleet)
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.ROLLED_BACK, db
    assert "5432" in (db.error or "")
    back = at(calls, "incus exec db -- /nix/store/old-db/bin/switch-to-configuration switch")
    assert back > at(calls, "/dev/tcp/192.168.100.20/5432")
    assert (
        "incus exec db -- nix-env -p /nix/var/nix/profiles/system --set /nix/store/old-db"
        in (calls[back - 1])
    )
    assert fleet.running["db"] == "/nix/store/old-db"
    assert not any("incus snapshot restore" in c for c in calls)
    # the guests after it in the plan's order are not started
    assert next(m for m in report.machines if m.name == "auth").outcome is Outcome.NOT_STARTED


def test_a_failed_apply_switches_no_guest(plan: dict[str, Any], tmp_path: Path) -> None:
    report, calls, _ = deploy(plan, tmp_path, Fleet(fail=["tofu -chdir=infra/incus apply"]))
    assert not any("nix-store --import" in c for c in calls)
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.NOT_STARTED
    assert "tofu apply failed" in db.state


def test_tofu_is_refused_without_the_passphrase(
    plan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_VAR_state_passphrase")
    runner = RecordingRunner(script=Fleet())
    with pytest.raises(UserError, match="TF_VAR_state_passphrase is not set"):
        engine.deploy(
            plan, runner=runner, flake=tmp_path, selected=GUESTS, options=DeployOptions(yes=True)
        )
    assert runner.calls == []
    # a deploy that runs no tofu needs none
    report = engine.deploy(
        plan,
        runner=RecordingRunner(script=Fleet()),
        flake=tmp_path,
        selected=("cloud-relay",),
        options=DeployOptions(health_timeout=0, poll_interval=0),
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    assert report.ok, report.summary()


def test_dry_run_prints_everything_and_writes_nothing(
    plan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_VAR_state_passphrase")
    printed: list[str] = []
    report = engine.deploy(
        plan,
        runner=engine.DryRunRunner(printed.append),
        flake=tmp_path,
        selected=GUESTS,
        options=DeployOptions(dry_run=True),
        stamp=STAMP,
    )
    assert report.ok, report.summary()
    assert list(tmp_path.iterdir()) == []
    joined = "\n".join(printed)
    for needle in (
        "tofu -chdir=infra/incus init",
        "tofu -chdir=infra/incus plan",
        "incus snapshot create db",
        "tofu -chdir=infra/incus apply",
        "incus exec vpn -- timeout 300 systemctl is-system-running --wait",
    ):
        assert needle in joined
    assert joined.index("incus snapshot create db") < joined.index("tofu -chdir=infra/incus apply")


def test_a_lost_connection_before_the_apply_applies_nothing(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    class Lost(Fleet):
        def __call__(self, call: tuple[str, ...]) -> Result | None:
            if "incus exec auth -- readlink" in text(call):
                return Result(call, 255, "", "client_loop: send disconnect: Broken pipe")
            return super().__call__(call)

    report, calls, _ = deploy(plan, tmp_path, Lost())
    assert not any("tofu -chdir=infra/incus" in c for c in calls)
    auth = next(m for m in report.machines if m.name == "auth")
    assert auth.outcome is Outcome.NOT_STARTED
    assert "lost the connection" in auth.state
    assert next(m for m in report.machines if m.name == "homelab").outcome is Outcome.SWITCHED
