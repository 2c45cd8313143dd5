"""The inventory's JSON Schema: derived from lib's declarations, committed, and in step with
the validator (it accepts the example and rejects every bad inventory whose shape is wrong)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import BAD, EXAMPLE, LIVE, REPO, requires_nix

from homestack.plan import json_schema

pytestmark = requires_nix
COMMITTED = REPO / "inventory.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


@pytest.fixture(scope="module")
def shape_errors() -> dict[str, int]:
    """For each bad inventory that TOML can hold, how many problems lib finds in its shape
    alone (one evaluation for the whole corpus)."""
    files = " ".join(f'"{p}"' for p in BAD)
    expr = f"""
      let
        l = import {REPO}/lib;
        read = import {REPO}/lib/read.nix;
        one = f: let r = read (/. + f); in
          if r.errors != [ ] then -1 else builtins.length (l.shapeErrorsOf r.inventory);
      in builtins.listToAttrs (map (f: {{ name = baseNameOf f; value = one f; }}) [ {files} ])
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True)  # fmt: skip
    counts: dict[str, int] = json.loads(out.stdout)
    return counts


def test_the_committed_schema_is_lib_s(schema: dict[str, Any]) -> None:
    """`tools inventory schema > inventory.schema.json` refreshes it."""
    assert json.loads(COMMITTED.read_text()) == schema


def test_the_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "lib/validate.nix" in schema["description"]


def test_the_example_points_at_it_and_passes(schema: dict[str, Any]) -> None:
    assert LIVE.read_text().startswith("#:schema ./inventory.schema.json\n")
    jsonschema.validate(tomllib.loads(LIVE.read_text()), schema)
    jsonschema.validate(tomllib.loads(EXAMPLE.read_text()), schema)


def test_it_rejects_every_badly_shaped_inventory_and_only_those(
    schema: dict[str, Any], shape_errors: dict[str, int]
) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    rejected, structural = set(), set()
    for path in BAD:
        if shape_errors[path.name] < 0:
            continue  # a problem of the text itself (dates, NUL, BOM): lib's reader says so
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        if shape_errors[path.name] > 0:
            structural.add(path.name)
        if not validator.is_valid(data):
            rejected.add(path.name)
    assert len(structural) >= 60
    # JSON Schema counts a number with a zero fraction as an integer (draft 2020-12,
    # validation 6.1.1); TOML keeps 2048.0 a float, and lib refuses it.
    assert structural - rejected == {"memory-float.toml"}
    assert rejected <= structural


def test_tools_prints_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from homestack.cli import cli

    result = CliRunner().invoke(cli, ["inventory", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == json.loads(COMMITTED.read_text())
