"""bench/: the generated inventories stay valid, so the benchmarks measure a real plan."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import REPO

from homestack.inventory import validate


def test_plan_benchmark_inventory_is_valid() -> None:
    spec = importlib.util.spec_from_file_location("bench_plan", Path(REPO / "bench" / "plan.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert validate(module.inventory(12)) == []
