"""Network namespaces: create, wire, enter from a thread, find what runs inside, delete.

Nothing here links a namespace to the root namespace: every veth pair is created from
inside the hypervisor namespace with its peer moved straight into a lab namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from homestack.errors import UserError
from homestack.lab.topology import Topology
from homestack.process import Runner

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_local = threading.local()


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def listed(prefix: str) -> list[str]:
    """The namespaces under /run/netns that carry the lab's prefix."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


# Routed probes (guest -> gateway -> guest) use source ports from this range, outside the
# kernel's ephemeral ports. Guests route packets from and to these ports through the
# gateway instead of straight across the bridge, both ways, so the bridge filter sees
# neither the request nor the reply: only what the hypervisor routes can stop them.
ROUTED_PORTS = (61000, 61999)
ROUTED_TABLE = 100
WAN = "wan0"  # the LAN client's link towards the internet stand-in


def _sysctls(routes: bool) -> list[str]:
    """IPv6 off everywhere. A router forwards and sends no ICMP redirects (they would teach
    a guest to skip the gateway); a guest accepts none."""
    common = [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        "net.ipv4.conf.all.accept_redirects=0",
        "net.ipv4.conf.default.accept_redirects=0",
    ]
    if routes:
        return [
            *common,
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ]
    return common


def _batch(runner: Runner, netns: str, lines: list[str]) -> None:
    runner.run(["ip", "-n", netns, "-batch", "-"], check=True, input="\n".join(lines) + "\n")


def create(runner: Runner, topo: Topology, *, incus: bool = False) -> None:
    """Make every namespace and link of ``topo`` (the namespaces must not exist yet).

    With ``incus``, Incus made the hypervisor's namespace, the bridge and the guests'
    interfaces, and the guests' namespaces are its containers' (homestack.lab.incus)."""
    made = {topo.hypervisor.netns, *(g.netns for g in topo.guests)} if incus else set()
    for name in topo.namespaces:
        if name not in made:
            runner.run(["ip", "netns", "add", name], check=True)
    hv = topo.hypervisor
    c = topo.client
    routers = {hv.netns, c.netns}  # the LAN client is also the home router
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda ns: runner.run(
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", *_sysctls(ns in routers)],
                    check=True,
                ),
                topo.namespaces,
            )
        )
    lines = ["link set lo up"] + (
        []
        if incus
        else [
            f"link add {topo.bridge} type bridge",
            f"addr add {topo.gateway}/{topo.prefixlen} dev {topo.bridge}",
            f"link set {topo.bridge} up",
        ]
    )
    for g in () if incus else topo.guests:
        lines += [
            f"link add {g.tap} type veth peer name {g.interface} address {g.mac} netns {g.netns}",
            f"link set {g.tap} master {topo.bridge}",
            f"link set {g.tap} up",
        ]
    lines += [
        f"link add {topo.lan_interface} type veth peer name {c.interface} netns {c.netns}",
        f"addr add {topo.lan_gateway}/{_len(topo.lan_network)} dev {topo.lan_interface}",
        f"link set {topo.lan_interface} up",
    ]
    relay = topo.relay
    if relay is not None and topo.tunnel_interface and topo.tunnel_network:
        lines += [
            f"link add {topo.tunnel_interface} type veth peer name {topo.tunnel_interface}"
            f" netns {relay.netns}",
            f"addr add {topo.tunnel_gateway}/{_len(topo.tunnel_network)}"
            f" dev {topo.tunnel_interface}",
            f"link set {topo.tunnel_interface} up",
        ]
    _batch(runner, hv.netns, lines)
    net = topo.internet
    _batch(
        runner,
        c.netns,
        [
            f"link add {WAN} type veth peer name {net.interface} netns {net.netns}",
            f"addr add {topo.internet_gateway}/{_len(topo.internet_network)} dev {WAN}",
            f"link set {WAN} up",
        ],
    )

    def guest_side(netns: str, address: str, plen: int, iface: str, routes: list[str]) -> None:
        _batch(
            runner,
            netns,
            [
                "link set lo up",
                f"addr add {address}/{plen} dev {iface}",
                f"link set {iface} up",
                *routes,
            ],
        )

    ports = f"{ROUTED_PORTS[0]}-{ROUTED_PORTS[1]}"
    routed = [
        f"rule add sport {ports} table {ROUTED_TABLE}",
        f"rule add dport {ports} table {ROUTED_TABLE}",
        f"route add {topo.network} via {topo.gateway} table {ROUTED_TABLE}",
    ]
    jobs = [
        (
            g.netns,
            g.address,
            topo.prefixlen,
            g.interface,
            [f"route add default via {topo.gateway}", *routed],
        )
        for g in topo.guests
    ]
    back = [
        f"route add {n} via {topo.lan_gateway}"
        for n in (topo.network, topo.tunnel_network if relay else None)
        if n
    ]
    jobs.append((c.netns, c.address, _len(topo.lan_network), c.interface, back))
    jobs.append(
        (
            net.netns,
            net.address,
            _len(topo.internet_network),
            net.interface,
            [f"route add default via {topo.internet_gateway}"],
        )
    )
    if relay is not None and topo.tunnel_interface and topo.tunnel_network:
        jobs.append(
            (
                relay.netns,
                relay.address,
                _len(topo.tunnel_network),
                topo.tunnel_interface,
                [f"route add default via {topo.tunnel_gateway}"],
            )
        )
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda j: guest_side(*j), jobs))
    # Once the LAN side is up: everything else leaves through the LAN, as at home.
    _batch(runner, hv.netns, [f"route add default via {c.address}"])


def _len(cidr: str) -> int:
    return int(cidr.split("/")[1])


def inode(name: str) -> int | None:
    try:
        return (NETNS_DIR / name).stat().st_ino
    except FileNotFoundError:
        return None


def pids_in(inodes: Iterable[int]) -> list[int]:
    """Every live process whose network namespace is one of ``inodes``."""
    wanted = set(inodes)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino in wanted and not is_gone(int(entry.name)):
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def is_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie counts: init reaps orphans with a delay)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every PID has exited; return those still running after ``timeout``."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left:
        left = [p for p in left if not is_gone(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return left


def delete(runner: Runner, names: Iterable[str]) -> None:
    for name in names:
        if exists(name):
            runner.run(["ip", "netns", "del", name], check=True)


def enter(name: str) -> None:
    """Move the calling thread (only it) into namespace ``name``; sockets it opens stay there."""
    if getattr(_local, "netns", None) == name:
        return
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_fd(fd, name)
    finally:
        os.close(fd)


def enter_fd(fd: int, name: str) -> None:
    """`enter` through an open namespace file (``name`` says which, for messages)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise UserError(f"setns {name}: {os.strerror(ctypes.get_errno())}")
    _local.netns = name
