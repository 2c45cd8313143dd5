"""The matrix's sweep (homestack.lab.sweep) against real sockets in two namespaces of its own.

What must hold, because the allow matrix's leak detection rests on it:
- every probe gets the verdict a lone blocking probe (homestack.lab.probes) gets, except
  that a refusal by ICMP may come out as a drop: the kernel rate-limits ICMP errors
  (net.ipv4.icmp_msgs_per_sec); both mean "not open";
- an answer that comes within the timeout counts, however many probes wait at once;
- an answer that comes after it does not;
- when the kernel drops packets on its own (here: a listener whose accept queue is full),
  the sweep notices, runs again with fewer at once, and says so when that does not help.

Needs root, iproute2 and nftables.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from homestack.lab import checks, daemons, firewall, matrix, netns, probes, sweep

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(
        any(shutil.which(p) is None for p in ("ip", "nft")), reason="iproute2 or nftables missing"
    ),
]

T = TypeVar("T")
TAG = f"hsw{os.getpid()}"
CLIENT, SERVER = f"{TAG}-c", f"{TAG}-s"
CLIENT_IP, SERVER_IP = "10.250.0.1", "10.250.0.2"
OPEN_TCP, DROP_TCP, CLOSED_TCP = 7001, 7002, 7003
ECHO_UDP, DROP_UDP, CLOSED_UDP, SLOW_UDP, LATE_UDP = 7101, 7102, 7103, 7104, 7105
FULL_TCP = 7201  # a listener that never accepts, with the shortest queue
SLOW, LATE = 0.25, 0.8  # seconds the slow and the late UDP servers wait before answering
RULES = f"""table inet {TAG} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {DROP_TCP} drop
    udp dport {DROP_UDP} drop
  }}
}}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Servers:
    sockets: list[socket.socket]
    stop: threading.Event


def _in(name: str, make: Callable[[], T]) -> T:
    """``make()`` on a thread inside namespace ``name`` (its sockets stay there)."""

    def inside() -> T:
        netns.enter(name)
        return make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(inside).result()


def _udp_server(port: int, delay: float, stop: threading.Event) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((SERVER_IP, port))
    sock.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            if delay:
                threading.Timer(delay, sock.sendto, (data, peer)).start()
            else:
                sock.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


@pytest.fixture(scope="module")
def pair() -> Iterator[Servers]:
    ip("netns", "add", CLIENT)
    ip("netns", "add", SERVER)
    stop = threading.Event()
    socks: list[socket.socket] = []
    try:
        ip("-n", CLIENT, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", SERVER)
        ip("-n", CLIENT, "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
        ip("-n", SERVER, "addr", "add", f"{SERVER_IP}/24", "dev", "s0")
        for ns, dev in ((CLIENT, "c0"), (SERVER, "s0")):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", SERVER, "nft", "-f", "-"], input=RULES,
                       text=True, check=True, capture_output=True)  # fmt: skip

        def listeners() -> list[socket.socket]:
            tcp = socket.socket()
            tcp.bind((SERVER_IP, OPEN_TCP))
            tcp.listen(4096)
            full = socket.socket()
            full.bind((SERVER_IP, FULL_TCP))
            full.listen(0)  # never accepted: one connection fills it
            udp = [
                _udp_server(port, delay, stop)
                for port, delay in ((ECHO_UDP, 0.0), (SLOW_UDP, SLOW), (LATE_UDP, LATE))
            ]
            return [tcp, full, *udp]

        socks = _in(SERVER, listeners)
        tcp = socks[0]

        def accept() -> None:
            tcp.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = tcp.accept()
                    conn.close()
                except (TimeoutError, OSError):
                    continue

        threading.Thread(target=accept, daemon=True).start()
        yield Servers(socks, stop)
    finally:
        stop.set()
        time.sleep(0.3)
        for s in socks:
            s.close()
        for ns in (CLIENT, SERVER):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def batch(port: int, proto: str, count: int, *, expected: bool = False) -> list[sweep.Probe]:
    return [sweep.Probe(CLIENT, SERVER_IP, port, proto, False, expected) for _ in range(count)]


def lone(p: sweep.Probe, timeout: float) -> str:
    check = probes.tcp if p.proto == "tcp" else probes.udp
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(check, p.netns, p.address, p.port, timeout).result()


def test_each_verdict_is_the_lone_probes(pair: Servers) -> None:
    kinds = [
        (OPEN_TCP, "tcp"),
        (DROP_TCP, "tcp"),
        (CLOSED_TCP, "tcp"),
        (ECHO_UDP, "udp"),
        (DROP_UDP, "udp"),
        (CLOSED_UDP, "udp"),
    ]
    probes_ = [p for port, proto in kinds for p in batch(port, proto, 500)]
    result = sweep.run(probes_, 0.4, watch=[SERVER])
    assert result.lost == {}
    for port, proto in kinds:
        want = lone(sweep.Probe(CLIENT, SERVER_IP, port, proto), 0.4)
        got = Counter(o for p, o in zip(probes_, result.outcomes, strict=True) if p.port == port)
        if port == CLOSED_UDP:  # ICMP port unreachable, rate-limited by the kernel
            assert want == probes.REFUSED and probes.OPEN not in got, got
        else:
            assert got == Counter({want: 500}), (port, proto, got)
    assert lone(sweep.Probe(CLIENT, SERVER_IP, OPEN_TCP, "tcp"), 0.4) == probes.OPEN
    assert lone(sweep.Probe(CLIENT, SERVER_IP, DROP_TCP, "tcp"), 0.4) == probes.DROPPED
    assert lone(sweep.Probe(CLIENT, SERVER_IP, CLOSED_TCP, "tcp"), 0.4) == probes.REFUSED


def test_no_drop_is_called_before_its_timeout(pair: Servers) -> None:
    started = time.monotonic()
    result = sweep.run(batch(DROP_TCP, "tcp", 5000), 0.4, watch=[SERVER])
    assert result.outcomes == [probes.DROPPED] * 5000
    assert time.monotonic() - started >= 0.4


def test_an_answer_within_the_timeout_counts_under_a_full_window(pair: Servers) -> None:
    """A slow answer among thousands of drops: open, every time."""
    slow = batch(SLOW_UDP, "udp", 300)
    mixed = batch(DROP_TCP, "tcp", 3000) + slow + batch(DROP_UDP, "udp", 3000)
    result = sweep.run(mixed, 0.4, watch=[SERVER])
    got = Counter(o for p, o in zip(mixed, result.outcomes, strict=True) if p.port == SLOW_UDP)
    assert got == Counter({probes.OPEN: 300})


def test_an_answer_after_the_timeout_does_not(pair: Servers) -> None:
    result = sweep.run(batch(LATE_UDP, "udp", 50), 0.4, watch=[SERVER])
    assert result.outcomes == [probes.DROPPED] * 50
    patient = sweep.run(batch(LATE_UDP, "udp", 50), 2.0, watch=[SERVER])
    assert patient.outcomes == [probes.OPEN] * 50


def test_a_full_accept_queue_is_noticed_not_read_as_a_drop(pair: Servers) -> None:
    """Probes nobody expects to be answered, at a listener that never accepts: a leak that
    overflows a queue would look filtered. The sweep sees the listener's drop counter move,
    runs again with a smaller window, and reports what it lost."""
    result = sweep.run(batch(FULL_TCP, "tcp", 400), 0.4, watch=[SERVER])
    assert result.runs == sweep.ATTEMPTS
    assert result.window < sweep.WINDOW
    assert any("listen" in k and k.startswith(SERVER) for k in result.lost), result.lost
    check = checks._sweep_check(firewall.Mode.BOTH, matrix.ModeResult([], [result]))
    assert not check.ok and "the kernel dropped packets on its own" in check.detail


def test_expected_answers_are_held_to_a_few_per_listener(pair: Servers) -> None:
    """Expected answers are spread out (dnsmasq's TCP queue is 32): none is lost."""
    result = sweep.run(batch(OPEN_TCP, "tcp", 2000, expected=True), 0.4, watch=[SERVER])
    assert result.outcomes == [probes.OPEN] * 2000
    assert result.lost == {}


def test_routed_probes_use_the_routed_ports_without_clashing(pair: Servers) -> None:
    """More routed probes than routed source ports: they wait for a port, none fails."""
    low, high = netns.ROUTED_PORTS
    count = (high - low + 1) * 2
    routed = [sweep.Probe(CLIENT, SERVER_IP, DROP_UDP, "udp", True) for _ in range(count)]
    routed += [sweep.Probe(CLIENT, SERVER_IP, OPEN_TCP, "tcp", True) for _ in range(200)]
    result = sweep.run(routed, 0.3, watch=[SERVER])
    assert Counter(result.outcomes) == Counter({probes.DROPPED: count, probes.OPEN: 200})


def test_the_callers_thread_stays_where_it_was(pair: Servers) -> None:
    here = Path("/proc/thread-self/ns/net")
    before = here.stat().st_ino
    sweep.run(batch(OPEN_TCP, "tcp", 10), 0.4)
    assert here.stat().st_ino == before


def test_a_gone_namespace_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="is gone"):
        sweep.run([sweep.Probe(f"{TAG}-nowhere", SERVER_IP, 1, "tcp")], 0.1)


def test_sock_diag_sees_the_listeners_proc_sees(pair: Servers) -> None:
    """wait_listening's source (sock_diag) against the slow one it replaced (/proc)."""
    inside = subprocess.Popen(["ip", "netns", "exec", SERVER, "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        listeners = None
        while listeners is None and time.monotonic() < deadline:  # until `ip` has entered it
            listeners = daemons.Listeners.of(inside.pid)
            time.sleep(0.01)
        assert listeners is not None
        try:
            for proto, want in (
                ("tcp", {OPEN_TCP, FULL_TCP}),
                ("udp", {ECHO_UDP, SLOW_UDP, LATE_UDP}),
            ):
                assert listeners.ports(proto) == want
                assert listeners.proc_ports(proto) == want
        finally:
            listeners.close()
    finally:
        inside.kill()
        inside.wait()
    assert daemons.Listeners.of(os.getpid()) is None  # our own namespace: not "inside"
