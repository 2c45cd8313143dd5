"""Shared fixtures: where the repository is, and the example inventory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from homestack.plan import load_plan

# The secrets tests' fixtures (repo, admin_sops, bob_key, …), for any test that names one.
pytest_plugins = ["test_secrets_helpers"]

# CI runs as root after scripts/bootstrap, where every test can run: there (CI=true, as CI
# services set it, or HOMESTACK_NO_SKIPS=1) a skipped test fails and says why it would have
# skipped.
NO_SKIPS = bool(os.environ.get("HOMESTACK_NO_SKIPS")) or os.environ.get("CI") == "true"

REPO = Path(__file__).resolve().parent.parent
# The tests run against a frozen copy of the example (tests/example/README.md), so a fork
# that edits its own inventory.toml keeps a green suite; test_live_inventory.py checks that one.
EXAMPLE = REPO / "tests" / "example" / "inventory.toml"
LIVE = REPO / "inventory.toml"
# Reference data the tests compare against, copied verbatim (tests/reference/PROVENANCE.md).
REFERENCE = REPO / "tests" / "reference"
BAD = sorted((REPO / "tests" / "inventories" / "bad").glob("*.toml"))


def nix_eval(expr: str, cwd: Path = REPO) -> Any:
    """The value of a Nix expression, strictly evaluated, as JSON (run in ``cwd``)."""
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        capture_output=True, text=True, check=False, cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the example inventory."""
    copy = tmp_path / "inventory.toml"
    shutil.copyfile(EXAMPLE, copy)
    return copy


requires_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate (Debian: nix-bin) is not installed",
)


@pytest.fixture(scope="session")
def example_plan() -> dict[str, Any]:
    """The plan of the example inventory, evaluated once."""
    return load_plan(EXAMPLE)


@pytest.fixture
def admin_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository directory, acting as the example's admin: alice's age key (0600)
    in SOPS_AGE_KEY_FILE, and this interpreter's scripts (sops) first on PATH."""
    key = tmp_path / "alice.agekey"
    shutil.copy(REPO / "tests" / "keys" / "admin_alice.agekey", key)
    key.chmod(0o600)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true or HOMESTACK_NO_SKIPS): {reason}"
