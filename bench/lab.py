"""Benchmark: the lab's bring-up (cold and warm), `test`, and tear-down over N runs; the
lab at 10, 20 and 30 guests; and the filters' per-packet cost at 10 and 1,000 guests.

    sudo python bench/lab.py [--runs 5] [--inventory inventory.toml] [--only NAME]

NAME is lifecycle, scale, filters or engines (the namespace lab against real Incus
containers on the example switched to the Incus engine; target: Incus warm up + test at
most 3x the namespace lab's).

Cold: PostgreSQL is initialised with initdb. Warm: a cached, initialised cluster is copied.
Times are the library calls behind `tools lab up/test/down` (the command adds ~0.3 s of
Python start-up and plan evaluation). Targets: warm bring-up <= 2 s, cold <= 4 s,
tear-down <= 0.5 s.

Scale: the example grown to 10, 20 and 30 guests by small web apps (`grown`): warm
bring-up plus `test` at 30 guests <= 10 s, and the matrix's time against the flows it probes
(it should grow as they do). Filters: the median time of a TCP connection from app0 to the
proxy (every packet of it passes three rule sets: app0's, the bridge filter, the proxy's)
with the rules rendered for 10 guests loaded, then those rendered for 1,000 (the same
machines at the same addresses), in alternating rounds; target ratio <= 1.1.
Uses its own prefix and directories, so a lab started by hand stays up.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from homestack.lab import checks, firewall, lifecycle, matrix, netns
from homestack.lab.state import LabPaths
from homestack.lab.topology import Topology
from homestack.plan import load_plan
from homestack.process import Runner, default_runner

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "tests" / "example" / "inventory.toml"


def grown(guests: int, example: Path = EXAMPLE, *, wide: bool = False) -> str:
    """The example inventory grown to `guests` guests by small web apps, each with a route
    through the proxy and a database on the example's server: a homelab that has grown.
    `wide` puts the guests in a /20 (room for 1,000 apps; app<i> has the same address at
    every size)."""
    text = example.read_text()
    apps = guests - text.count("\n[guests.")
    if apps < 0:
        raise ValueError(f"{example.name} has more than {guests} guests")
    if wide:
        net = 'cidr = "192.168.100.0/24"'
        if net not in text:
            raise ValueError(f"{example.name}: no {net} to widen")
        text = text.replace(net, 'cidr = "192.168.96.0/20"')

    def address(i: int) -> str:
        return f"192.168.{101 + i // 250}.{1 + i % 250}" if wide else f"192.168.100.{100 + i}"

    return text + "".join(
        f'\n[guests.app{i}]\nhost = "homelab"\naddress = "{address(i)}"\n'
        f'vcpu = 1\nmemory = 256\nservices = []\nports = [{{ port = 3000, proto = "tcp" }}]\n'
        f'state_size = 256\nroutes = [{{ name = "app{i}", port = 3000 }}]\n'
        f'databases = [{{ name = "app{i}", server = "db" }}]\n'
        for i in range(apps)
    )


INCUS_INVENTORY = REPO / "tests" / "inventories" / "incus" / "inventory.toml"
INCUS_RATIO = 3.0  # Incus up + test within this many times the namespace lab's
TARGETS = {"bring-up, cold": 4.0, "bring-up, warm": 2.0, "tear-down": 0.5}


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def lifecycle_runs(
    plan: dict[str, Any], name: str, paths: LabPaths, runs: int, engine: str = "microvm"
) -> tuple[bool, float]:
    """Cold and warm bring-up, test and tear-down of one inventory, `runs` times, on one
    engine; whether every target was met, and the median warm bring-up plus test."""
    runner = default_runner
    times: dict[str, list[float]] = {
        k: [] for k in ("bring-up, cold", "bring-up, warm", "test", "tear-down")
    }
    failures = 0
    lifecycle.down(paths, runner, log=quiet)
    lifecycle.up(plan, paths, runner, log=quiet, engine=engine)  # fills the cluster cache
    lifecycle.down(paths, runner, log=quiet)
    for _ in range(runs):
        times["bring-up, cold"].append(
            timed(lambda: lifecycle.up(plan, paths, runner, cold=True, log=quiet, engine=engine))
        )
        times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
        times["bring-up, warm"].append(
            timed(lambda: lifecycle.up(plan, paths, runner, log=quiet, engine=engine))
        )
        start = time.perf_counter()
        report = checks.run(plan, paths, runner)
        times["test"].append(time.perf_counter() - start)
        failures += report.failures
        times["tear-down"].append(timed(lambda: lifecycle.down(paths, runner, log=quiet)))
    print(f"lab benchmark, engine {engine}, {runs} runs, {name} ({len(plan['guests'])} guests)")
    print(f"{'step':<16} {'runs':>4} {'median':>8} {'max':>8} {'target':>8}")
    ok = failures == 0
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
    print(f"lab test failures across runs: {failures}")
    warm = statistics.median(times["bring-up, warm"]) + statistics.median(times["test"])
    return ok, warm


def engine_ratio(inventory: Path, paths: LabPaths, runs: int) -> bool:
    """The namespace lab and real Incus containers, one after the other, in this run."""
    warm: dict[str, float] = {}
    ok = True
    for engine, path in (("microvm", inventory), ("incus", INCUS_INVENTORY)):
        done, warm[engine] = lifecycle_runs(load_plan(path), path.name, paths, runs, engine)
        ok = ok and done
        print()
    ratio = warm["incus"] / warm["microvm"]
    met = ratio <= INCUS_RATIO
    print(
        f"warm up + test: incus {warm['incus']:.2f}s, namespaces {warm['microvm']:.2f}s: "
        f"{ratio:.2f}x  (target <= {INCUS_RATIO:.0f}x: {'met' if met else 'MISSED'})"
    )
    return ok and met


def quiet(_msg: str) -> None:
    pass


def plan_of(text: str, folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return load_plan(path)


def scale_runs(folder: Path, paths: LabPaths, runs: int) -> bool:
    """Warm bring-up and test at 10, 20 and 30 guests, against the flows the test probes."""
    runner = default_runner
    print("\nlab at 10, 20 and 30 guests (warm bring-up, then test; medians of "
          f"{runs} runs). matrix: the three filter modes' probing inside test, its wall "
          "time and the CPU time of its probing thread per probe; again: allowed flows "
          "tried a second time")  # fmt: skip
    print(f"{'guests':>6} {'allowed':>8} {'probes':>7} {'up':>7} {'test':>7} {'up+test':>8} "
          f"{'matrix':>7} {'us/probe':>9} {'again':>6} {'wrong':>6}")  # fmt: skip
    ok = True
    per_probe: dict[int, float] = {}
    for n in (10, 20, 30):
        plan = plan_of(grown(n), folder, f"grown-{n}")
        topo = Topology.from_plan(plan, paths.prefix)
        allowed = matrix.allowed_flows(plan, topo)
        ups, tests, walls, cpus, again, wrong, probes = [], [], [], [], 0, 0, 0
        for _ in range(runs):
            lifecycle.down(paths, runner, log=quiet)
            start = time.perf_counter()
            lifecycle.up(plan, paths, runner, log=quiet)
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            report = checks.run(plan, paths, runner)
            tests.append(time.perf_counter() - start)
            walls.append(sum(m.seconds for m in report.sweeps.values()))
            cpus.append(sum(m.cpu for m in report.sweeps.values()))
            again += sum(m.again for m in report.sweeps.values())
            wrong += report.failures
            probes = sum(len(rs) for rs in report.matrix.values())
        lifecycle.down(paths, runner, log=quiet)
        up, test = statistics.median(ups), statistics.median(tests)
        per_probe[n] = statistics.median(cpus) / probes * 1e6
        print(f"{n:>6} {len(allowed):>8} {probes:>7} {up:>6.2f}s {test:>6.2f}s "
              f"{up + test:>7.2f}s {statistics.median(walls):>6.2f}s {per_probe[n]:>9.1f} "
              f"{again:>6} {wrong:>6}")  # fmt: skip
        ok = ok and wrong == 0
        if n == 30:
            met = up + test <= 10
            ok = ok and met
            print(f"up + test at 30 guests: {up + test:.2f} s  (target <= 10 s: "
                  f"{'met' if met else 'MISSED'})")  # fmt: skip
    # Thousands of probes wait at once, so the matrix's wall time is a fixed wait (0.4 s a
    # mode) plus the work of sending and reading the probes, which is what grows.
    print(f"matrix CPU per probe, 30 vs 10 guests: {per_probe[30] / per_probe[10]:.2f}  "
          "(1.0: the matrix's work grows as the probes, and so as the flows)")  # fmt: skip
    return ok


def connect_times(src: str, address: str, port: int, count: int) -> list[float]:
    """`count` TCP connections from the namespace `src`, one at a time: seconds each."""

    def run() -> list[float]:
        netns.enter(src)
        out = []
        for _ in range(count):
            start = time.perf_counter()
            with socket.create_connection((address, port), timeout=2):
                pass
            out.append(time.perf_counter() - start)
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def filter_ratio(folder: Path, paths: LabPaths, rounds: int) -> bool:
    """A connection's time with the rules of 10 guests loaded, then those of 1,000."""
    runner: Runner = default_runner
    small = plan_of(grown(10, wide=True), folder, "wide-10")
    big = plan_of(grown(1000, wide=True), folder, "wide-1000")
    lifecycle.down(paths, runner, log=quiet)
    lifecycle.up(small, paths, runner, log=quiet)
    topo = Topology.from_plan(small, paths.prefix)
    src, dst = topo.machine("app0"), topo.machine("proxy")
    address = topo.address_for(src, dst)
    rules = {"10": firewall.rulesets(small, topo), "1000": firewall.rulesets(big, topo)}
    sizes = {k: sum(len(r.text) for r in v) for k, v in rules.items()}
    # Short rounds, alternating, each summed up by its median: the machine's load drifts
    # less within a round than over the whole run.
    samples: dict[str, list[float]] = {"10": [], "1000": []}
    try:
        for _ in range(rounds):
            for key in ("10", "1000"):
                firewall.apply_mode(runner, rules[key], firewall.Mode.BOTH)
                connect_times(src.netns, address, 443, 20)  # warm caches and conntrack
                samples[key].append(statistics.median(connect_times(src.netns, address, 443, 200)))
        # The allow matrix of the lab's machines under each rule set: the same outcomes.
        results: dict[str, list[matrix.FlowResult]] = {}
        for key in ("1000", "10"):
            firewall.apply_mode(runner, rules[key], firewall.Mode.BOTH)
            results[key] = matrix.check_mode(
                topo, small, lifecycle.all_ports(small), firewall.Mode.BOTH
            ).results
    finally:
        lifecycle.down(paths, runner, log=quiet)
    # The fastest round is the one the machine's other work disturbed least; the median
    # round is shown beside it.
    best = {k: min(v) for k, v in samples.items()}
    mid = {k: statistics.median(v) for k, v in samples.items()}
    ratio = best["1000"] / best["10"]
    print(f"\nfilters: TCP connection app0 -> proxy:443, {rounds} alternating rounds of 200 "
          "each (a round: its median), both layers loaded")  # fmt: skip
    for k, label in (("10", "   10"), ("1000", "1,000")):
        print(f"  rules of {label} guests ({sizes[k] / 1024:5.0f} KiB of nftables): fastest "
              f"round {best[k] * 1e6:6.1f} us, median round {mid[k] * 1e6:6.1f} us")  # fmt: skip
    met = ratio <= 1.1
    print(f"  ratio 1,000 / 10 guests: {ratio:.3f} fastest rounds, "
          f"{mid['1000'] / mid['10']:.3f} median rounds  (target <= 1.1: "
          f"{'met' if met else 'MISSED'})")  # fmt: skip
    outcomes = {k: [(r.flow, r.outcome) for r in v] for k, v in results.items()}
    same = outcomes["10"] == outcomes["1000"]
    wrong = {k: sum(not r.ok for r in v) for k, v in results.items()}
    print(f"  allow matrix ({len(results['10'])} flows): {wrong['10']} wrong with the rules of "
          f"10 guests, {wrong['1000']} with those of 1,000; outcomes "
          f"{'identical' if same else 'DIFFERENT'}")  # fmt: skip
    return met and same and wrong["10"] == wrong["1000"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inventory", type=Path, default=REPO / "inventory.toml")
    parser.add_argument("--only", choices=("lifecycle", "scale", "filters", "engines"))
    args = parser.parse_args()
    base = Path("/run/homestack-lab-bench")
    base.mkdir(mode=0o755, exist_ok=True)
    paths = LabPaths(root=base / "run", prefix="hsbench-", cache=base / "cache")
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.only in (None, "lifecycle"):
                plan = load_plan(args.inventory)
                ok = lifecycle_runs(plan, args.inventory.name, paths, args.runs)[0] and ok
            if args.only in (None, "scale"):
                ok = scale_runs(Path(tmp), paths, max(1, args.runs // 2)) and ok
            if args.only in (None, "filters"):
                ok = filter_ratio(Path(tmp), paths, 4 * args.runs) and ok
            if args.only in (None, "engines"):
                ok = engine_ratio(args.inventory, paths, max(1, args.runs // 2)) and ok
    finally:
        lifecycle.down(paths, default_runner, log=quiet)
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
