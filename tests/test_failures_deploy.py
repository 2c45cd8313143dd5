"""`tools deploy` against dead machines and bad input: a dry run never connects, a machine
that cannot be seen is "unknown" (never a guessed state), ssh's failures are reported as
what they are, status costs one timeout per dead host, and nothing but the library checks
the secrets and certificates. No traceback for any of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_deploy import STAMP, Machines, make_plan, target

from homestack.deploy import cli as deploy_cli
from homestack.deploy import engine
from homestack.deploy.health import Clock
from homestack.deploy.remote import ConnectionLost, classify
from homestack.deploy.report import Outcome
from homestack.deploy.status import status
from homestack.deploy.steps import DeployOptions, build_command
from homestack.process import RecordingRunner, Result, Runner

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventory.toml"
needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs Nix")

REFUSED = "ssh: connect to host relay port 22: Connection refused"
TIMED_OUT = "ssh: connect to host homelab port 22: Connection timed out"


def no_ssh() -> RecordingRunner:
    """Fails the test on any command that would reach a machine (ssh, nix copy)."""

    def refuse(args: tuple[str, ...]) -> Result:
        pytest.fail(f"a dry run ran a command: {list(args)}")

    return RecordingRunner(script=refuse)


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(deploy_cli.deploy, args)


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# --- a dry run never connects -----------------------------------------------------------------


@needs_nix
@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--json"], [], ["db"], ["--json"]],
    ids=["status", "status-json", "all", "db", "json"],
)
def test_dry_run_opens_no_connection(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    runner = no_ssh()
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    result = invoke(["--dry-run", "--inventory", str(INVENTORY), *args])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert runner.calls == []
    # it still shows what it would ask
    assert "ssh -o BatchMode=yes" in result.output


# --- machines that cannot be reached ----------------------------------------------------------


def fleet_where(dead: dict[str, str]) -> RecordingRunner:
    """The scripted fleet of test_deploy, with ssh to each target in ``dead`` failing as
    ssh does (exit 255, its message on stderr)."""
    healthy = Machines()

    def script(call: tuple[str, ...]) -> Result | None:
        where = target(call)
        if where in dead:
            return Result(call, 255, "", dead[where])
        if call[:1] == ("nix",) and "copy" in call and any(t in " ".join(call) for t in dead):
            return Result(call, 1, "", f"error: cannot connect: {next(iter(dead.values()))}")
        return healthy(call)

    return RecordingRunner(script=script)


def deploy(runner: Runner, selected: Sequence[str] = (), **options: Any) -> engine.DeployReport:
    return engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        selected=selected,
        options=DeployOptions(health_timeout=0, poll_interval=0, **options),
        validate=lambda: [],
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )


def test_an_unreachable_hypervisor_is_reported_per_machine() -> None:
    runner = fleet_where({"root@homelab": TIMED_OUT})
    report = deploy(runner, yes=True)  # stale-guest detection must not crash on it
    by_name = {m.name: m for m in report.machines}
    assert by_name["cloud-relay"].outcome is Outcome.SWITCHED
    homelab = by_name["homelab"]
    assert homelab.outcome is Outcome.UNKNOWN
    assert homelab.state.startswith("unknown: not switched, and what it runs could not be seen")
    assert homelab.error == f"root@homelab: timed out connecting ({TIMED_OUT})"
    assert {by_name[g].outcome for g in ("db", "auth", "vpn", "proxy")} == {Outcome.NOT_STARTED}
    # one attempt on the dead host (looking for stale guests), not one more per step
    assert len([c for c in runner.calls if target(c) == "root@homelab"]) == 1
    assert report.removals == ()
    assert "deploy failed on homelab, db, auth, vpn, proxy" in report.summary()


def test_an_unreachable_relay_is_unknown_not_still_on_its_previous_configuration() -> None:
    report = deploy(fleet_where({"root@relay": REFUSED}), ["cloud-relay"])
    relay = report.machines[0]
    assert relay.outcome is Outcome.UNKNOWN
    assert "previous configuration" not in relay.state and "still runs" not in relay.state
    assert relay.error is not None and "connection refused" in relay.error


def test_the_cli_prints_a_report_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = fleet_where({"root@homelab": TIMED_OUT, "root@relay": REFUSED})
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    result = invoke(["--yes", "--health-timeout", "0"])
    no_traceback(result)
    assert result.exit_code == 1
    table = result.stderr.splitlines()[-7:]
    assert [line.split()[:2] for line in table[:2]] == [
        ["cloud-relay", "unknown"],
        ["homelab", "unknown"],
    ]
    assert all(line.split()[1] == "not-started" for line in table[2:6])
    assert table[-1] == "deploy failed on cloud-relay, homelab, db, auth, vpn, proxy"
    data = invoke(["--json", "--health-timeout", "0"])
    assert [m["outcome"] for m in json.loads(data.stdout)["machines"]][:2] == ["unknown"] * 2


@pytest.mark.parametrize(
    ("stderr", "reason", "before"),
    [
        (
            "ssh: Could not resolve hostname nohost: Name or service not known",
            "cannot resolve the host name",
            True,
        ),
        (
            "ssh: Could not resolve hostname nohost: Temporary failure in name resolution",
            "cannot resolve the host name",
            True,
        ),
        (REFUSED, "connection refused (is sshd running there?)", True),
        (TIMED_OUT, "timed out connecting", True),
        ("Connection to 203.0.113.10 port 22 timed out", "timed out connecting", True),
        (
            "ssh: connect to host 10.0.0.9 port 22: No route to host",
            "no route to the host",
            True,
        ),
        (
            "root@homelab: Permission denied (publickey).",
            "authentication failed (is your SSH key on the machine?)",
            True,
        ),
        (
            "Host key verification failed.",
            "host key verification failed (not the host key known for it)",
            True,
        ),
        ("Connection closed by 192.0.2.7 port 22", "lost the connection", False),
        ("client_loop: send disconnect: Broken pipe", "lost the connection", False),
        (
            "Connection to 127.0.0.1 closed by remote host.",
            "lost the connection",
            False,
        ),
        ("Timeout, server homelab not responding.", "lost the connection", False),
        (
            "command-line: line 0: Bad configuration option: foo",
            "ssh refused its options (see -o/--ssh-option)",
            True,
        ),
        ("", "the connection failed", False),
    ],
)
def test_ssh_failures_are_reported_as_what_they_are(stderr: str, reason: str, before: bool) -> None:
    assert classify(stderr) == (reason, before)
    message = str(ConnectionLost("root@homelab", "readlink /x", stderr))
    assert message.startswith(f"root@homelab: {reason}")
    # "during: …" only when the command may have run
    assert ("during: readlink /x" in message) is not before


def test_status_of_a_dead_host_costs_one_timeout_and_runs_hosts_in_parallel() -> None:
    delay = 0.5
    lock = threading.Lock()
    homelab_calls: list[tuple[str, ...]] = []

    def script(call: tuple[str, ...]) -> Result | None:
        time.sleep(delay)  # every ssh call takes this long; the black hole then fails
        if target(call) == "root@homelab":
            with lock:
                homelab_calls.append(call)
            return Result(call, 255, "", TIMED_OUT)
        if call[-1] == "readlink /nix/var/nix/profiles/system":
            return Result(call, 0, "system-7-link\n", "")
        return None

    start = time.monotonic()
    rows = status(make_plan(), RecordingRunner(script=script), deploy_cli.Ssh())
    elapsed = time.monotonic() - start
    # the relay (2 calls) and the hypervisor (1 call, then given up) side by side
    assert elapsed < 4 * delay, elapsed  # one after another it would take 7 * delay
    assert len(homelab_calls) == 1
    by_name = {r.name: r for r in rows}
    assert by_name["cloud-relay"].reachable and by_name["cloud-relay"].running == "generation 7"
    for name in ("homelab", "db", "auth", "vpn", "proxy"):
        assert not by_name[name].reachable
        assert by_name[name].running == f"unknown: root@homelab: timed out connecting ({TIMED_OUT})"
    assert [r.name for r in rows] == [
        "cloud-relay",
        "homelab",
        "db",
        "auth",
        "vpn",
        "proxy",
    ]


# --- the engine calls the library, with flags the installed Nix knows --------------------------


def test_the_engine_never_runs_a_tools_from_path() -> None:
    runner = fleet_where({})
    checked: list[bool] = []

    def validate() -> list[str]:
        checked.append(True)
        return []

    engine.deploy(
        make_plan(),
        runner=runner,
        flake=Path("/flake"),
        options=DeployOptions(health_timeout=0, poll_interval=0),
        validate=validate,
        clock=Clock(sleep=lambda _: None),
        stamp=STAMP,
    )
    assert checked == [True]
    assert not any(call[0] == "tools" for call in runner.calls)


@pytest.mark.skipif(shutil.which("nix") is None, reason="needs nix")
def test_every_nix_build_flag_is_known_to_the_installed_nix() -> None:
    helped = subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    flags = [a for a in build_command(".#x")[3:] if a.startswith("--")]
    assert flags == ["--no-link", "--json"]
    for flag in flags:
        assert f"· {flag}" in helped.stdout or f"{flag}\n" in helped.stdout, flag


@pytest.mark.parametrize("stdout", ["", "not json\n", "[]\n", '[{"outputs": {}}]\n'])
def test_a_build_that_prints_no_path_stops_before_any_machine(stdout: str) -> None:
    def script(call: tuple[str, ...]) -> Result | None:
        if "build" in call:
            return Result(call, 0, stdout, "")
        return None

    runner = RecordingRunner(script=script)
    report = deploy(runner)
    assert report.error == "build of cloud-relay failed: nix build printed no store path"
    assert {m.outcome for m in report.machines} == {Outcome.NOT_STARTED}
    assert not any(call[0] == "ssh" for call in runner.calls)


@needs_nix
def test_validation_reports_a_tampered_secret_through_the_library(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_secrets_helpers import build_repo, copy_keys

    from homestack.plan import load_plan
    from homestack.secrets.sops import Sops

    keys = copy_keys(tmp_path / "keys")
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(keys / "admin_alice.agekey"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `tools` anywhere on it
    root = tmp_path / "repo"
    build_repo(root, keys, Sops())  # sops from beside this Python: PATH has none
    vpn = root / "secrets/vpn.yaml"
    text = vpn.read_text()
    at = text.index("turn-password: ENC[AES256_GCM,data:") + len("turn-password: ENC[AES256_GCM,")
    at += len("data:")
    vpn.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    problems = engine.validate(load_plan(root / "inventory.toml"), root)
    assert any(p.startswith("secrets/vpn.yaml: does not verify:") for p in problems), problems


# --- command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--health-timeout", "-1"], ["--watchdog", "0"], ["nope"], ["status", "nope"]],
)
def test_bad_arguments_are_one_line_and_touch_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    from test_secrets_helpers import tools

    runner = no_ssh()
    monkeypatch.setattr(deploy_cli, "runner", lambda: runner)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (Path("/flake/inventory.toml"), make_plan()))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    code, _, err = tools(capsys, "deploy", *args)
    assert "Traceback" not in err
    assert code == 2, err
    assert err.splitlines()[-1].startswith(("error: ", "Error: "))
    assert runner.calls == []


def test_tools_test_names_a_flake_directory_that_is_not_there(tmp_path: Path) -> None:
    from homestack import vmtest

    result = CliRunner().invoke(vmtest.test, ["--flake", str(tmp_path / "gone")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Directory '{tmp_path / 'gone'}' does not exist" in result.output


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
@pytest.mark.parametrize(
    ("destination", "options", "reason"),
    [
        ("root@host.invalid", (), "cannot resolve the host name"),
        ("root@127.0.0.1", ("-p", "9"), "connection refused (is sshd running there?)"),
    ],
    ids=["unresolvable", "refused"],
)
def test_real_ssh_failures_are_named(
    destination: str, options: tuple[str, ...], reason: str
) -> None:
    from homestack.deploy.remote import DEFAULT_OPTIONS, Remote, Ssh
    from homestack.process import default_runner

    ssh = Ssh(options=(*DEFAULT_OPTIONS, *options))
    with pytest.raises(ConnectionLost) as lost:
        Remote(default_runner, ssh, destination).run(["true"])
    assert lost.value.reason == reason
    assert lost.value.before_command
    assert str(lost.value).startswith(f"{destination}: {reason} (ssh: ")
