"""The deployed record on the hosts (homestack.deploy.record): written on every host after a
complete deploy, read back before the guards by any checkout, the newest one winning; a
damaged or unreachable one said in one line; `tools deploy --fetch-record`.

The fleet is the scripted one of test_deploy.py, with each host's
/var/lib/homestack/deployed.json kept in memory."""

from __future__ import annotations

import copy
import json
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from test_deploy import STAMP, Machines, Rule, make_plan, target, text
from test_guards import with_secrets

from homestack import guards
from homestack.deploy import cli as deploy_cli
from homestack.deploy import engine, record
from homestack.deploy.remote import Ssh
from homestack.errors import UserError
from homestack.plandiff import DeployedRecord, read_deployed, resolve_against
from homestack.process import Call, Result, Runner

PATH = record.HOST_RECORD
WRITE = shlex.join(record.write_command(STAMP))
READ = f"cat {PATH}"
TEMP = f"/var/lib/homestack/.deployed.json.{STAMP}"  # where the write puts it first
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
END = datetime(2026, 11, 29, 10, 20, tzinfo=UTC)
RUNNING_PROBE = "timeout 300 systemctl is-system-running"
REFUSED = "ssh: connect to host relay port 22: Connection refused"


@dataclass
class Fleet(Runner):
    """The scripted machines, and the record file each host keeps (by ssh target)."""

    machines: Machines = field(default_factory=Machines)
    files: dict[str, str] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)  # ssh fails there (exit 255)
    read_only: set[str] = field(default_factory=set)  # the write fails there
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def execute(self, call: Call) -> Result:
        self.calls.append(call.args)
        where, cmd = target(call.args), text(call.args)
        if where in self.unreachable:
            return Result(call.args, 255, "", REFUSED + "\n")
        if cmd == READ:
            if where not in self.files:
                return Result(call.args, 1, "", f"cat: {PATH}: No such file or directory\n")
            return Result(call.args, 0, self.files[where], "")
        if cmd == WRITE:
            if where in self.read_only:
                err = f"sh: 1: cannot create {TEMP}: Read-only file system\n"
                return Result(call.args, 1, "", err)
            assert isinstance(call.input, str)
            self.files[str(where)] = call.input
            return Result(call.args, 0, "", "")
        answer = self.machines(call.args)
        return answer if answer is not None else Result(call.args, 0, "", "")

    def ran(self, command: str) -> list[str]:
        """The ssh targets ``command`` ran on, in order."""
        return [str(target(c)) for c in self.calls if text(c) == command]


@pytest.fixture(autouse=True)
def approval_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMESTACK_APPROVAL_KEY", str(tmp_path / "approval.key"))
    monkeypatch.setenv("HOMESTACK_AUDIT_LOG", str(tmp_path / "audit.log"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    inventory = tmp_path / "repo" / "inventory.toml"
    inventory.parent.mkdir()
    inventory.write_text("# the deploy reads the plan below, not this file\n")
    return inventory


def use(monkeypatch: pytest.MonkeyPatch, inventory: Path, plan: dict[str, Any]) -> Fleet:
    fleet = Fleet()
    monkeypatch.setattr(engine, "timestamp", lambda: STAMP)
    monkeypatch.setattr(deploy_cli, "runner", lambda: fleet)
    monkeypatch.setattr(deploy_cli, "load", lambda _: (inventory, plan))
    monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])
    return fleet


def deploy(*args: str) -> Any:
    return CliRunner().invoke(deploy_cli.deploy, ["--health-timeout", "0", *args])


def stored(plan: dict[str, Any], when: str | None, commit: str | None = "c0ffee") -> str:
    """A record as a deploy wrote it at ``when``; None: a record from before times were kept."""
    data = json.loads(DeployedRecord(plan, None, commit, "admin@laptop").dumps())
    if when is None:
        del data["when"], data["commit"]
    else:
        data["when"] = when
    return json.dumps(data)


def guard_breaking(plan: dict[str, Any]) -> dict[str, Any]:
    """``plan`` with proxy newly able to decrypt a secret: breaks new-secret-access."""
    new = copy.deepcopy(plan)
    new["secrets"]["secrets/shared/pg-pocketid.yaml"]["machines"].append("proxy")
    return new


# --- writing ---------------------------------------------------------------------------------


def test_a_complete_deploy_writes_the_record_on_every_host_and_here(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    clock = iter([START, END])
    monkeypatch.setattr(guards, "_now", lambda: next(clock))
    result = deploy()
    assert result.exit_code == 0, result.output
    # hosts only: the guests' commands run on their hypervisor, which keeps one record
    assert sorted(fleet.ran(WRITE)) == ["root@homelab", "root@relay"]
    here = read_deployed(repo)
    assert here is not None and here.plan == plan
    assert here.when == END  # when it finished: the last of two overlapping deploys wins
    for where in ("root@homelab", "root@relay"):
        there = DeployedRecord.parse(fleet.files[where], where)
        assert (there.plan, there.when, there.who) == (plan, here.when, here.who)
    # after every machine switched, never before
    last_switch = max(i for i, c in enumerate(fleet.calls) if "switch-to-configuration" in text(c))
    assert min(i for i, c in enumerate(fleet.calls) if text(c) == WRITE) > last_switch
    assert "[cloud-relay] record the deployed plan in /var/lib/homestack/deployed.json" in (
        result.output
    )
    assert result.output.rstrip().endswith("deploy succeeded")


def test_the_write_is_atomic_root_owned_and_world_readable(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the command chowns to root, as it runs on a host")
    path = tmp_path / "state" / "deployed.json"
    command = record.write_command(STAMP, str(path))
    assert command[:2] == ["sh", "-c"]
    # As sshd runs it: the login shell gets the one string ssh sends (Ssh.argv's last word).
    sent = Ssh().argv("root@host", command)[-1]
    for content in ('{"plan": {"first": 1}}', '{"plan": {"second": 2}}'):
        subprocess.run(["sh", "-c", sent], input=content, text=True, check=True)
        assert path.read_text() == content
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_uid == 0
    assert [p.name for p in path.parent.iterdir()] == ["deployed.json"]  # no temp file left behind
    # a write that fails half-way leaves the old record and no temp file
    failing = ["sh", "-c", command[2].replace("chown root:root", "false")]
    assert failing != command
    assert subprocess.run(failing, input="{}", text=True, check=False).returncode != 0
    assert path.read_text() == '{"plan": {"second": 2}}'
    assert [p.name for p in path.parent.iterdir()] == ["deployed.json"]


def test_a_failed_or_partial_deploy_writes_no_record(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    fleet.machines.rules.append(Rule(RUNNING_PROBE, 1, where="root@relay"))
    failed = deploy()
    assert failed.exit_code == 1, failed.output
    assert "deploy failed on cloud-relay" in failed.output
    assert fleet.ran(WRITE) == [] and fleet.files == {}
    assert read_deployed(repo) is None

    fleet = use(monkeypatch, repo, plan)
    partial = deploy("db")
    assert partial.exit_code == 0, partial.output
    assert fleet.ran(WRITE) == [] and read_deployed(repo) is None


def test_a_host_that_cannot_keep_the_record_is_said_and_the_deploy_still_succeeds(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    fleet.read_only.add("root@relay")
    result = deploy()
    assert result.exit_code == 0, result.output
    assert (
        "cloud-relay  no record    /var/lib/homestack/deployed.json not written: sh: 1: cannot "
        f"create {TEMP}: Read-only file system"
    ) in result.output
    assert "deploy succeeded; the deployed record is not on cloud-relay" in result.output
    assert list(fleet.files) == ["root@homelab"]
    assert read_deployed(repo) is not None  # this checkout keeps it all the same

    fleet = use(monkeypatch, repo, plan)
    fleet.read_only.add("root@homelab")
    report = json.loads(deploy("--json").stdout)
    assert report["ok"] is True
    assert [(r["host"], r["ok"]) for r in report["recorded"]] == [
        ("cloud-relay", True),
        ("homelab", False),
    ]


# --- reading before the guards ---------------------------------------------------------------


def test_a_fresh_checkout_is_checked_against_the_hosts_record(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = with_secrets(make_plan())
    new = guard_breaking(deployed)
    fleet = use(monkeypatch, repo, new)
    fleet.files["root@homelab"] = stored(deployed, "2026-11-20T10:00:00+00:00")
    refused = deploy()
    assert isinstance(refused.exception, UserError), refused.output
    assert "deploy refused: 1 change(s) break 1 guard" in str(refused.exception)
    assert "[guards] read the deployed record on cloud-relay, homelab" in refused.output
    assert (
        "[guards] using homelab:/var/lib/homestack/deployed.json (2026-11-20T10:00:00+00:00, "
        "commit c0ffee, by admin@laptop): this checkout has none; kept in "
    ) in refused.output
    assert fleet.ran(WRITE) == []  # refused: nothing was written anywhere
    here = read_deployed(repo)  # the checkout now caches what the hosts keep
    assert here is not None and here.plan == deployed and here.commit == "c0ffee"


def test_the_newest_record_wins_whichever_side_holds_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = with_secrets(make_plan())
    newer = guard_breaking(older)  # another admin deployed this, approved, from elsewhere
    (repo.parent / ".homestack").mkdir()
    (repo.parent / ".homestack" / "deployed.json").write_text(
        stored(older, "2026-11-20T10:00:00+00:00")
    )
    fleet = use(monkeypatch, repo, newer)
    fleet.files["root@relay"] = stored(older, None)  # a record from before times were kept
    fleet.files["root@homelab"] = stored(newer, "2026-11-21T10:00:00Z", commit="beef")
    result = deploy()
    assert result.exit_code == 0, result.output  # compared with the newer one: no change
    assert "[guards] no changes between deployed" in result.output
    assert "using homelab:/var/lib/homestack/deployed.json" in result.output
    assert "newer than this checkout's" in result.output


def test_this_checkouts_record_wins_when_it_is_the_newest(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = with_secrets(make_plan())
    newer = guard_breaking(older)
    (repo.parent / ".homestack").mkdir()
    (repo.parent / ".homestack" / "deployed.json").write_text(
        stored(newer, "2026-11-25T10:00:00+00:00")
    )
    fleet = use(monkeypatch, repo, newer)
    fleet.files["root@homelab"] = stored(older, "2026-11-01T00:00:00+00:00")
    result = deploy()
    assert result.exit_code == 0, result.output  # against `older`, the guard would refuse
    assert "[guards] no changes between deployed" in result.output
    assert "using " not in result.output


def test_a_damaged_record_on_a_host_is_one_line_and_ignored(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = with_secrets(make_plan())
    damaged = {
        "not json": "not JSON",
        "[1, 2]": "not a JSON object",
        '{"plan": []}': "plan: missing",
        '{"plan": {}, "when": "yesterday"}': "when: 'yesterday' is not an ISO 8601 time",
        '{"plan": {}, "commit": 7}': "commit: must be a string",
        "": "not JSON",
    }
    for content, said in damaged.items():
        (repo.parent / ".homestack" / "deployed.json").unlink(missing_ok=True)
        fleet = use(monkeypatch, repo, guard_breaking(deployed))
        fleet.files["root@relay"] = content
        fleet.files["root@homelab"] = stored(deployed, "2026-11-20T10:00:00+00:00")
        result = deploy()
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if "cloud-relay:" in line]
        assert len(lines) == 1, result.output
        assert lines[0].startswith(f"[cloud-relay] cloud-relay:{PATH}: "), lines
        assert said in lines[0] and lines[0].endswith("; ignored"), lines
        # the good record on the other host still checks this deploy
        assert isinstance(result.exception, UserError), result.output
        assert "deploy refused" in str(result.exception)


def test_an_unreachable_host_is_one_line_and_does_not_stop_the_deploy(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    fleet.files["root@homelab"] = stored(plan, "2026-11-20T10:00:00+00:00")
    fleet.unreachable.add("root@relay")
    result = deploy("homelab")
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "not read" in line]
    assert said == [
        f"[cloud-relay] cloud-relay:{PATH}: not read: root@relay: connection refused (is sshd "
        "running there?) (ssh: connect to host relay port 22: Connection refused)"
    ]
    assert "[guards] no changes between deployed" in result.output
    assert "deploy succeeded" in result.output


# --- dry run and build: local only -----------------------------------------------------------


@pytest.mark.parametrize("flag", ["--dry-run", "--build-only"])
def test_a_dry_run_or_a_build_reads_only_this_checkout(
    repo: Path, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    fleet.files["root@homelab"] = stored(plan, "2026-11-20T10:00:00+00:00")
    result = deploy(flag)
    assert result.exit_code == 0, result.output
    assert [c for c in fleet.calls if c[0] == "ssh"] == []  # not one connection
    assert "compared with this checkout's record only" in result.output
    assert "`tools deploy --fetch-record` fetches the hosts' record" in result.output
    assert read_deployed(repo) is None  # nothing fetched, nothing recorded
    if flag == "--dry-run":  # it shows the write a deploy would make, and no read
        assert f'root@relay -- "{WRITE}"' in result.output
        assert READ not in result.output


# --- tools deploy --fetch-record -------------------------------------------------------------


def test_fetch_record_keeps_the_newest_host_record_here(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = use(monkeypatch, repo, plan)
    fleet.files["root@relay"] = stored(plan, "2026-11-22T10:00:00+00:00", commit="a" * 40)
    fleet.files["root@homelab"] = "{ damaged"
    result = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record"])
    assert result.exit_code == 0, result.output
    assert (
        f"deployed record: cloud-relay:{PATH} (2026-11-22T10:00:00+00:00, commit aaaaaaaaaaaa, "
        "by admin@laptop)"
    ) in result.output
    assert f"[homelab] homelab:{PATH}: not a deployed record (not JSON" in result.output
    path = repo.parent / ".homestack" / "deployed.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["commit"] == "a" * 40
    assert (repo.parent / ".homestack" / ".gitignore").read_text() == "*\n"
    assert fleet.ran(WRITE) == [] and sorted(fleet.ran(READ)) == ["root@homelab", "root@relay"]
    assert not any("switch-to-configuration" in text(c) for c in fleet.calls)
    as_json = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record", "--json"])
    assert json.loads(as_json.stdout) == {  # the same time here now: this checkout's wins
        "from": str(path),
        "when": "2026-11-22T10:00:00+00:00",
        "commit": "a" * 40,
        "who": "admin@laptop",
    }
    # `tools plan diff --against deployed` now has its record, read locally
    assert resolve_against(repo, "deployed")[0] == plan


def test_fetch_record_with_no_record_anywhere_or_a_wrong_host(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = use(monkeypatch, repo, with_secrets(make_plan()))
    fleet.unreachable.add("root@relay")
    result = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record"])
    assert result.exit_code == 1, result.output
    assert f"cloud-relay:{PATH}: not read: root@relay: connection refused" in result.output
    assert "no deployed record in this checkout or on the hosts that answered" in result.output
    assert read_deployed(repo) is None
    as_json = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout) is None

    wrong = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record", "db"])
    assert isinstance(wrong.exception, UserError)
    assert "--fetch-record: 'db' is not a host (hosts: cloud-relay, homelab)" in str(
        wrong.exception
    )

    fleet = use(monkeypatch, repo, with_secrets(make_plan()))
    dry = CliRunner().invoke(deploy_cli.deploy, ["--fetch-record", "--dry-run", "homelab"])
    assert dry.exit_code == 0 and fleet.calls == []
    assert "not a deployed record" not in dry.output  # it asked nothing, so read nothing
    assert f"root@homelab -- {shlex.quote(READ)}" in dry.output and "root@relay" not in dry.output


def test_plan_diff_against_deployed_names_the_fetch(repo: Path) -> None:
    with pytest.raises(UserError, match=r"deployed.json: no deployed record in this checkout; "):
        resolve_against(repo, "deployed")
    with pytest.raises(UserError, match=r"`tools deploy --fetch-record` fetches the newest"):
        resolve_against(repo, "deployed")


# --- the record format -----------------------------------------------------------------------

plans = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))


@given(plans, st.none() | times, st.none() | st.text(min_size=1, max_size=40))
def test_a_record_reads_back_what_was_written(
    plan: dict[str, Any], when: datetime | None, commit: str | None
) -> None:
    written = DeployedRecord(plan, when, commit, "root@vm", "x")
    back = DeployedRecord.parse(written.dumps().decode(), "x")
    assert back == written


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
record_like = st.fixed_dictionaries(
    {}, optional={"plan": json_values, "when": json_values, "commit": json_values}
)


@given(st.text(max_size=40) | json_values.map(json.dumps) | record_like.map(json.dumps))
def test_whatever_a_host_keeps_reads_as_a_record_or_one_line(content: str) -> None:
    try:
        found = DeployedRecord.parse(content, "homelab:/var/lib/homestack/deployed.json")
    except UserError as exc:
        assert str(exc).startswith("homelab:/var/lib/homestack/deployed.json: ")
        assert "\n" not in str(exc)
    else:
        assert isinstance(found.plan, dict)


@given(st.lists(st.none() | times, min_size=1, max_size=6))
def test_the_newest_is_the_latest_time_and_an_untimed_one_only_wins_alone(
    whens: list[datetime | None],
) -> None:
    found = [DeployedRecord({"n": i}, when, where=str(i)) for i, when in enumerate(whens)]
    best = record.newest(None, found)
    assert best is found[0] or (best is not None and best.when is not None)
    timed = [w for w in whens if w is not None]
    if timed:
        assert best is not None and best.when == max(timed)
        assert best is found[whens.index(max(timed))]  # the first of equals


def test_a_damaged_record_in_this_checkout_names_the_way_out(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo.parent / ".homestack").mkdir()
    (repo.parent / ".homestack" / "deployed.json").write_text('{"plan": "x"}')
    use(monkeypatch, repo, with_secrets(make_plan()))
    result = deploy()
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception) == (
        f"{repo.parent / '.homestack' / 'deployed.json'}: plan: missing; delete it and "
        "`tools deploy --fetch-record` fetches the hosts' record"
    )


def test_an_old_record_without_time_or_revision_still_loads(repo: Path) -> None:
    plan = with_secrets(make_plan())
    (repo.parent / ".homestack").mkdir()
    (repo.parent / ".homestack" / "deployed.json").write_text(json.dumps({"plan": plan}))
    old = read_deployed(repo)
    assert old is not None and (old.plan, old.when, old.commit) == (plan, None, None)
    assert old.describe() == "time not recorded, commit not recorded"
    assert guards.evaluate(repo, plan, None).diff is not None
