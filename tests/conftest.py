"""Shared fixtures: where the repository is, and the example inventory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventory.toml"
BAD = sorted((REPO / "tests" / "inventories" / "bad").glob("*.toml"))


def expected_key(path: Path) -> str:
    """The key a bad inventory's first line says every check must name."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ").strip()


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
