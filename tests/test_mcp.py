"""`tools mcp`, driven over stdio by the MCP SDK's own client: the tools it lists, a
proposal a guard refuses, a harmless one written to a branch, and a deploy without a
person's approval refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import EXAMPLE, requires_nix

from homestack import auditlog, guards
from homestack.plan import load_plan

pytestmark = requires_nix
mcp_client = pytest.importorskip("mcp.client.stdio")

DB_TO_LAN = 'allow = [{ from = ["lan"], port = 5432, proto = "tcp" }]\n'
VPN_MEMORY = (
    'address = "192.168.100.11"\nvcpu = 2\nmemory = 2048',
    'address = "192.168.100.11"\nvcpu = 2\nmemory = 4096',
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(EXAMPLE, repo / "inventory.toml")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "inventory.toml")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-qm", "example")
    return repo


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def session(repo: Path, env: dict[str, str], steps: Any) -> Any:
    from mcp import Client

    params = mcp_client.StdioServerParameters(
        command=sys.executable,
        args=[
            "-c",
            "from homestack.cli import main; main()",
            "mcp",
            "-i",
            str(repo / "inventory.toml"),
        ],
        env=env,
        cwd=str(repo),
    )
    async with Client(params) as client:
        return await steps(client)


def test_an_agent_lists_proposes_and_cannot_deploy_unapproved(repo: Path, tmp_path: Path) -> None:
    inventory = repo / "inventory.toml"
    original = inventory.read_text()
    head = git(repo, "rev-parse", "HEAD")
    guards.record_deployed(inventory, load_plan(inventory))
    log = tmp_path / "audit.log"
    env = {
        "HOMESTACK_AUDIT_LOG": str(log),
        "HOMESTACK_APPROVAL_KEY": str(tmp_path / "approval.key"),
    }
    responses: list[str] = []

    async def steps(client: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["tools"] = {t.name for t in (await client.list_tools()).tools}

        async def call(name: str, args: dict[str, Any]) -> Any:
            result = await client.call_tool(name, args)
            responses.append(text_of(result))
            return result

        out["risky"] = await call(
            "propose_change",
            {"inventory_toml": original + DB_TO_LAN, "title": "open db to the LAN"},
        )
        out["harmless"] = await call(
            "propose_change",
            {"inventory_toml": original.replace(*VPN_MEMORY), "title": "More memory for vpn"},
        )
        out["invalid"] = await call(
            "propose_change",
            {
                "inventory_toml": original.replace(
                    "vcpu = 2\nmemory = 2048", "vcpu = 0\nmemory = 2048"
                ),
                "title": "broken",
            },
        )
        out["deploy"] = await call("deploy", {"approval_token": "0" * 32})
        out["explain"] = await call("explain", {})
        out["secrets"] = await call("secrets_check", {})
        out["artifacts"] = await call("plan", {"section": "artifacts"})
        out["peek"] = await call("diff", {"against": "/etc/passwd"})
        return out

    out = anyio.run(session, repo, env, steps)

    assert {
        "explain",
        "plan",
        "read_inventory",
        "diff",
        "list_guards",
        "secrets_check",
        "certs_check",
        "deploy_status",
        "lab",
        "audit_log",
        "propose_change",
        "deploy_dry_run",
        "deploy",
    } <= out["tools"]

    risky = out["risky"].structured_content
    assert risky["accepted"] is False and "refused: 1 change(s) break 1 guard;" in risky["why"]
    assert [g["guard"] for g in risky["guards"]] == ["database-stays-private"]
    assert risky["guards"][0]["change"]["source"] == "lan"

    harmless = out["harmless"].structured_content
    assert harmless["accepted"] is True, harmless
    assert [(c["kind"], c["target"]) for c in harmless["changes"]] == [("machine-changed", "vpn")]
    assert "memory 2048 -> 4096" in harmless["changes"][0]["summary"]
    branch = harmless["branch"]
    assert branch.startswith("proposals/more-memory-for-vpn-")
    assert "memory = 4096" in git(repo, "show", f"{branch}:inventory.toml")
    # Never straight to the inventory: the working tree, the index and main are untouched.
    assert inventory.read_text() == original and git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert git(repo, "branch", "--list", "proposals/*").count("proposals/") == 1

    invalid = out["invalid"].structured_content
    assert invalid["accepted"] is False
    assert any("guests.vpn.vcpu" in p for p in invalid["problems"])

    assert out["deploy"].structured_content["deployed"] is False
    assert "does not approve this diff" in out["deploy"].structured_content["why"]

    assert not out["explain"].is_error and not out["secrets"].is_error
    assert out["peek"].is_error and "give a git revision or `deployed`" in text_of(out["peek"])
    for text in responses:
        assert "AGE-SECRET-KEY" not in text and "PRIVATE KEY" not in text

    actions = [(e["command"], e["result"]) for e in auditlog.read(log)]
    assert actions == [
        ("mcp propose_change", "refused: 1 change(s) break 1 guard"),
        ("mcp propose_change", "ok"),
        ("mcp propose_change", "error: lib/ rejects the inventory"),
        ("mcp deploy", "refused: no approval for this diff"),
    ]
    assert json.loads(log.read_text().splitlines()[1])["diff"] == harmless["hash"]


def test_the_deploy_tool_runs_only_what_a_person_approved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MCP deploy action on a scripted fleet: refused without the person's token for
    this diff, run with it, and then recorded as deployed."""
    import copy

    from test_deploy import Machines, make_plan
    from test_guards import with_secrets

    from homestack.mcp_server import Homelab
    from homestack.plandiff import compare
    from homestack.process import RecordingRunner

    monkeypatch.setenv("HOMESTACK_APPROVAL_KEY", str(tmp_path / "approval.key"))
    monkeypatch.setenv("HOMESTACK_AUDIT_LOG", str(tmp_path / "audit.log"))
    inventory = tmp_path / "repo" / "inventory.toml"
    inventory.parent.mkdir()
    inventory.write_text("# the plan below stands for this file's\n")
    deployed = with_secrets(make_plan())
    guards.record_deployed(inventory, deployed)
    new = copy.deepcopy(deployed)
    new["guests"]["vpn"]["memory"] = 4096
    runner = RecordingRunner(script=Machines())
    homelab = Homelab(inventory, runner)
    monkeypatch.setattr(homelab, "plan", lambda: new)
    # this plan is only the deploy's part: its secrets and certificates are checked in
    # test_failures_deploy.py
    monkeypatch.setattr(homelab, "validator", lambda _plan: lambda: [])

    digest = compare(deployed, new).digest
    refused = homelab.deploy(guards.approval_token("f" * 64, create=True), [])
    assert refused["deployed"] is False and refused["diff"]["hash"] == digest
    assert runner.calls == []

    dry = homelab.deploy_dry_run([])
    assert any("nixosConfigurations.vpn" in c for c in dry["commands"])
    assert dry["diff"]["hash"] == digest and runner.calls == []

    done = homelab.deploy(guards.approval_token(digest), [])
    assert done["deployed"] is True, done
    assert any("switch-to-configuration" in " ".join(c) for c in runner.calls)
    record = json.loads((inventory.parent / ".homestack" / "deployed.json").read_text())
    assert record["plan"] == new
