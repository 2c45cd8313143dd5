"""tests/reference/ holds verbatim copies of the shared reference data: each is named in
PROVENANCE.md, and equals its original wherever the shared folder sits beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REFERENCE, REPO

SHARED = REPO.parent / "shared" / "reference"


def shipped() -> list[Path]:
    return sorted(p for p in REFERENCE.rglob("*") if p.is_file() and p.name != "PROVENANCE.md")


def test_provenance_names_every_shipped_file() -> None:
    provenance = (REFERENCE / "PROVENANCE.md").read_text()
    files = shipped()
    assert len(files) > 80
    for path in files:
        top = path.relative_to(REFERENCE).parts[0]
        assert f"`{top}" in provenance, f"{top}: not in tests/reference/PROVENANCE.md"


if SHARED.is_dir():  # a checkout beside the shared folder: the copies are still verbatim

    @pytest.mark.parametrize("path", shipped(), ids=lambda p: str(p.relative_to(REFERENCE)))
    def test_copy_is_verbatim(path: Path) -> None:
        original = SHARED / path.relative_to(REFERENCE)
        assert original.is_file(), f"{original}: gone from the shared reference"
        assert path.read_bytes() == original.read_bytes(), f"{path}: differs from {original}"
