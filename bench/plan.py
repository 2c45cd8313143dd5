"""Benchmark: plan evaluation time for 10, 100 and 1,000 guests, and CLI start-up.

    python bench/plan.py [--runs N]

Prints the median evaluation time (nix-instantiate of lib/eval.nix, the same call
`tools inventory plan` makes) per size and the ratio t(1000)/t(100); targets: 1,000 guests
under 2 s and the ratio at most 12. Then `tools --help` against `python -c pass` on the
same interpreter; target at most 4x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent


def inventory(n: int) -> dict[str, object]:
    """A homelab with n guests: a proxy, a database, and n-2 web apps with a route and a DB."""
    guests: dict[str, object] = {
        "proxy": {"host": "hv", "address": "10.10.0.2", "vcpu": 1, "memory": 512,
                  "services": ["caddy", "dnsmasq"], "state_size": 512,
                  "public": [{"port": 443, "proto": "tcp"}],
                  "allow": [{"from": ["lan", "guests"], "port": 443, "proto": "tcp"},
                            {"from": ["lan", "guests"], "port": 53, "proto": "udp"}]},
        "db": {"host": "hv", "address": "10.10.0.3", "vcpu": 2, "memory": 2048,
               "services": ["postgresql"], "state_size": 8192},
    }  # fmt: skip
    for i in range(n - 2):
        address = f"10.10.{(i + 4) // 256}.{(i + 4) % 256}"
        guests[f"app{i}"] = {
            "host": "hv", "address": address, "vcpu": 1, "memory": 256, "services": [],
            "ports": [{"port": 3000, "proto": "tcp"}], "state_size": 256,
            "routes": [{"name": f"app{i}", "port": 3000}],
            "databases": [{"name": f"app{i}", "server": "db"}],
        }  # fmt: skip
    return {
        "domain": "bench.home.arpa",
        "users": {"admin": {"admin": True, "ssh_keys": []}},
        "networks": {"guests": {"cidr": "10.10.0.0/20", "gateway": "10.10.0.1"}},
        "hosts": {"hv": {"role": "hypervisor", "system": "x86_64-linux", "target": "root@hv",
                         "lan_interface": "eth0",
                         "zfs": {"pool": "tank", "host_id": "0a0b0c0d"}}},
        "guests": guests,
    }  # fmt: skip


def time_plan(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode",
             str(REPO / "lib" / "eval.nix"), "--argstr", "inventory", str(path)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_command(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000):
            path = Path(tmp) / f"inventory-{n}.toml"
            path.write_text(tomli_w.dumps(inventory(n)))
            results[n] = time_plan(path, args.runs)
            print(f"plan, {n:>5} guests: {results[n]:.3f} s (median of {args.runs})", flush=True)
    ratio = results[1000] / results[100]
    print(f"ratio t(1000)/t(100): {ratio:.2f}  (target <= 12; 1,000 guests target < 2 s: "
          f"{'met' if results[1000] < 2 and ratio <= 12 else 'MISSED'})")  # fmt: skip
    tools = str(Path(sys.executable).parent / "tools")
    base = time_command([sys.executable, "-c", "pass"], args.runs * 2)
    cli = time_command([tools, "--help"], args.runs * 2)
    print(
        f"python -c pass: {base * 1000:.1f} ms; tools --help: {cli * 1000:.1f} ms; "
        f"ratio {cli / base:.2f}  (target <= 4: {'met' if cli / base <= 4 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
