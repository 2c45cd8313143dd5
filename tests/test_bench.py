"""bench/: the generated inventories stay valid, so the benchmarks measure a real plan."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tomli_w
from conftest import REPO, requires_nix

from homestack.plan import check_inventory


@requires_nix
def test_plan_benchmark_inventory_is_valid(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_plan", Path(REPO / "bench" / "plan.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(module.inventory(12)))
    assert check_inventory(path) == []
