"""Benchmark: the lab's bring-up (cold and warm), `test`, and tear-down over N runs.

    sudo python bench/lab.py [--runs 5] [--inventory inventory.toml]

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

from homestack.lab import checks, lifecycle
from homestack.lab.state import LabPaths
from homestack.plan import load_plan
from homestack.process import default_runner

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"bring-up, cold": 4.0, "bring-up, warm": 2.0, "tear-down": 0.5}


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inventory", type=Path, default=REPO / "inventory.toml")
    args = parser.parse_args()
    plan = load_plan(args.inventory)
    base = Path("/run/homestack-lab-bench")
    base.mkdir(mode=0o755, exist_ok=True)
    paths = LabPaths(root=base / "run", prefix="hsbench-", cache=base / "cache")
    quiet = lambda _msg: None  # noqa: E731
    runner = default_runner
    times: dict[str, list[float]] = {
        k: [] for k in ("bring-up, cold", "bring-up, warm", "test", "tear-down")
    }
    failures = 0
    try:
        lifecycle.down(paths, runner, log=quiet)
        lifecycle.up(plan, paths, runner, log=quiet)  # fills the cluster cache
        lifecycle.down(paths, runner, log=quiet)
        for _ in range(args.runs):
            times["bring-up, cold"].append(
                timed(lambda: lifecycle.up(plan, paths, runner, cold=True, log=quiet))
            )
            times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
            times["bring-up, warm"].append(
                timed(lambda: lifecycle.up(plan, paths, runner, log=quiet))
            )
            start = time.perf_counter()
            report = checks.run(plan, paths, runner)
            times["test"].append(time.perf_counter() - start)
            failures += report.failures
            times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
    finally:
        lifecycle.down(paths, runner, log=quiet)
        shutil.rmtree(base, ignore_errors=True)
    print(f"lab benchmark, {args.runs} runs, {args.inventory.name} ({len(plan['guests'])} guests)")
    print(f"{'step':<16} {'runs':>4} {'median':>8} {'max':>8} {'target':>8}")
    ok = failures == 0
    for step, values in times.items():
        target = TARGETS.get(step)
        verdict = ""
        if target is not None:
            verdict = "ok" if max(values) <= target else "OVER"
            ok = ok and verdict == "ok"
        print(
            f"{step:<16} {len(values):>4} {statistics.median(values):>7.2f}s "
            f"{max(values):>7.2f}s {f'{target:.1f}s' if target else '':>8} {verdict}"
        )
    print(f"lab test failures across runs: {failures}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
