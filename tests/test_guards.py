"""homestack.guards: the built-in and policy.toml guards, and `tools deploy` refusing a
guard-breaking change unless approved for that exact diff (on a scripted fleet)."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_deploy import Machines, make_plan, text

from homestack import guards
from homestack.deploy import cli as deploy_cli
from homestack.errors import UserError
from homestack.plandiff import compare
from homestack.process import RecordingRunner

READ = "cat /var/lib/homestack/deployed.json"  # homestack.deploy.record, before the guards


def with_secrets(plan: dict[str, Any]) -> dict[str, Any]:
    """The deploy tests' plan with the parts guards read: flows, secrets, the proxy."""
    plan = copy.deepcopy(plan)
    plan["proxy"] = "proxy"
    plan["guests"]["db"]["services"] = ["postgresql"]
    plan["guests"]["proxy"]["services"] = ["caddy"]
    plan["allow"] = [
        {"from": "auth", "to": "db", "port": 5432, "proto": "tcp", "reason": "database pocketid"}
    ]
    plan["secrets"] = {
        "secrets/shared/pg-pocketid.yaml": {
            "machines": ["auth", "db"],
            "admins": [],
            "recipients": [],
        }
    }
    return plan


@pytest.fixture(autouse=True)
def approval_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = tmp_path / "approval.key"
    monkeypatch.setenv("HOMESTACK_APPROVAL_KEY", str(key))
    monkeypatch.setenv("HOMESTACK_AUDIT_LOG", str(tmp_path / "audit.log"))
    return key


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    inventory = tmp_path / "repo" / "inventory.toml"
    inventory.parent.mkdir()
    inventory.write_text("# the deploy reads the plan below, not this file\n")
    return inventory


class Fleet:
    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, inventory: Path, plan: dict[str, Any]
    ) -> None:
        self.runner = RecordingRunner(script=Machines())
        monkeypatch.setattr(deploy_cli, "runner", lambda: self.runner)
        monkeypatch.setattr(deploy_cli, "load", lambda _: (inventory, plan))
        # this plan is only the deploy's part: its secrets and certificates are checked in
        # test_failures_deploy.py
        monkeypatch.setattr(deploy_cli, "validator", lambda *_: lambda: [])

    def deploy(self, *args: str) -> Any:
        return CliRunner().invoke(deploy_cli.deploy, ["--health-timeout", "0", *args])


def test_refused_without_approval_accepted_with_it_and_not_replayable(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = with_secrets(make_plan())
    assert guards.record_deployed(repo, deployed) is not None
    new = copy.deepcopy(deployed)
    new["secrets"]["secrets/shared/pg-pocketid.yaml"]["machines"].append("proxy")
    fleet = Fleet(monkeypatch, repo, new)

    refused = fleet.deploy()
    assert isinstance(refused.exception, UserError), refused.output
    assert "deploy refused: 1 change(s) break 1 guard in diff" in str(refused.exception)
    assert "[guards] guard new-secret-access broken" in refused.output
    assert "[guards]   proxy can now decrypt secrets/shared/pg-pocketid.yaml" in refused.output
    assert [text(c) for c in fleet.runner.calls] == [READ, READ]  # only the hosts' records

    diff = compare(deployed, new, old_label="deployed", new_label=str(repo))
    # An approval of another diff (the same secret to another machine) does not carry over.
    other = copy.deepcopy(deployed)
    other["secrets"]["secrets/shared/pg-pocketid.yaml"]["machines"].append("vpn")
    elsewhere = compare(deployed, other, old_label="deployed", new_label=str(repo))
    wrong = guards.approval_token(elsewhere.digest, create=True)
    fleet.runner.calls.clear()
    replayed = fleet.deploy("--approve", wrong)
    assert isinstance(replayed.exception, UserError)
    assert [text(c) for c in fleet.runner.calls] == [READ, READ]

    token = guards.approval_token(diff.digest)
    assert token != wrong
    accepted = fleet.deploy("--approve", token)
    assert accepted.exit_code == 0, accepted.output
    assert "approved for diff " + diff.digest in accepted.output
    assert any("switch-to-configuration" in " ".join(c) for c in fleet.runner.calls)
    # The complete deploy is now what later deploys are compared with: nothing to approve.
    record = json.loads((repo.parent / ".homestack" / "deployed.json").read_text())
    assert record["plan"] == new
    fleet.runner.calls.clear()
    again = fleet.deploy()
    assert again.exit_code == 0 and "no changes between deployed" in again.output


def test_a_dry_run_shows_the_refusal_but_runs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed = with_secrets(make_plan())
    guards.record_deployed(repo, deployed)
    new = copy.deepcopy(deployed)
    del new["guests"]["vpn"]
    new["hosts"]["homelab"]["guests"].remove("vpn")
    new["deployOrder"] = [["cloud-relay", "homelab"], ["db"], ["auth"], ["proxy"]]
    fleet = Fleet(monkeypatch, repo, new)
    result = fleet.deploy("--dry-run")
    assert result.exit_code == 0, result.output
    assert "# guards: guard state-is-kept broken" in result.output
    assert "# guards:   vpn's state homelab:tank/microvms/vpn" in result.output
    assert "# guards: refused: 1 change(s) break 1 guard;" in result.output
    assert json.loads((repo.parent / ".homestack" / "deployed.json").read_text())["plan"] == (
        deployed
    )  # a dry run records nothing


def test_a_partial_deploy_is_guarded_but_not_recorded(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = with_secrets(make_plan())
    guards.record_deployed(repo, deployed)
    new = copy.deepcopy(deployed)
    new["guests"]["db"]["memory"] = 4096  # info only: no guard
    fleet = Fleet(monkeypatch, repo, new)
    result = fleet.deploy("db")
    assert result.exit_code == 0, result.output
    record = json.loads((repo.parent / ".homestack" / "deployed.json").read_text())
    assert record["plan"] == deployed


def test_without_a_record_the_first_deploy_records_one(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = with_secrets(make_plan())
    fleet = Fleet(monkeypatch, repo, plan)
    result = fleet.deploy()
    assert result.exit_code == 0, result.output
    assert "no deploy recorded yet, in this checkout or on the hosts that answered" in (
        result.output
    )
    assert json.loads((repo.parent / ".homestack" / "deployed.json").read_text())["plan"] == plan


def check(old: dict[str, Any], new: dict[str, Any], inventory: Path) -> list[str]:
    diff = compare(old, new)
    return [str(v) for v in guards.check(diff, guards.load_policy(inventory), old, new)]


def test_db_is_never_reachable_from_the_lan_or_the_proxy(repo: Path) -> None:
    old = with_secrets(make_plan())
    for source in ("lan", "proxy"):
        new = copy.deepcopy(old)
        new["allow"].append(
            {"from": source, "to": "db", "port": 5432, "proto": "tcp", "reason": "guests.db.allow"}
        )
        found = check(old, new, repo)
        assert [f.split(":")[0] for f in found] == ["guard database-stays-private"], found
    new = copy.deepcopy(old)
    new["allow"].append(
        {"from": "vpn", "to": "db", "port": 5432, "proto": "tcp", "reason": "database netbird"}
    )
    assert check(old, new, repo) == []  # an owner guest may reach it


def test_nothing_new_is_public_except_through_the_proxy(repo: Path) -> None:
    old = with_secrets(make_plan())
    old["relay"] = {"forwards": [{"guest": "proxy", "port": 443, "proto": "tcp"}]}
    new = copy.deepcopy(old)
    new["relay"]["forwards"].append({"guest": "proxy", "port": 80, "proto": "tcp"})
    assert check(old, new, repo) == []
    new["relay"]["forwards"].append({"guest": "vpn", "port": 3478, "proto": "udp"})
    assert [f.split(":")[0] for f in check(old, new, repo)] == [
        "guard public-only-through-the-proxy"
    ]


def test_policy_toml_adds_guards_and_names_its_mistakes(repo: Path) -> None:
    old = with_secrets(make_plan())
    new = copy.deepcopy(old)
    new["guests"]["vpn"]["memory"] = 8192
    assert check(old, new, repo) == []
    (repo.parent / "policy.toml").write_text(
        '[[policy.guard]]\nname = "vpn-frozen"\nkinds = ["machine-changed"]\nto = ["vpn"]\n'
    )
    assert [f.split(":")[0] for f in check(old, new, repo)] == ["guard vpn-frozen"]
    (repo.parent / "policy.toml").write_text('[[policy.guard]]\nname = "x"\nkind = ["a"]\n')
    with pytest.raises(UserError, match=r"^policy.toml: policy.guard\[0\].kind: unknown key"):
        guards.load_policy(repo)
    (repo.parent / "policy.toml").write_text(
        '[[policy.guard]]\nname = "x"\nkinds = ["flow-open"]\n'
    )
    with pytest.raises(UserError, match=r"policy.guard\[0\].kinds: 'flow-open' is not a kind"):
        guards.load_policy(repo)


def test_the_approval_key_is_private_and_tokens_differ_per_key(
    tmp_path: Path, approval_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not guards.approves("0" * 32, "a" * 64)  # no key yet: nothing is approved
    mine = guards.approval_token("a" * 64, create=True)
    assert stat.S_IMODE(approval_key.stat().st_mode) == 0o600
    assert guards.approves(mine, "a" * 64) and not guards.approves(mine, "b" * 64)
    monkeypatch.setenv("HOMESTACK_APPROVAL_KEY", str(tmp_path / "someone-else.key"))
    assert guards.approval_token("a" * 64, create=True) != mine
