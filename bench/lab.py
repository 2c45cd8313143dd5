"""Benchmark: the lab's bring-up (cold and warm), `test`, and tear-down over N runs.

    sudo python bench/lab.py [--runs 5] [--inventory inventory.toml] [--engine both]

Cold: PostgreSQL is initialised with initdb. Warm: a cached, initialised cluster is copied.
Times are the library calls behind `tools lab up/test/down` (the command adds ~0.3 s of
Python start-up and plan evaluation). Targets: warm bring-up <= 2 s, cold <= 4 s,
tear-down <= 0.5 s. Uses its own prefix and directories, so a lab started by hand stays up.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from homestack.lab import checks, lifecycle
from homestack.lab.state import LabPaths
from homestack.plan import load_plan
from homestack.process import default_runner

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"bring-up, cold": 4.0, "bring-up, warm": 2.0, "tear-down": 0.5}
INCUS_INVENTORY = REPO / "tests" / "inventories" / "incus" / "inventory.toml"
INCUS_RATIO = 3.0  # Incus up + test within this many times the namespace lab's


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run(plan: dict[str, Any], runs: int, engine: str) -> tuple[dict[str, list[float]], int]:
    """The steps' times over ``runs`` runs of one engine, and the lab test failures."""
    base = Path("/run/homestack-lab-bench")
    base.mkdir(mode=0o755, exist_ok=True)
    paths = LabPaths(root=base / "run", prefix="hsbench-", cache=base / "cache")
    quiet = lambda _msg: None  # noqa: E731
    runner = default_runner

    def up(cold: bool = False) -> object:
        return lifecycle.up(plan, paths, runner, cold=cold, log=quiet, engine=engine)

    times: dict[str, list[float]] = {
        k: [] for k in ("bring-up, cold", "bring-up, warm", "test", "tear-down")
    }
    failures = 0
    try:
        lifecycle.down(paths, runner, log=quiet)
        up()  # fills the cluster cache
        lifecycle.down(paths, runner, log=quiet)
        for _ in range(runs):
            times["bring-up, cold"].append(timed(lambda: up(cold=True)))
            times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
            times["bring-up, warm"].append(timed(up))
            start = time.perf_counter()
            report = checks.run(plan, paths, runner)
            times["test"].append(time.perf_counter() - start)
            failures += report.failures
            times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
    finally:
        lifecycle.down(paths, runner, log=quiet)
        shutil.rmtree(base, ignore_errors=True)
    return times, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inventory", type=Path, default=REPO / "inventory.toml")
    parser.add_argument(
        "--engine",
        choices=("microvm", "incus", "both"),
        default="microvm",
        help="both: the namespace lab, then real Incus containers, compared",
    )
    parser.add_argument(
        "--incus-inventory",
        type=Path,
        default=INCUS_INVENTORY,
        help="the inventory the Incus runs use (hypervisor engine = incus)",
    )
    args = parser.parse_args()
    engines = ("microvm", "incus") if args.engine == "both" else (args.engine,)
    ok = True
    up_test: dict[str, float] = {}
    for engine in engines:
        inventory = args.incus_inventory if engine == "incus" else args.inventory
        plan = load_plan(inventory)
        times, failures = run(plan, args.runs, engine)
        print(
            f"lab benchmark, engine {engine}, {args.runs} runs, {inventory.name} "
            f"({len(plan['guests'])} guests)"
        )
        print(f"{'step':<16} {'runs':>4} {'median':>8} {'max':>8} {'target':>8}")
        ok = ok and failures == 0
        for step, values in times.items():
            target = TARGETS.get(step) if engine == "microvm" else None
            verdict = ""
            if target is not None:
                verdict = "ok" if max(values) <= target else "OVER"
                ok = ok and verdict == "ok"
            print(
                f"{step:<16} {len(values):>4} {statistics.median(values):>7.2f}s "
                f"{max(values):>7.2f}s {f'{target:.1f}s' if target else '':>8} {verdict}"
            )
        print(f"lab test failures across runs: {failures}\n")
        up_test[engine] = statistics.median(times["bring-up, warm"]) + statistics.median(
            times["test"]
        )
    if len(up_test) == 2:
        ratio = up_test["incus"] / up_test["microvm"]
        verdict = "ok" if ratio <= INCUS_RATIO else "OVER"
        ok = ok and verdict == "ok"
        print(
            f"warm up + test: incus {up_test['incus']:.2f}s, namespaces "
            f"{up_test['microvm']:.2f}s: {ratio:.2f}x (target <= {INCUS_RATIO:.0f}x) {verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
