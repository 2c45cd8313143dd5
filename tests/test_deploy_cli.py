"""`tools deploy` on the command line: the dry run of the example inventory, the JSON
report, exit codes, and `tools deploy status`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE
from test_deploy import Machines, Rule, make_plan

from homestack.deploy import cli as deploy_cli
from homestack.process import RecordingRunner, Result

ROOT = Path(__file__).resolve().parent.parent


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(deploy_cli.deploy, args)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> RecordingRunner:
    runner = RecordingRunner(script=Machines([Rule("*/dev/tcp/192.168.100.2/443", 1)]))
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    # this plan is only the deploy's part: its secrets and certificates are not checked here
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    return runner


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_dry_run_of_the_example_is_ordered_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The frozen example has no secrets or certificates beside it (tests/example/README.md):
    # validating those is tested in test_failures_deploy.py; here the order is.
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = invoke(["--dry-run", "--inventory", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    # validation is the library, not a command: a `tools` on PATH is never run
    assert "# deploy: validate: secrets and certificates" in lines
    assert not any(c.startswith("tools ") for c in commands)
    builds = [c for c in commands if " build " in c]
    assert [b.split("nixosConfigurations.")[1].split(".")[0] for b in builds] == [
        "cloud-relay",
        "homelab",
        "db",
        "proxy",
        "auth",
        "vpn",
    ]

    def first(needle: str) -> int:
        return next(i for i, line in enumerate(lines) if needle in line)

    # The order of the catalogue's needs: vpn needs auth (through proxy) and db.
    waves = [
        first("wave 1 of 4: cloud-relay, homelab (in parallel)"),
        first("wave 2 of 4: db, proxy (in parallel)"),
        first("wave 3 of 4: auth"),
        first("wave 4 of 4: vpn"),
    ]
    assert waves == sorted(waves)
    assert first("zfs snapshot -r tank/microvms/auth@") < first(
        "root@homelab.lan -- 'nix-env -p /nix/var/nix/profiles/system --set @homelab-toplevel@'"
    )
    # every guest answers before the hypervisor's generation becomes the boot default;
    # then each guest is checked again in its wave
    assert first("http://192.168.100.10:1411/.well-known/openid-configuration") < first(
        "root@homelab.lan -- 'nix-env -p /nix/var/nix/profiles/system --set @homelab-toplevel@'"
    )
    assert (
        first("readlink /var/lib/microvms/db/current")
        < waves[2]
        < first("readlink /var/lib/microvms/auth/current")
        < waves[3]
    )
    assert "ln -sfn" not in result.output
    assert lines[-1] == "# dry run: 6 machines; nothing was run or changed"


def test_json_report_and_exit_code(fleet: RecordingRunner) -> None:
    result = invoke(["--json", "--health-timeout", "0"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_name = {m["name"]: m for m in report["machines"]}
    assert by_name["cloud-relay"]["outcome"] == "switched"
    # proxy's probe fails: its hypervisor's generation, which carries it, goes back
    homelab = by_name["homelab"]
    assert homelab["outcome"] == "rolled-back"
    assert homelab["previous"] == "/nix/store/old-homelab"
    assert homelab["error"].startswith("health check failed: caddy tcp://192.168.100.2:443")
    # what it runs is read first, so an unreachable machine is never guessed about
    assert [s["name"] for s in homelab["steps"]] == [
        "record what runs",
        "snapshot",
        "copy",
        "arm watchdog",
        "switch",
        "health",
        "rollback",
    ]
    assert by_name["proxy"]["outcome"] == "not-started"


def test_progress_is_shown_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_cli, "runner", lambda: RecordingRunner(script=Machines()))
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = invoke(["db"])
    assert result.exit_code == 0, result.output
    assert "[homelab] snapshot tank/microvms/auth, tank/microvms/db" in result.stderr
    assert "[db] switched, healthy" in result.stderr
    assert result.stderr.splitlines()[-1] == "deploy succeeded"


def test_guest_removal_is_not_confirmed_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = RecordingRunner(script=Machines(on_hypervisor="auth\ndb\ngone\nproxy\nvpn\n"))
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = invoke(["homelab"])
    assert result.exit_code == 0
    assert "guest gone is on homelab but no longer in the inventory" in result.stderr
    assert "gone" in result.stderr.splitlines()[-2] and "kept" in result.stderr.splitlines()[-2]
    result = invoke(["homelab", "--yes"])
    assert any("microvm@gone.service" in c[-1] for c in runner.calls)


def test_status_reads_generations_and_the_gitops_state(monkeypatch: pytest.MonkeyPatch) -> None:
    gitops = {
        "state": "rolled-back",
        "rev": "0123456789abcdef",
        "time": "2026-01-01T04:40:00Z",
        "message": "health check failed: system degraded",
    }

    def script(call: tuple[str, ...]) -> Result | None:
        cmd = call[-1]
        if "root@relay" in call:
            return Result(call, 255, "", "ssh: connect to host relay: No route to host")
        if cmd == "readlink /nix/var/nix/profiles/system":
            return Result(call, 0, "system-42-link\n", "")
        if cmd.startswith("cat /var/lib/homestack/gitops/status.json"):
            return Result(call, 0, json.dumps(gitops), "")
        if cmd.startswith("readlink /var/lib/microvms/"):
            return Result(call, 0, "/nix/store/abc-microvm-cloud-hypervisor-db\n", "")
        if cmd.startswith("systemctl is-active"):
            return Result(call, 0, "active\n", "")
        return None

    monkeypatch.setattr(deploy_cli, "runner", lambda: RecordingRunner(script=script))
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    result = invoke(["status", "homelab", "db", "cloud-relay"])
    assert result.exit_code == 1  # the relay is unreachable
    lines = result.stdout.splitlines()
    # ssh's failure as what it is, not "lost the connection"
    assert lines[0] == (
        "cloud-relay  unknown: root@relay: no route to the host "
        "(ssh: connect to host relay: No route to host)"
    )
    assert lines[1] == (
        "homelab      generation 42; gitops: rolled-back at 2026-01-01T04:40:00Z "
        "rev 0123456789ab (health check failed: system degraded)"
    )
    assert lines[2] == "db           /nix/store/abc-microvm-cloud-hypervisor-db (active)"
    data = json.loads(invoke(["status", "homelab", "--json"]).stdout)
    assert data[0]["gitops"]["state"] == "rolled-back"


def test_an_invalid_inventory_deploys_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from homestack.cli import main

    bad = tmp_path / "inventory.toml"
    bad.write_text(
        (EXAMPLE).read_text().replace('address = "192.168.100.20"', 'address = "192.168.101.5"')
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "--dry-run", "--inventory", str(bad)])
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    assert "guests.db.address" in out.err
    assert "nothing was deployed" in out.err
    assert "ssh" not in out.out


def test_dry_run_json_is_json_alone_on_stdout(fleet: RecordingRunner) -> None:
    result = invoke(["--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the "# …" comments went to stderr
    assert report["dryRun"] is True
    assert result.stderr.startswith("# tools deploy --dry-run")


def test_status_shows_progress_on_stderr(fleet: RecordingRunner) -> None:
    result = invoke(["status", "homelab", "--json"])
    json.loads(result.stdout)
    assert "[homelab] asking over ssh" in result.stderr


def test_inventory_short_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from homestack.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "--dry-run", "-i", str(tmp_path / "missing.toml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/missing.toml: no such inventory file\n"


def test_local_deploys_this_host_and_its_guests_without_ssh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = RecordingRunner(script=Machines())
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = invoke(["--local", "homelab"])
    assert result.exit_code == 0, result.output
    assert not any(c[0] in ("ssh", "nix") and "copy" in c for c in runner.calls)
    assert not any(c[0] == "ssh" for c in runner.calls)
    assert ("systemctl", "is-active", "microvm@proxy.service") in runner.calls
    for name in ("homelab", "db", "auth", "vpn", "proxy"):
        assert f"\n{name} " in "\n" + result.stderr, result.stderr
    assert "cloud-relay" not in result.stderr


def test_local_needs_the_one_host_it_runs_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from homestack.cli import main

    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "--local", "db"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: /flake/inventory.toml: tools deploy --local: name the one host this is "
        "(one of cloud-relay, homelab)\n"
    )
