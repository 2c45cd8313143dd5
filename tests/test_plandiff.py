"""homestack.plandiff: what a change means, one fixture per risk class, the add-a-guest
how-to's guest exactly, and the old side from a git revision with its own lib/."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, REPO, requires_nix

from homestack.cli import cli
from homestack.plan import load_plan
from homestack.plandiff import Risk, compare, diff_inventory

pytestmark = requires_nix

HOWTO = REPO / "docs" / "howto" / "add-a-guest.md"


def wiki_table() -> str:
    """The `[guests.wiki]` table exactly as the add-a-guest how-to appends it."""
    text = HOWTO.read_text()
    block = re.search(r"```toml\n(\[guests\.wiki\]\n.*?)```", text, re.S)
    assert block is not None, "the how-to no longer shows the wiki table"
    return block.group(1)


def variant(tmp_path: Path, name: str, edit: Any) -> Path:
    """A copy of the example inventory with ``edit(text) -> text`` applied."""
    path = tmp_path / name / "inventory.toml"
    path.parent.mkdir()
    path.write_text(edit(EXAMPLE.read_text()))
    return path


def cut_table(text: str, header: str) -> str:
    """``text`` without the table ``header`` (up to the next guest table or the end)."""
    start = text.index(header)
    end = text.find("\n[guests.", start + 1)
    return text[:start] + (text[end + 1 :] if end != -1 else "")


def kinds(diff: Any) -> list[tuple[str, str, str | None]]:
    return [(c.kind, c.target, c.source) for c in diff.changes]


def test_the_how_to_guest_is_exactly_its_machine_flows_routes_and_secrets(tmp_path: Path) -> None:
    after = variant(tmp_path, "wiki", lambda t: t + "\n" + wiki_table())
    diff = diff_inventory(after, against=str(EXAMPLE))
    semantic = {k for k in kinds(diff) if k[0] != "config-changed"}
    assert semantic == {
        ("machine-added", "wiki", None),
        ("dataset-created", "wiki", None),
        ("flow-opened", "wiki", "homelab"),  # ssh from the hypervisor
        ("flow-opened", "wiki", "proxy"),  # the route
        ("flow-opened", "wiki", "lan"),  # its allow: Prometheus on 9100
        ("flow-opened", "db", "wiki"),  # its database
        ("flow-opened", "proxy", "wiki"),  # proxy allows every guest (443, 80, 53/udp, 53/tcp)
        ("route-added", "wiki", "proxy"),
        ("secret-gained", "secrets/host-keys/wiki.yaml", "homelab"),
        ("secret-gained", "secrets/shared/pg-wiki.yaml", "wiki"),
        ("secret-gained", "secrets/shared/pg-wiki.yaml", "db"),
        ("secret-gained", "secrets/wiki.yaml", "wiki"),
        # The leaf names every route and guest (a wildcard under home.arpa, a public suffix,
        # is no use to browsers): wiki.home.arpa joins it, so it is re-issued.
        ("certificate-changed", "certificates", None),
    }
    cert = next(c for c in diff.changes if c.kind == "certificate-changed")
    assert "wiki.home.arpa" in json.dumps(cert.detail)
    opened = {
        (c.source, c.target, c.detail["port"], c.detail["proto"])
        for c in diff.changes
        if c.kind == "flow-opened"
    }
    assert opened == {
        ("homelab", "wiki", 22, "tcp"), ("proxy", "wiki", 3000, "tcp"),
        ("lan", "wiki", 9100, "tcp"), ("wiki", "db", 5432, "tcp"),
        ("wiki", "proxy", 443, "tcp"), ("wiki", "proxy", 80, "tcp"),
        ("wiki", "proxy", 53, "udp"), ("wiki", "proxy", 53, "tcp"),
    }  # fmt: skip
    # What the other machines re-render because of it: the route (caddy, dnsmasq), the
    # database (pg_hba) and the flows (the firewalls on both ends and the bridge filter).
    restarts = {(c.target, c.detail["unit"]) for c in diff.changes if c.kind == "config-changed"}
    assert restarts == {
        ("proxy", "caddy.service"), ("proxy", "dnsmasq.service"), ("proxy", "nftables.service"),
        ("db", "postgresql.service"), ("db", "nftables.service"),
        ("homelab", "nftables.service"),
    }  # fmt: skip
    lan = next(c for c in diff.changes if c.kind == "flow-opened" and c.source == "lan")
    assert lan.risk is Risk.EXPOSURE and "newly reachable from the LAN" in lan.summary
    route = next(c for c in diff.changes if c.kind == "route-added")
    assert route.detail["url"] == "wiki.home.arpa" and route.detail["from"] == ["lan", "internet"]
    assert diff.risk is Risk.ACCESS


def test_info_only_a_resize(tmp_path: Path) -> None:
    after = variant(
        tmp_path,
        "bigger",
        lambda t: t.replace(
            'address = "192.168.100.11"\nvcpu = 2\nmemory = 2048',
            'address = "192.168.100.11"\nvcpu = 2\nmemory = 4096',
        ),
    )
    diff = diff_inventory(after, against=str(EXAMPLE))
    assert kinds(diff) == [("machine-changed", "vpn", None)]
    assert diff.risk is Risk.INFO
    assert "memory 2048 -> 4096" in diff.changes[0].summary
    assert "microvm@vpn.service" in diff.changes[0].summary


def test_exposure_a_new_public_port(tmp_path: Path) -> None:
    after = variant(
        tmp_path,
        "public",
        lambda t: t.replace(
            'public = [{ port = 3478, proto = "udp" }]',
            'public = [{ port = 3478, proto = "udp" }, { port = 8080, proto = "tcp" }]',
        ),
    )
    diff = diff_inventory(after, against=str(EXAMPLE))
    public = [c for c in diff.changes if c.kind == "public-opened"]
    assert [(c.source, c.target, c.detail["port"]) for c in public] == [("internet", "vpn", 8080)]
    assert public[0].risk is Risk.EXPOSURE
    assert "newly reachable from the internet" in public[0].summary


def test_access_a_guest_gains_a_flow(tmp_path: Path) -> None:
    after = variant(
        tmp_path,
        "flow",
        lambda t: t.replace(
            'allow = [{ from = ["lan"], port = 3478, proto = "udp" }]',
            'allow = [{ from = ["lan"], port = 3478, proto = "udp" },'
            ' { from = ["auth"], port = 8080, proto = "tcp" }]',
        ),
    )
    diff = diff_inventory(after, against=str(EXAMPLE))
    assert [k for k in kinds(diff) if k[0] != "config-changed"] == [("flow-opened", "vpn", "auth")]
    assert diff.risk is Risk.ACCESS


def test_destructive_a_stateful_guest_removed(tmp_path: Path) -> None:
    after = variant(tmp_path, "novpn", lambda t: cut_table(t, "[guests.vpn]"))
    diff = diff_inventory(after, against=str(EXAMPLE))
    destroyed = [c for c in diff.changes if c.kind == "dataset-destroyed"]
    assert [(c.target, c.detail["dataset"]) for c in destroyed] == [
        ("vpn", "homelab:tank/microvms/vpn")
    ]
    assert diff.risk is Risk.DESTRUCTIVE
    assert ("public-closed", "vpn", "internet") in kinds(diff)
    assert ("machine-removed", "vpn", None) in kinds(diff)


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(EXAMPLE)


def test_no_change_no_diff_and_the_hash_is_stable(plan: dict[str, Any]) -> None:
    same = compare(plan, copy.deepcopy(plan))
    assert same.changes == () and same.lines()[0].startswith("no changes")
    other = copy.deepcopy(plan)
    other["guests"]["db"]["memory"] = 1
    assert compare(plan, other).digest == compare(plan, copy.deepcopy(other)).digest
    other["guests"]["db"]["memory"] = 2
    assert compare(plan, other).digest != compare(plan, copy.deepcopy(plan) | {}).digest


def test_a_swapped_age_key_is_access(plan: dict[str, Any]) -> None:
    other = copy.deepcopy(plan)
    other["guests"]["db"]["ageKey"] = "age1attacker"
    diff = compare(plan, other)
    swapped = {c.target for c in diff.changes if c.kind == "secret-key-changed"}
    assert "secrets/db.yaml" in swapped and "secrets/shared/pg-netbird.yaml" in swapped
    assert all(
        c.source == "db" and c.risk is Risk.ACCESS
        for c in diff.changes
        if c.kind == "secret-key-changed"
    )


def test_a_moved_guest_leaves_its_state_behind(plan: dict[str, Any]) -> None:
    other = copy.deepcopy(plan)
    other["guests"]["db"]["host"] = "homelab2"
    diff = compare(plan, other)
    assert ("machine-moved", "db", None) in kinds(diff)
    destroyed = next(c for c in diff.changes if c.kind == "dataset-destroyed")
    assert destroyed.detail == {
        "dataset": "homelab:tank/microvms/db",
        "new": "homelab2:tank/microvms/db",
    }


def test_a_new_certificate_authority_is_access(plan: dict[str, Any]) -> None:
    other = copy.deepcopy(plan)
    other["certificates"]["mode"] = "acme-dns01"
    diff = compare(plan, other)
    assert [(c.kind, c.risk) for c in diff.changes] == [("certificate-changed", Risk.ACCESS)]


def test_the_old_side_from_a_git_revision_uses_that_revisions_lib(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "lib", repo / "lib")
    shutil.copyfile(EXAMPLE, repo / "inventory.toml")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "example")
    (repo / "inventory.toml").write_text(EXAMPLE.read_text() + "\n" + wiki_table())
    result = CliRunner().invoke(cli, ["plan", "diff", "-i", str(repo / "inventory.toml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["old"] == "HEAD" and data["risk"] == "access"
    assert {"machine-added", "route-added", "secret-gained"} <= {c["kind"] for c in data["changes"]}
    assert {g["guard"] for g in data["guards"]} == {"new-secret-access"}
    assert len(data["hash"]) == 64
    missing = CliRunner().invoke(
        cli, ["plan", "diff", "-i", str(repo / "inventory.toml"), "--against", "no-such-rev"]
    )
    assert missing.exit_code != 0 and "no-such-rev" in str(missing.exception or missing.output)
    option = CliRunner().invoke(
        cli, ["plan", "diff", "-i", str(repo / "inventory.toml"), "--against=--output=/tmp/x"]
    )
    assert "not a git revision" in str(option.exception)


def test_people_who_gain_every_secret_are_access(plan: dict[str, Any]) -> None:
    other = copy.deepcopy(plan)
    other["users"]["bob"] = {"admin": True, "sshKeys": ["ssh-ed25519 AAAA bob"], "ageKey": "age1b"}
    other["users"]["alice"]["ageKey"] = "age1swapped"
    diff = compare(plan, other)
    assert [(c.kind, c.target, c.risk) for c in diff.changes] == [
        ("user-added", "user:bob", Risk.ACCESS),
        ("user-key-changed", "user:alice", Risk.ACCESS),
    ]
    assert "decrypt every secret file" in diff.changes[0].summary


def test_every_kind_reported_is_declared(plan: dict[str, Any]) -> None:
    from homestack.plandiff import KINDS

    other = copy.deepcopy(plan)
    del other["guests"]["vpn"]
    other["guests"]["db"]["ageKey"] = "age1other"
    other["users"]["bob"] = {"admin": True, "sshKeys": [], "ageKey": "age1b"}
    other["certificates"]["mode"] = "acme-dns01"
    assert {c.kind for c in compare(plan, other).changes} <= set(KINDS)
    assert {c.kind for c in compare(other, plan).changes} <= set(KINDS)
