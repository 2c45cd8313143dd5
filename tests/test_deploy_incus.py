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
from click.testing import CliRunner

from homestack.deploy import cli as deploy_cli
from homestack.deploy import engine, incus
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


def change(address: str, actions: list[str], **before: str) -> dict[str, Any]:
    """One entry of `tofu show -json`'s resource_changes (OpenTofu's JSON output format:
    internal/command/jsonplan in opentofu/opentofu)."""
    rtype, name = address.split(".", 1)
    return {
        "address": address,
        "mode": "managed",
        "type": rtype,
        "name": name,
        "provider_name": "registry.opentofu.org/lxc/incus",
        "change": {
            "actions": actions,
            "before": None if actions == ["create"] else {"project": "default", **before},
            "after": None if actions == ["delete"] else {**before},
        },
    }


UPDATE_DB = change("incus_instance.db", ["update"], name="db", type="container")
DELETE_OLD = [
    change("incus_instance.old", ["delete"], name="old", type="container"),
    change("incus_storage_volume.old-state", ["delete"], name="old-state", pool="homestack"),
]
REPLACE_DB = change("incus_instance.db", ["delete", "create"], name="db", type="vm")


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
    changes: list[dict[str, Any]] = field(default_factory=lambda: [UPDATE_DB])
    show: str | None = None  # what `tofu show -json` prints instead of ``changes``
    running: dict[str, str] = field(default_factory=dict)  # instance -> system
    host: str = "/nix/store/old-homelab"

    def __call__(self, call: tuple[str, ...]) -> Result | None:  # noqa: PLR0911 - a fleet
        cmd = text(call)
        if any(f in cmd for f in self.fail):
            return Result(call, 1, "", "Error: scripted failure")
        if "build" in call and "--json" in call:
            name = next(a for a in call if a.startswith(".#")).split(".")[2]
            out = [{"outputs": {"out": f"/nix/store/new-{name}"}}]
            return Result(call, 0, json.dumps(out), "")
        if call[:2] == ("tofu", "-chdir=infra/incus") and call[2] == "plan":
            return Result(call, self.plan_code, PLAN_TEXT + "\n", "")
        if call[:4] == ("tofu", "-chdir=infra/incus", "show", "-json"):
            shown = {"format_version": "1.2", "resource_changes": self.changes}
            return Result(call, 0, self.show or json.dumps(shown), "")
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


@dataclass
class StdinRunner(RecordingRunner):
    """Also records what each command got on its stdin (None: ours, inherited)."""

    stdin: dict[str, str | bytes | None] = field(default_factory=dict)

    def run(self, args: Sequence[str], *, check: bool, **kwargs: Any) -> Result:
        self.stdin[text(tuple(args))] = kwargs.get("input")
        return super().run(args, check=check, **kwargs)


def deploy(
    plan: dict[str, Any],
    tmp_path: Path,
    fleet: Fleet,
    *,
    yes: bool = True,
    answer: bool = False,
    runner: RecordingRunner | None = None,
) -> tuple[engine.DeployReport, list[str], list[str]]:
    runner = runner or RecordingRunner(script=fleet)
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
        # the images are built with everything else, before any machine is touched
        at(calls, "build '.#incusImages.db' --out-link images/db"),
        at(calls, "systemd-run --unit=homestack-deploy-lock"),
        at(calls, "nix-env -p /nix/var/nix/profiles/system --set /nix/store/new-homelab"),
        at(calls, "tofu -chdir=infra/incus init -input=false"),
        at(calls, "tofu -chdir=infra/incus plan -input=false"),
        at(calls, f"tofu -chdir=infra/incus show -json homestack-{STAMP}.tfplan"),
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
    shown = joined.index(f"tofu -chdir=infra/incus show -json homestack-{STAMP}.tfplan")
    assert shown < joined.index("tofu -chdir=infra/incus apply")
    # the images are built before any machine is touched
    assert joined.index("incusImages.vpn") < joined.index("ssh ")


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


# --- what the plan destroys: a final snapshot and an export first ---------------------------


def test_a_removed_guest_is_snapshotted_and_exported_before_the_apply(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    fleet = Fleet(changes=[UPDATE_DB, *DELETE_OLD])
    runner = StdinRunner(script=fleet)
    report, calls, said = deploy(plan, tmp_path, fleet, yes=False, answer=True, runner=runner)
    assert report.ok, report.summary()
    final = f"homestack-final-{STAMP}"
    order = [
        at(calls, f"tofu -chdir=infra/incus show -json homestack-{STAMP}.tfplan"),
        at(calls, "mkdir -p -m 0700 /var/lib/homestack/removed"),
        at(calls, f"incus snapshot create old {final}"),
        at(calls, f"incus export old /var/lib/homestack/removed/old-{STAMP}.tar.gz --instance-"),
        at(calls, f"incus storage volume snapshot create homestack old-state {final}"),
        at(
            calls,
            "incus storage volume export homestack old-state "
            f"/var/lib/homestack/removed/homestack-old-state-{STAMP}.tar.gz --volume-only",
        ),
        at(calls, "tofu -chdir=infra/incus apply"),
    ]
    assert order == sorted(order)
    # the question says what goes, and what is kept of it
    question = next(s for s in said if s.startswith("asked: apply this OpenTofu plan"))
    assert "incus_instance.old (deleted), incus_storage_volume.old-state (deleted)" in question
    assert "final snapshot and an export" in question
    # each one is said in the progress and in the report
    assert (
        "homelab: plan: incus_instance.old (deleted); a final snapshot and an export are taken"
        " first"
    ) in said
    assert (
        f"homelab: incus_instance.old: final snapshot {final}, export to "
        f"/var/lib/homestack/removed/old-{STAMP}.tar.gz"
    ) in said
    removals = {r.guest: r for r in report.removals}
    assert set(removals) == {"old", "old-state"}
    assert removals["old"].removed
    assert f"export /var/lib/homestack/removed/old-{STAMP}.tar.gz on homelab" in (
        removals["old"].detail
    )
    assert "old" in report.summary() and final in report.summary()
    assert report.to_json()["removedGuests"][0]["guest"] == "old"
    # incus reads a snapshot's configuration from a stdin that is not a terminal: never ours
    snapshots = [c for c in calls if "snapshot create" in c]
    assert snapshots and all(runner.stdin[c] == "" for c in snapshots)
    # nothing of a guest that stays is exported
    assert not any("incus export db" in c for c in calls)


def test_a_replaced_instance_is_exported_and_its_volume_snapshotted(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    report, calls, said = deploy(plan, tmp_path, Fleet(changes=[REPLACE_DB]))
    assert report.ok, report.summary()
    apply = at(calls, "tofu -chdir=infra/incus apply")
    assert at(calls, f"incus snapshot create db homestack-final-{STAMP}") < apply
    assert at(calls, f"incus export db /var/lib/homestack/removed/db-{STAMP}.tar.gz") < apply
    # the state volume stays and is snapshotted as any other; the root disk's own
    # snapshot would go with the instance, so only the final one and the export are taken
    assert at(calls, f"snapshot create homestack db-state homestack-{STAMP}") < apply
    assert not any(c == f"incus snapshot create db homestack-{STAMP}" for c in calls)
    assert "homelab: plan: incus_instance.db (replaced)" in " ".join(said)
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.SWITCHED
    assert db.previous is None  # a new instance: the old one's system is not in it
    (removal,) = report.removals
    assert removal.guest == "db" and "replaced" in removal.detail


@pytest.mark.parametrize(
    ("fail", "named"),
    [
        ("incus snapshot create old homestack-final-", "`incus snapshot create old homestack-"),
        ("incus export old", "`incus export old /var/lib/homestack/removed/old-"),
        ("incus storage volume export homestack old-state", "`incus storage volume export "),
        ("mkdir -p -m 0700 /var/lib/homestack/removed", "cannot make /var/lib/homestack/removed"),
    ],
)
def test_a_failed_final_snapshot_or_export_applies_nothing(
    plan: dict[str, Any], tmp_path: Path, fail: str, named: str
) -> None:
    fleet = Fleet(changes=DELETE_OLD, fail=[fail])
    report, calls, _ = deploy(plan, tmp_path, fleet)
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    assert not any("switch-to-configuration switch" in c for c in calls)
    assert report.held is not None and not report.ok
    assert report.held.startswith("homelab: ")
    assert named in report.held
    assert "scripted failure" in report.held and "nothing was applied" in report.held
    assert "\n" not in report.held
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.NOT_STARTED and report.held in db.state
    assert all(not r.removed for r in report.removals)


def test_the_cli_says_a_held_apply_in_one_line_and_exits_2(
    plan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = RecordingRunner(script=Fleet(changes=DELETE_OLD, fail=["incus export old"]))
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (tmp_path / "inventory.toml", plan))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = CliRunner().invoke(deploy_cli.deploy, ["db", "--yes"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("deploy stopped: homelab: `incus export old ")
    assert "--instance-only` failed: Error: scripted failure;" in last
    assert last.endswith("nothing was applied, so nothing was deleted")
    result = CliRunner().invoke(deploy_cli.deploy, ["db", "--yes", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["held"].startswith("homelab: `incus export old ")
    assert result.stderr.splitlines()[-1].startswith("tools deploy: homelab: `incus export old")


@pytest.mark.parametrize(
    ("show", "why"),
    [
        ("", "not JSON"),
        ('{"format_version": "2.0", "resource_changes": []}', "format_version '2.0'"),
        (
            json.dumps(
                {
                    "format_version": "1.2",
                    "resource_changes": [change("incus_instance.old", ["delete"])],
                }
            ),
            "incus_instance.old: the plan does not say its Incus name",
        ),
    ],
)
def test_a_plan_whose_deletions_cannot_be_read_is_not_applied(
    plan: dict[str, Any], tmp_path: Path, show: str, why: str
) -> None:
    report, calls, _ = deploy(plan, tmp_path, Fleet(show=show or " "))
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.NOT_STARTED
    assert why in db.state and "nothing was applied" in db.state


def test_a_failed_tofu_show_applies_nothing(plan: dict[str, Any], tmp_path: Path) -> None:
    report, calls, _ = deploy(plan, tmp_path, Fleet(fail=["tofu -chdir=infra/incus show"]))
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    db = next(m for m in report.machines if m.name == "db")
    assert "tofu show -json" in db.state and "scripted failure" in db.state


def test_deletions_are_read_from_every_replace_form_and_only_managed_objects() -> None:
    shown = {
        "format_version": "1.2",
        "resource_changes": [
            change("incus_instance.a", ["no-op"], name="a"),
            change("incus_instance.b", ["update"], name="b"),
            change("incus_instance.c", ["create", "delete"], name="c"),
            change("incus_network_acl.d", ["delete"], name="d"),
            {**change("incus_instance.e", ["delete"], name="e"), "mode": "data"},
            change("incus_storage_volume.f", ["delete"], name="f", pool="p", project="lab"),
        ],
    }
    found = incus.doomed(json.dumps(shown))
    assert [(d.address, d.replaced, d.snapshotted) for d in found] == [
        ("incus_instance.c", True, True),
        ("incus_network_acl.d", False, False),
        ("incus_storage_volume.f", False, True),
    ]
    assert incus.keep_commands(found[2], STAMP)[0][:3] == ["incus", "--project", "lab"]


# --- --build-only and status ----------------------------------------------------------------


def test_build_only_builds_the_images_and_touches_nothing(
    plan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_VAR_state_passphrase")  # no tofu: none needed
    runner = RecordingRunner(script=Fleet())
    report = engine.deploy(
        plan,
        runner=runner,
        flake=tmp_path,
        selected=("db",),
        options=DeployOptions(build_only=True),
        stamp=STAMP,
    )
    assert report.ok, report.summary()
    calls = [text(c) for c in runner.calls]
    assert all(c.startswith("nix ") for c in calls), calls
    images = [c.split("'")[3] for c in calls if "incusImages" in c]
    assert images == [f".#incusImages.{g}" for g in ("auth", "db", "proxy", "vpn")]
    db = next(m for m in report.machines if m.name == "db")
    assert db.outcome is Outcome.BUILT
    assert db.state == "built /nix/store/new-db; Incus image in images/db"
    assert list(tmp_path.iterdir()) == []  # no export written


def test_a_failed_image_build_stops_before_any_machine(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    report, calls, _ = deploy(plan, tmp_path, Fleet(fail=[".#incusImages.proxy"]))
    assert report.error == "build of the Incus image of proxy: Error: scripted failure"
    assert {m.outcome for m in report.machines} == {Outcome.NOT_STARTED}
    assert not any(c.startswith(("ssh", "tofu")) for c in calls)


def test_status_asks_the_hypervisors_incus_for_its_guests(
    plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = [
        {"name": "db", "status": "Running", "type": "container"},
        {"name": "auth", "status": "Stopped", "type": "container"},
        {"name": "vpn", "status": "Running", "type": "container"},
    ]

    def script(call: tuple[str, ...]) -> Result | None:
        cmd = call[-1]
        if cmd == "incus list --format json":
            return Result(call, 0, json.dumps(listed), "")
        if cmd == "incus exec db -- readlink -f /run/current-system":
            return Result(call, 0, "/nix/store/abc-nixos-system-db\n", "")
        if cmd == "incus exec vpn -- readlink -f /run/current-system":
            return Result(call, 1, "", "Error: Command not found")
        if cmd == "readlink /nix/var/nix/profiles/system":
            return Result(call, 0, "system-7-link\n", "")
        return None

    runner = RecordingRunner(script=script)
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), plan))
    result = CliRunner().invoke(deploy_cli.deploy, ["status", "db", "auth", "vpn", "proxy"])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["db"] == "/nix/store/abc-nixos-system-db (Running)"
    assert rows["auth"] == "not running (Stopped)"
    assert rows["vpn"] == "unknown: Error: Command not found (Running)"
    assert rows["proxy"] == "no instance (not created)"
    sent = [c[-1] for c in runner.calls]
    assert sent.count("incus list --format json") == 1  # once for all its guests
    assert not any("microvm" in c for c in sent)
    assert not any(c.startswith("incus exec auth") for c in sent)  # stopped: nothing to ask


def test_status_says_why_incus_could_not_answer(
    plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(call: tuple[str, ...]) -> Result | None:
        if call[-1] == "incus list --format json":
            return Result(call, 1, "", "Error: Failed to connect to local daemon\n")
        return None

    monkeypatch.setattr(deploy_cli, "runner", lambda: RecordingRunner(script=script))
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), plan))
    result = CliRunner().invoke(deploy_cli.deploy, ["status", "db", "--json"])
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["db"]["running"] == (
        "unknown: incus list --format json failed: Error: Failed to connect to local daemon"
    )


def test_without_consent_what_the_plan_would_destroy_is_reported_kept(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    report, calls, said = deploy(plan, tmp_path, Fleet(changes=DELETE_OLD), yes=False)
    assert not any(c.startswith(("incus snapshot", "incus export")) for c in calls)
    assert not any("tofu -chdir=infra/incus apply" in c for c in calls)
    assert [(r.guest, r.removed) for r in report.removals] == [
        ("old", False),
        ("old-state", False),
    ]
    assert report.removals[0].detail == (
        "incus_instance.old (deleted) in the plan, not applied: not confirmed"
    )
    assert report.held is None  # a plain "no": exit code 1, as for any plan not confirmed
    assert any("It deletes or replaces incus_instance.old (deleted)" in s for s in said)


def test_dry_run_status_prints_the_incus_query_and_connects_to_nothing(
    plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_cli, "runner", lambda: pytest.fail("a dry run runs nothing"))
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), plan))
    result = CliRunner().invoke(deploy_cli.deploy, ["--dry-run", "status", "db"])
    assert result.exit_code == 0, result.output
    asked = [line.split(" -- ")[-1] for line in result.stdout.splitlines() if " -- " in line]
    assert "'incus list --format json'" in asked
    assert not any("microvm" in a for a in asked)
