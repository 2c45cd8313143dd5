"""The repository's own inventory.toml, whatever a fork made of it: valid, its plan evaluates
(also as the flake's `lib.plan`), its rendered artifacts pass the programs that read them,
and no host runs an application service. Every other test uses the frozen example
(tests/example/), so these are the only tests that read the live file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from artifact_checks import check_rendered, require_programs
from conftest import LIVE, REPO, requires_nix
from test_nixos_layer import collect, services_on_hosts

from homestack.plan import load_plan

pytestmark = requires_nix
TOOLS = str(Path(sys.executable).with_name("tools"))


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(LIVE)


def test_inventory_check_passes() -> None:
    result = subprocess.run([TOOLS, "inventory", "check", str(LIVE)],
                            check=False, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_artifacts_pass_their_programs(plan: dict[str, Any], tmp_path: Path) -> None:
    require_programs()
    # the Caddyfile, and one nftables rule set per guest at least
    assert check_rendered(plan, tmp_path) >= 1 + len(plan["guests"])


def test_flake_lib_output_evaluates_offline() -> None:
    """`nix eval --offline .#lib.plan` needs no input fetched, and is the plan tools load."""
    if shutil.which("nix") is None:
        pytest.skip("nix (Debian: nix-bin) is not installed")
    out = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--offline",
         "--json", f"path:{REPO}#lib.plan.guests"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == load_plan(LIVE)["guests"]


def test_hosts_run_no_application_service(plan: dict[str, Any]) -> None:
    hosts = sorted(plan["hosts"])
    assert services_on_hosts(collect(inventory=LIVE), hosts) == []
