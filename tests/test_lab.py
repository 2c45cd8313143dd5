"""`tools lab` end to end: real Caddy, dnsmasq, PostgreSQL and nftables in namespaces.

Runs the command itself (as a user would) with its own name prefix and state directory,
so it never touches a lab someone started by hand. Needs root and the Debian daemons.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, REPO, requires_nix
from labenv import TOOLS, lab_environment, needs_the_lab

from homestack.lab import firewall, probes
from homestack.lab.topology import Topology
from homestack.plan import load_plan
from homestack.process import default_runner

PREFIX = f"hst{os.getpid()}-"  # two test runs at once never share a name
pytestmark = [requires_nix, *needs_the_lab()]

EXTRA_GUEST = """
[guests.id2]
host = "homelab"
address = "192.168.100.30"
vcpu = 1
memory = 512
services = ["pocket-id"]
state_size = 256
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8BqTTMc0jt8j9tKsDxUqX/dBQc52H0VQUMYZmC9jmq id2"
age_key = "age17wqkjf6ph5c5lnhxyhnfh6esuz7yx705sepm7zjnzcmds500hv0szdkk0f"
routes = [{ name = "id2", port = 1411 }]
databases = [{ name = "pocketid2", server = "db" }]
allow = [{ from = ["vpn"], port = 1411, proto = "tcp" }]
"""


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with lab_environment("lab-test", PREFIX) as environ:
        yield environ
        subprocess.run([TOOLS, "lab", "down"], env=environ, check=False, capture_output=True)
        assert_nothing_left(environ)


def lab(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [TOOLS, "lab", *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"tools lab {' '.join(args)}: exit {result.returncode}\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def assert_nothing_left(env: dict[str, str]) -> None:
    """No namespace, process, resolver file or state file of this lab remains."""
    run_dir = env["HOMESTACK_LAB_DIR"]
    names = [p.name for p in Path("/run/netns").glob(f"{PREFIX}*")]
    assert names == [], f"namespaces left: {names}"
    etc = [p.name for p in Path("/etc/netns").glob(f"{PREFIX}*")]
    assert etc == [], f"/etc/netns entries left: {etc}"
    assert not Path(run_dir).exists(), "state directory left"
    shm = [p.name for p in Path("/dev/shm").glob(f"{PREFIX}*")]
    assert shm == [], f"/dev/shm entries left: {shm}"
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if (run_dir in cmdline or env["HOMESTACK_LAB_CACHE"] in cmdline) and state != "Z":
                left.append(cmdline)
    assert left == [], f"processes left: {left}"
    assert not list(Path(env["HOMESTACK_LAB_CACHE"]).glob("*.tmp-*")), "cache temp dirs left"
    cache = Path(env["HOMESTACK_LAB_CACHE"])
    kept = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert kept in ([], ["pg15-template-v2"]), f"unexpected cache entries: {kept}"


def results(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    out = lab(env, "test", "--json", check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def root_listeners() -> set[tuple[str, str]]:
    """(protocol, local address:port) of every listening socket in this (the root) namespace."""
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == ("0A" if table.startswith("tcp") else "07"):
                found.add((table, fields[1]))
    return found


def pids_in_lab() -> set[int]:
    """Every live process inside one of this test's lab namespaces."""
    inodes = {p.stat().st_ino for p in Path("/run/netns").glob(f"{PREFIX}*")}
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "ns" / "net").stat().st_ino in inodes:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.add(int(proc.name))
        except OSError:
            continue
    return found


def proc_of(env: dict[str, str], role: str) -> int:
    state = json.loads((Path(env["HOMESTACK_LAB_DIR"]) / "state.json").read_text())
    pid: int = next(p["pid"] for p in state["procs"] if p["role"] == role)
    return pid


def test_example_inventory(env: dict[str, str]) -> None:
    listening = root_listeners()
    up = lab(env, "up", "-i", str(EXAMPLE))
    # Everything listens inside the lab's namespaces: nothing the machine's own services
    # hold (sshd, a PostgreSQL, a DNS server) is taken, nothing new appears.
    assert root_listeners() <= listening
    assert "PocketID stand-in" in up.stdout and "STAND-IN, not the real service" in up.stdout
    again = lab(env, "up", "-i", str(EXAMPLE))
    assert "already up" in again.stdout
    code, report = results(env)
    assert code == 0, json.dumps([c for c in report["checks"] if not c["ok"]], indent=1)
    assert report["ok"] and report["failures"] == 0
    groups = {c["group"] for c in report["checks"]}
    assert groups == {"dns", "https", "https-untrusted", "postgresql", "matrix"}
    assert set(report["matrix"]) == {"guest", "bridge", "both"}
    sweeps = [c for c in report["checks"] if c["group"] == "matrix"]
    assert len(sweeps) == 3
    assert all("no packet dropped by the kernel" in c["detail"] for c in sweeps)
    both = {
        (r["src"], r["dst"], r["port"], r["proto"]): r
        for r in report["matrix"]["both"]
        if r["path"] == "direct"
    }
    assert both[("auth", "db", 5432, "tcp")]["outcome"] == "open"
    assert both[("proxy", "db", 5432, "tcp")]["outcome"] != "open"
    assert both[("lan", "proxy", 443, "tcp")]["outcome"] == "open"
    for mode in ("guest", "bridge", "both"):
        assert_layer_blocks_what_it_is_responsible_for(report["matrix"][mode], mode)
    logins = {c["name"]: c["ok"] for c in report["checks"] if c["group"] == "postgresql"}
    assert logins["proxy as pocketid@pocketid (firewalls and pg_hba)"]
    status = lab(env, "status")
    assert status.stdout.count("STAND-IN") == 2 and "STOPPED" not in status.stdout
    # A broken service makes the test fail with exit code 2.
    os.kill(proc_of(env, "dnsmasq"), signal.SIGKILL)
    code, report = results(env)
    assert code == 2 and not report["ok"]
    assert any(not c["ok"] and c["group"] == "dns" for c in report["checks"])
    lab(env, "down")
    assert_nothing_left(env)
    lab(env, "down")  # idempotent


def assert_layer_blocks_what_it_is_responsible_for(rows: list[dict[str, Any]], mode: str) -> None:
    """With only ``mode``'s rule sets loaded, every flow that layer is responsible for is
    open exactly when the plan allows it; from inside a guest, the hypervisor's SSH, the LAN,
    the internet and a guest the plan keeps apart (reached through the gateway) are blocked,
    and the allowed outbound flows work."""
    assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    for r in rows:
        if not r["gap"]:
            assert (r["outcome"] == "open") == r["allowed"], r
    if mode != "guest":
        assert not any(r["gap"] for r in rows), "the hypervisor filters every flow"
    flows = {(r["src"], r["dst"], r["port"], r["proto"], r["path"]): r["outcome"] for r in rows}
    for guest in ("auth", "db", "proxy", "vpn"):
        assert flows[(guest, "homelab", 22, "tcp", "direct")] != "open"
        assert flows[(guest, "homelab", 123, "udp", "direct")] == "open"
        for outside in ("lan", "internet", "cloud-relay"):
            assert flows[(guest, outside, 443, "tcp", "direct")] != "open"
    assert flows[("proxy", "db", 5432, "tcp", "routed")] != "open"
    assert flows[("auth", "vpn", 33073, "tcp", "routed")] != "open"
    assert flows[("auth", "db", 5432, "tcp", "routed")] == "open"
    assert flows[("proxy", "internet", 53, "udp", "direct")] == "open"
    assert flows[("proxy", "internet", 53, "tcp", "direct")] == "open"
    assert flows[("auth", "internet", 53, "udp", "direct")] != "open"
    assert flows[("cloud-relay", "proxy", 443, "tcp", "direct")] == "open"
    assert flows[("cloud-relay", "proxy", 53, "tcp", "direct")] != "open"
    if mode != "guest":
        assert flows[("cloud-relay", "homelab", 22, "tcp", "direct")] != "open"
        assert flows[("cloud-relay", "lan", 443, "tcp", "direct")] != "open"
        assert flows[("lan", "homelab", 22, "tcp", "direct")] == "open"
        assert flows[("lan", "homelab", 5432, "tcp", "direct")] != "open"


def test_routed_path_gets_past_the_bridge_filter(env: dict[str, str]) -> None:
    """The routed probes really are routed: with the bridge filter alone (the hypervisor's
    `inet` table and the guests' firewalls off) a flow the plan forbids is blocked across
    the bridge but open through the gateway; the `inet` table closes it again."""
    lab(env, "up", "-i", str(EXAMPLE))
    plan = load_plan(EXAMPLE)
    topo = Topology.from_plan(plan, PREFIX)
    sets = firewall.rulesets(plan, topo)
    bridge_only = [
        firewall.Ruleset(rs.netns, plan["artifacts"]["bridgeNftables"], True)
        for rs in sets
        if rs.is_bridge
    ]
    db = topo.machine("db").address

    def tcp(src: str, timeout: float, *, routed: bool) -> str:
        # A probe moves its thread into the source namespace: never this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(
                probes.tcp, topo.machine(src).netns, db, 5432, timeout, routed=routed
            ).result()

    try:
        firewall.apply_mode(default_runner, sets, firewall.Mode.NONE)
        firewall.apply_mode(default_runner, bridge_only, firewall.Mode.BRIDGE)
        assert tcp("proxy", 0.5, routed=False) == probes.DROPPED
        assert tcp("proxy", 2.0, routed=True) == probes.OPEN
        firewall.apply_mode(default_runner, sets, firewall.Mode.BRIDGE)
        assert tcp("proxy", 0.5, routed=True) == probes.DROPPED
        assert tcp("auth", 2.0, routed=True) == probes.OPEN
    finally:
        firewall.apply_mode(default_runner, sets, firewall.Mode.BOTH)
    lab(env, "down")
    assert_nothing_left(env)


def test_one_more_guest_and_flow(env: dict[str, str], tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(EXAMPLE.read_text() + EXTRA_GUEST)
    lab(env, "up", "-i", str(inventory))
    code, report = results(env)
    assert code == 0, json.dumps([c for c in report["checks"] if not c["ok"]], indent=1)
    both = {
        (r["src"], r["dst"], r["port"], r["proto"]): r
        for r in report["matrix"]["both"]
        if r["path"] == "direct"
    }
    assert both[("vpn", "id2", 1411, "tcp")] == {
        "src": "vpn",
        "dst": "id2",
        "port": 1411,
        "proto": "tcp",
        "path": "direct",
        "allowed": True,
        "outcome": "open",
        "ok": True,
        "gap": False,
    }
    assert both[("auth", "id2", 1411, "tcp")]["outcome"] != "open"
    assert both[("id2", "db", 5432, "tcp")]["outcome"] == "open"
    names = {c["name"] for c in report["checks"] if c["ok"]}
    assert "https://id2.home.arpa/" in names
    assert "id2 as pocketid2@pocketid2 (pg_hba alone)" in names
    lab(env, "down")
    assert_nothing_left(env)


# One test item a cycle, so a run shows its progress instead of going quiet for a minute.
_RNG = random.Random(6)  # noqa: S311 - kill times, not secrets
# When to kill `up`: a share of how long the last whole `up` took (the first cycle is one).
_KILL_AT = [_RNG.uniform(0.15, 0.9) for _ in range(20)]
_UP_TOOK: list[float] = []
_KILLS_TRIED: list[int] = []
_KILLS_LANDED: list[int] = []


@pytest.mark.parametrize("cycle", range(20))
def test_twenty_cycles_with_kill_leave_nothing(env: dict[str, str], cycle: int) -> None:
    if cycle % 4 == 1:
        # kill -9 of `up` part-way through: the next `down` must still clean up.
        proc = subprocess.Popen(
            [TOOLS, "lab", "up", "-i", str(EXAMPLE)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(_KILL_AT[cycle] * (_UP_TOOK[-1] if _UP_TOOK else 1.0))
        _KILLS_TRIED.append(cycle)
        if proc.poll() is None:
            _KILLS_LANDED.append(cycle)
        proc.kill()
        proc.wait()
    else:
        started = time.monotonic()
        lab(env, "up", "-i", str(EXAMPLE))
        _UP_TOOK.append(time.monotonic() - started)
        code, report = results(env)
        assert code == 0, (cycle, [c for c in report["checks"] if not c["ok"]])
    lab(env, "down")
    assert_nothing_left(env)
    if cycle == 19 and len(_KILLS_TRIED) == 5:
        assert len(_KILLS_LANDED) >= 3, "the kill -9 cycles should mostly hit a running `up`"


def test_an_unreachable_proxy_is_a_failed_check_not_a_crash(
    env: dict[str, str], tmp_path: Path
) -> None:
    # 443 open to the guests only: the LAN client's connection is dropped (a timeout).
    inventory = tmp_path / "inventory.toml"
    closed = EXAMPLE.read_text().replace(
        '{ from = ["lan", "guests"], port = 443, proto = "tcp" }',
        '{ from = ["guests"], port = 443, proto = "tcp" }',
    )
    assert closed != EXAMPLE.read_text()
    inventory.write_text(closed)
    lab(env, "up", "-i", str(inventory))
    code, report = results(env)
    https = [c for c in report["checks"] if c["group"] == "https"]
    assert code == 2 and https and not any(c["ok"] for c in https)
    assert all("no answer from" in c["detail"] for c in https), https
    assert all(c["ok"] for c in report["checks"] if c["group"] == "dns")
    # Caddy killed: the connection is refused.
    lab(env, "up", "--replace", "-i", str(EXAMPLE))
    os.kill(proc_of(env, "caddy"), signal.SIGKILL)
    code, report = results(env)
    https = [c for c in report["checks"] if c["group"].startswith("https")]
    assert code == 2 and https and not any(c["ok"] for c in https)
    assert all("Connection refused" in c["detail"] for c in https), https
    text = lab(env, "test", check=False)
    assert text.returncode == 2 and "Traceback" not in text.stderr
    assert "FAIL  https://id.home.arpa/" in text.stdout
    lab(env, "down")
    assert_nothing_left(env)


def test_up_from_another_inventory_refuses_to_replace_a_running_lab(
    env: dict[str, str], tmp_path: Path
) -> None:
    lab(env, "up", "-i", str(EXAMPLE))
    before = lab(env, "status", "--json").stdout
    other = tmp_path / "other.toml"
    other.write_text(EXAMPLE.read_text())
    refused = lab(env, "up", "-i", str(other), check=False)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: tools lab up: a lab from {EXAMPLE} is running; `tools lab down` it first, "
        f"or run `tools lab up --replace -i {other}`\n"
    )
    assert lab(env, "status", "--json").stdout == before  # untouched, same processes
    replaced = lab(env, "up", "--replace", "-i", str(other))
    assert f"lab up from {other}" in replaced.stdout
    lab(env, "down")
    assert_nothing_left(env)


def test_down_after_an_interrupted_up_counts_every_process_it_stopped(env: dict[str, str]) -> None:
    lab(env, "up", "-i", str(EXAMPLE))
    # What a killed `up` leaves: not complete, and daemons started but not yet recorded.
    state_file = Path(env["HOMESTACK_LAB_DIR"]) / "state.json"
    state = json.loads(state_file.read_text())
    state["complete"] = False
    state["procs"] = [p for p in state["procs"] if p["role"] not in {"caddy", "postgresql"}]
    state_file.write_text(json.dumps(state))
    running = pids_in_lab()
    assert len(running) > len(state["procs"])  # PostgreSQL alone runs several
    out = lab(env, "down")
    namespaces = len(state["namespaces"])
    assert out.stdout.splitlines()[0] == (
        f"lab down: removed {namespaces} namespaces, stopped {len(running)} processes"
    )
    assert_nothing_left(env)


def test_the_lab_runs_from_a_checkout_other_users_cannot_enter(env: dict[str, str]) -> None:
    # Debian's /root is 0700: the stand-ins (as nobody) and the daemons (as caddy,
    # postgres) must not read anything from the checkout.
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("copies the checkout's files as git lists them: needs git and a checkout")
    closed = Path(tempfile.mkdtemp(prefix="homestack-closed-"))
    try:
        assert closed.stat().st_mode & 0o777 == 0o700
        clone = closed / "homestack"
        files = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            check=True,
            capture_output=True,
        ).stdout.split(b"\0")
        for name in filter(None, (f.decode() for f in files)):
            source = REPO / name
            if source.is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, clone / name)
        here = {**env, "PYTHONPATH": str(clone / "tools")}
        where = subprocess.run(
            [sys.executable, "-c", "import homestack.lab; print(homestack.lab.__file__)"],
            env=here,
            check=True,
            capture_output=True,
            text=True,
            cwd=clone,
        ).stdout
        assert where.startswith(str(clone)), where
        for args in (["up"], ["test"], ["down"]):
            result = subprocess.run(
                [sys.executable, "-c", "from homestack.cli import main; main()", "lab", *args],
                env=here,
                cwd=clone,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert_nothing_left(env)
    finally:
        shutil.rmtree(closed)
