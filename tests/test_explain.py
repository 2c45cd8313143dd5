"""tools/homestack/explain.py: the three renderings agree with the plan."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, requires_nix

from homestack.cli import cli
from homestack.explain import describe, to_dot, to_markdown
from homestack.plan import load_plan

pytestmark = requires_nix


@pytest.fixture(scope="module")
def described() -> dict[str, Any]:
    return describe(load_plan(EXAMPLE))


def test_json_lists_every_machine_flow_and_secret(described: dict[str, Any]) -> None:
    names = {m["name"] for m in described["machines"]}
    assert names == {"homelab", "cloud-relay", "auth", "vpn", "proxy", "db"}
    assert {
        "from": "auth",
        "to": "db",
        "port": 5432,
        "proto": "tcp",
        "reason": "database pocketid",
    } in described["flows"]
    assert any(p["to"] == "proxy" and p["entry"].endswith(":443/tcp") for p in described["public"])
    assert {s["guest"] for s in described["state"]} == {"auth", "vpn", "proxy", "db"}
    ca = next(s for s in described["secrets"] if s["file"] == "secrets/ca.yaml")
    assert ca["decryptableBy"] == ["admin:alice"]


def test_markdown_names_what_a_reader_needs(described: dict[str, Any]) -> None:
    text = to_markdown(described)
    for needle in ("## Machines", "https://id.home.arpa → auth", "| auth | db | 5432/tcp |",
                   "tank/microvms/db", "`secrets/ca.yaml` | admin:alice"):  # fmt: skip
        assert needle in text


def test_markdown_says_what_leaves_the_guest_network(described: dict[str, Any]) -> None:
    text = to_markdown(described)
    assert "| proxy | internet | 53/udp, 53/tcp | dnsmasq forwards other names upstream |" in text
    assert "| lan | homelab | 22/tcp | SSH from the LAN |" in text
    assert "guest to guest through the gateway included" in text


def test_dot_is_valid_graphviz(described: dict[str, Any]) -> None:
    dot = to_dot(described)
    assert '"auth" -> "db" [label="5432/tcp"]' in dot
    assert '"proxy" -> "internet" [label="53/udp, 53/tcp"' in dot
    assert '"mesh" -> "homelab" [label="22/tcp"' in dot
    assert '"cloud-relay" -> "proxy" [label="80/tcp, 443/tcp", style=dashed' in dot
    assert dot.count('"cloud-relay" -> "proxy"') == 1, "the relay's forwards are drawn once"
    if shutil.which("dot") is None:
        pytest.skip("graphviz not installed")
    out = subprocess.run(["dot", "-Tsvg"], input=dot, check=True, capture_output=True, text=True)
    assert "<svg" in out.stdout


def test_cli_json() -> None:
    result = CliRunner().invoke(cli, ["explain", "--format", "json", "-i", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["domain"] == "home.arpa"


def test_cli_json_flag_is_format_json() -> None:
    flag = CliRunner().invoke(cli, ["explain", "--json", "-i", str(EXAMPLE)])
    assert flag.exit_code == 0, flag.output
    assert (
        flag.stdout
        == CliRunner().invoke(cli, ["explain", "--format", "json", "-i", str(EXAMPLE)]).stdout
    )


def test_guest_without_catalogued_service(tmp_path: Path) -> None:
    text = EXAMPLE.read_text() + (
        '\n[guests.wiki]\nhost = "homelab"\naddress = "192.168.100.30"\nvcpu = 1\n'
        'memory = 512\nstate_size = 256\nservices = []\nports = [{ port = 3000, proto = "tcp" }]\n'
    )
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(text)
    markdown = to_markdown(describe(load_plan(inventory)))
    assert "| 1 vCPU, 512 MiB | own service (3000/tcp) |" in markdown
