"""Benchmark: plan evaluation for 10 to 10,000 guests, the inventory check, CLI start-up.

    python bench/plan.py [--runs N]

Prints the median evaluation time (nix-instantiate of lib/eval.nix, the same call
`tools inventory plan` makes) per size, with Nix's own CPU time and allocation
(NIX_SHOW_STATS) of the last run, and the ratios t(1000)/t(100) and t(10k)/t(1k);
targets: 1,000 guests under 2 s, 10,000 under 5 s, ratios at most 12 and 11. The plan of
10, 100 and 1,000 guests (every size with --check-all) is then run through the programs
that read it (tests/artifact_checks.py: nft -c, caddy adapt, dnsmasq --test, PostgreSQL's
hba parser, wg) and "artifacts valid" printed. Then the
whole `tools inventory check` command on 4,000 guests against the Nix plan of the same file
(target at most 1.2x: Python asks lib and judges nothing itself). Then `tools --help`
against `python -c pass` on the same interpreter; target at most 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from artifact_checks import check_rendered

WG_HV = "gfPAXRomvAvxosogdhwjV1T1vHRvuiVYGtD2MCvcwzg="
WG_RELAY = "bXf8BWhoPhtkyXpn8BnuiPzmRTb9Fpo5yeEq+pUSvjw="


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
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN2yUVpUvg2k0jgI1KbBGzSo+Di7dxRZhOgxblmzCL8b admin"
    return {
        "domain": "bench.home.arpa",
        "users": {"admin": {"admin": True, "ssh_keys": [key]}},
        "networks": {"guests": {"cidr": "10.10.0.0/16", "gateway": "10.10.0.1"},
                     "tunnel": {"cidr": "10.99.0.0/24"}},
        "hosts": {"hv": {"role": "hypervisor", "system": "x86_64-linux", "target": "root@hv",
                         "lan_interface": "eth0",
                         "zfs": {"pool": "tank", "host_id": "0a0b0c0d"},
                         "wireguard": {"relay": "vps", "address": "10.99.0.2",
                                       "public_key": WG_HV}},
                  "vps": {"role": "relay", "system": "x86_64-linux",
                            "target": "root@203.0.113.10", "public_address": "203.0.113.10",
                            "wireguard": {"address": "10.99.0.1", "port": 51820,
                                          "public_key": WG_RELAY}}},
        "guests": guests,
    }  # fmt: skip


def time_plan(path: Path, runs: int) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """The median wall time, Nix's statistics of the last run, and the plan."""
    times = []
    stats = path.with_suffix(".stats.json")
    env = {**os.environ, "NIX_SHOW_STATS": "1", "NIX_SHOW_STATS_PATH": str(stats)}
    output = path.with_suffix(".plan.json")  # a file, not a pipe: Python reading 80 MB
    for _ in range(runs):  # of JSON at 10,000 guests would be timed with the plan
        with output.open("wb") as sink:
            start = time.perf_counter()
            out = subprocess.run(
                ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode",
                 str(REPO / "lib" / "eval.nix"), "--argstr", "inventory", str(path)],
                check=False, stdout=sink, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            times.append(time.perf_counter() - start)
        if out.returncode != 0:
            sys.exit(f"{path}: the plan failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(output.read_text())
    return statistics.median(times), json.loads(stats.read_text()), result["plan"]


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
    parser.add_argument(
        "--check-all", action="store_true", help="check 4,000 and 10,000 guests too (minutes)"
    )
    args = parser.parse_args()
    results: dict[int, float] = {}
    cpu: dict[int, float] = {}
    tools = str(Path(sys.executable).parent / "tools")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000, 4000, 10000):
            path = Path(tmp) / f"inventory-{n}.toml"
            path.write_text(tomli_w.dumps(inventory(n)))
            results[n], stats, plan = time_plan(path, args.runs)
            cpu[n] = stats["cpuTime"]
            print(f"plan, {n:>5} guests: {results[n]:.3f} s (median of {args.runs}); Nix: "
                  f"{cpu[n]:.3f} s CPU, {stats['gc']['totalBytes'] / 2**20:.0f} MiB allocated",
                  flush=True)  # fmt: skip
            if n <= 1000 or args.check_all:
                start = time.perf_counter()
                work = Path(tmp) / f"check-{n}"
                work.mkdir()
                try:
                    count = check_rendered(plan, work, pg=True)
                except AssertionError as e:
                    sys.exit(f"plan, {n} guests: an artifact is INVALID: {e}")
                print(f"plan, {n:>5} guests: artifacts valid ({count} files through their "
                      f"programs, {time.perf_counter() - start:.1f} s)", flush=True)  # fmt: skip
        check = time_command([tools, "inventory", "check", str(Path(tmp) / "inventory-4000.toml")],
                             args.runs)  # fmt: skip
    ratio = results[1000] / results[100]
    print(f"ratio t(1000)/t(100): {ratio:.2f}  (target <= 12; 1,000 guests target < 2 s: "
          f"{'met' if results[1000] < 2 and ratio <= 12 else 'MISSED'})")  # fmt: skip
    big = results[10000] / results[1000]
    print(f"ratio t(10000)/t(1000): {big:.2f}  (target <= 11; 10,000 guests target <= 5 s: "
          f"{'met' if results[10000] <= 5 and big <= 11 else 'MISSED'})")  # fmt: skip
    print(f"Nix CPU time ratio t(10000)/t(1000): {cpu[10000] / cpu[1000]:.2f}; 10,000 guests "
          f"{cpu[10000]:.2f} s")  # fmt: skip
    vs = check / results[4000]
    print(f"tools inventory check, 4000 guests: {check:.3f} s; {vs:.2f}x the plan of the same "
          f"file  (target <= 1.2: {'met' if vs <= 1.2 else 'MISSED'})")  # fmt: skip
    base = time_command([sys.executable, "-c", "pass"], args.runs * 2)
    cli = time_command([tools, "--help"], args.runs * 2)
    print(
        f"python -c pass: {base * 1000:.1f} ms; tools --help: {cli * 1000:.1f} ms; "
        f"ratio {cli / base:.2f}  (target <= 4: {'met' if cli / base <= 4 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
