"""Many probes at once: non-blocking sockets in one event loop.

The allow matrix is mostly flows that must be blocked, and a blocked flow is only known to
be blocked once its probe has waited out its timeout. One thread per waiting probe caps how
many wait at once (and a thread costs far more than a socket). Here one thread opens each
probe's socket inside its source namespace (a socket stays in the namespace it was created
in), starts the connection without blocking, and one epoll loop waits for all of them: up to
``WINDOW`` probes wait at the same time, each for its whole timeout.

A probe reports what `probes.tcp` and `probes.udp` report for the same flow: ``open``,
``refused`` (a reset, or an ICMP error), or ``dropped`` (nothing within the timeout). One
difference: the kernel rate-limits the ICMP errors it sends (net.ipv4.icmp_msgs_per_sec),
so among thousands at once an ICMP refusal may come out as a drop; both mean "not open",
and nothing the kernel limits can make a blocked flow look open. Each probe waits its full
timeout from the moment its first packet left, and an answer that arrived before the
verdict counts.

Waiting at once must not turn a leak into a drop. If the kernel itself drops a packet while
a sweep runs (a CPU's backlog full, a listener's queue full, a UDP socket's buffer full, the
connection tracker full), a packet the filters let through could look filtered. The sweep
reads those counters in every namespace it is told to watch before and after, and when any
of them moved it runs again with a quarter of the window; `Sweep.lost` says what moved in
the last run, and an empty `lost` is the only clean result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from homestack.errors import UserError
from homestack.lab import netns
from homestack.lab.probes import DROPPED, OPEN, REFUSED, dns_query

WINDOW = 16384  # probes waiting at once; each holds one socket
MIN_WINDOW = 128
# Probes expected to be answered that one listener sees at once: below the shortest accept
# queue in the lab, dnsmasq's 32 for DNS over TCP (TCP_BACKLOG in dnsmasq's src/config.h;
# `ss -ltn` shows it), which it drains slowly (a forked child a connection). Probes expected
# to be blocked are not held back: most wait out their timeout, and one that is answered
# (a leak) and overflows a queue moves the counters, so the sweep runs again.
PER_TARGET = 16
ATTEMPTS = 4  # runs of one sweep, the window a quarter each time the kernel dropped packets
RESERVED_FILES = 256  # the daemons' pipes and logs, and the loop's own
REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
OTHER_PORT = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})  # a routed port in use: another
OVERLOAD = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM})
# A DNS query: every UDP server and echo stand-in of the lab answers one.
UDP_PAYLOAD = dns_query("probe.invalid")[1]
LINGER_RESET = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left behind


@dataclass(frozen=True)
class Probe:
    netns: str  # where the probe starts
    address: str
    port: int
    proto: str  # "tcp" or "udp"
    routed: bool = False  # a source port from netns.ROUTED_PORTS (see there)
    expected: bool = False  # expected to be answered: held to PER_TARGET at once (see there)


@dataclass
class Sweep:
    outcomes: list[str]
    window: int  # of the last run
    runs: int
    lost: dict[str, int] = field(default_factory=dict)  # kernel drops during the last run
    cpu: float = 0.0  # seconds of this process's CPU the sweep's thread used, all runs


def run(
    batch: Sequence[Probe], timeout: float, *, watch: Iterable[str] = (), window: int = WINDOW
) -> Sweep:
    """Probe every item of ``batch``; the outcomes come back in its order. ``watch``: the
    namespaces whose drop counters must not move (every namespace a probe may cross)."""
    watched = sorted({*watch, *(p.netns for p in batch)})
    # On a thread of its own: entering namespaces must not move the caller's thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep") as pool:
        return pool.submit(_guarded, list(batch), timeout, watched, window).result()


def _guarded(batch: list[Probe], timeout: float, watched: list[str], window: int) -> Sweep:
    window = max(1, min(window, _room_for_sockets()))
    ns = _Namespaces()
    cpu = time.thread_time()
    try:
        for attempt in range(1, ATTEMPTS + 1):
            before = _drops(ns, watched)
            outcomes, overloaded = _Loop(batch, timeout, window, ns).run()
            after = _drops(ns, watched)
            lost = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
            if overloaded:
                lost["no buffer for a probe's packet"] = overloaded
            if not lost or attempt == ATTEMPTS or window <= MIN_WINDOW:
                return Sweep(outcomes, window, attempt, lost, time.thread_time() - cpu)
            window = max(MIN_WINDOW, window // 4)
        raise AssertionError("unreachable")
    finally:
        ns.close()


def _room_for_sockets() -> int:
    """How many sockets may be open at once: the open-files limit is raised towards its hard
    limit when that makes room for WINDOW of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WINDOW + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    if soft == resource.RLIM_INFINITY:
        return WINDOW
    return max(1, soft - RESERVED_FILES)


class _Namespaces:
    """setns(2) into lab namespaces through descriptors opened once."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.current: str | None = None

    def enter(self, name: str) -> None:
        if self.current == name:
            return
        fd = self.fds.get(name)
        if fd is None:
            try:
                fd = self.fds[name] = os.open(netns.NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise UserError(f"lab namespace {name} is gone (run `tools lab up`)") from None
        netns.enter_fd(fd, name)
        self.current = name

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _drops(ns: _Namespaces, names: list[str]) -> dict[str, int]:
    """The kernel's own drop counters: per CPU (backlog), and per namespace (listen queues,
    UDP buffers, connection tracking)."""
    out: dict[str, int] = {}
    with Path("/proc/net/softnet_stat").open() as f:  # one line a CPU; column 2: backlog drops
        out["backlog"] = sum(int(line.split()[1], 16) for line in f if line.strip())
    for name in names:
        ns.enter(name)
        tcp = _table("/proc/thread-self/net/netstat", "TcpExt:")
        udp = _table("/proc/thread-self/net/snmp", "Udp:")
        out[f"{name} listen overflows"] = tcp.get("ListenOverflows", 0)
        out[f"{name} listen drops"] = tcp.get("ListenDrops", 0)
        out[f"{name} udp buffer errors"] = udp.get("RcvbufErrors", 0) + udp.get("MemErrors", 0)
        out[f"{name} conntrack drops"] = _conntrack_drops()
    return out


def _table(path: str, prefix: str) -> dict[str, int]:
    """One `Name: keys` / `Name: values` pair of lines from a /proc/net statistics file."""
    with Path(path).open() as f:
        rows = [line.split() for line in f if line.startswith(prefix)]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0][1:], (int(v) for v in rows[1][1:]), strict=False))


def _conntrack_drops() -> int:
    try:
        with Path("/proc/thread-self/net/stat/nf_conntrack").open() as f:
            head, *cpus = [line.split() for line in f]
    except FileNotFoundError:  # no connection tracking loaded: nothing it could drop
        return 0
    cols = [head.index(k) for k in ("insert_failed", "drop", "early_drop") if k in head]
    return sum(int(row[c], 16) for row in cpus for c in cols)


class _Loop:
    """One run of a sweep. A probe starts when the window has room, its target has room
    (PER_TARGET, for probes expected to be answered) and, for a routed probe, its namespace
    has a routed source port free; otherwise it is held until one of those frees."""

    def __init__(self, batch: list[Probe], timeout: float, window: int, ns: _Namespaces) -> None:
        self.batch, self.timeout, self.window, self.ns = batch, timeout, window, ns
        self.outcomes: list[str] = [""] * len(batch)
        self.live: dict[int, tuple[socket.socket, int | None]] = {}  # index: socket, port
        self.deadlines: deque[tuple[float, int]] = deque()  # in start order, so in time order
        self.selector = selectors.EpollSelector()
        self.ports: dict[str, deque[int]] = {}  # namespace: routed source ports free
        self.busy: dict[tuple[str, int, str], int] = {}  # target: expected probes running
        self.held: dict[tuple[str, ...], deque[int]] = {}  # what a probe waits for: probes
        self.freed: deque[int] = deque()  # held probes whose wait is over
        self.overloaded = 0

    def run(self) -> tuple[list[str], int]:
        # Probes leave one namespace after another (few setns calls); within one, in order.
        pending = deque(sorted(range(len(self.batch)), key=lambda i: self.batch[i].netns))
        try:
            while pending or self.live or self.freed:
                while len(self.live) < self.window:
                    i = self._next(pending)
                    if i is None:
                        break
                    self._start(i)
                now = time.monotonic()
                while self.deadlines and self.deadlines[0][0] <= now:
                    _, i = self.deadlines.popleft()
                    if i in self.live:
                        self._expire(i)
                if not self.live:
                    continue
                wait = self.deadlines[0][0] - now if self.deadlines else self.timeout
                for key, _ in self.selector.select(max(0.0, wait)):
                    self._ready(key.data)
        finally:
            for i in list(self.live):
                self._close(i)
            self.selector.close()
        # A held probe waits for a resource a running one holds, so none can be left over.
        assert all(self.outcomes), "a probe was held and never started"
        return self.outcomes, self.overloaded

    def _target(self, i: int) -> tuple[str, int, str] | None:
        p = self.batch[i]
        return (p.address, p.port, p.proto) if p.expected else None

    def _free_ports(self, name: str) -> deque[int]:
        free = self.ports.get(name)
        if free is None:
            low, high = netns.ROUTED_PORTS
            free = self.ports[name] = deque(range(low, high + 1))
        return free

    def _waits_for(self, i: int) -> tuple[str, ...] | None:
        p, t = self.batch[i], self._target(i)
        if t is not None and self.busy.get(t, 0) >= PER_TARGET:
            return ("target", t[0], str(t[1]), t[2])
        if p.routed and not self._free_ports(p.netns):
            return ("ports", p.netns)
        return None

    def _next(self, pending: deque[int]) -> int | None:
        """The next probe that can start now, if any."""
        while self.freed or pending:
            i = self.freed.popleft() if self.freed else pending.popleft()
            wait = self._waits_for(i)
            if wait is None:
                return i
            self.held.setdefault(wait, deque()).append(i)
        return None

    def _release(self, wait: tuple[str, ...]) -> None:
        held = self.held.get(wait)
        if held:
            self.freed.append(held.popleft())

    def _start(self, i: int) -> None:
        p = self.batch[i]
        t = self._target(i)
        if t is not None:
            self.busy[t] = self.busy.get(t, 0) + 1
        self.ns.enter(p.netns)
        code = self._send(i)
        tcp = p.proto == "tcp"
        if code == errno.EINPROGRESS:
            events = selectors.EVENT_WRITE if tcp else selectors.EVENT_READ
            self.selector.register(self.live[i][0], events, i)
            self.deadlines.append((time.monotonic() + self.timeout, i))
        elif code == 0:
            self._finish(i, OPEN)
        elif code in OVERLOAD:
            self.overloaded += 1
            self._finish(i, DROPPED)
        elif code in REFUSED_ERRNOS or not tcp:  # as probes.udp: any error is a refusal
            self._finish(i, REFUSED)
        elif code == errno.EPERM:  # the source's own output filter dropped the SYN
            self._finish(i, DROPPED)
        else:
            self._finish(i, DROPPED)
            raise UserError(f"probe {p.netns} -> {p.address}:{p.port}/{p.proto}: "
                            f"{os.strerror(code)}")  # fmt: skip

    def _send(self, i: int) -> int:
        """Open probe ``i``'s socket (in ``self.live``) and send its first packet: the
        errno, EINPROGRESS while the answer is awaited."""
        p = self.batch[i]
        tcp = p.proto == "tcp"
        code = errno.EIO
        for _ in range(8):  # a routed port something else holds: the next one
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
            sock.setblocking(False)
            port = None
            try:
                if p.routed:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    port = self._free_ports(p.netns).popleft()
                    sock.bind(("", port))
                if tcp:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                    code = sock.connect_ex((p.address, p.port))
                else:
                    sock.connect((p.address, p.port))
                    sock.send(UDP_PAYLOAD)
                    code = errno.EINPROGRESS
            except OSError as exc:
                code = exc.errno or errno.EIO
            except IndexError:  # no routed port left after the ones in use by others
                code = errno.EADDRNOTAVAIL
            self.live[i] = (sock, port)
            if code in OTHER_PORT and p.routed and self._free_ports(p.netns):
                self._close(i)
                continue
            break
        return code

    def _ready(self, i: int) -> None:
        sock, _ = self.live[i]
        if self.batch[i].proto == "tcp":
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                self._finish(i, OPEN)
            else:  # what a blocking connect reports for the same errno (probes.tcp)
                self._finish(i, REFUSED if code in REFUSED_ERRNOS else DROPPED)
            return
        try:
            sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._finish(i, REFUSED)
            return
        self._finish(i, OPEN)

    def _expire(self, i: int) -> None:
        """The probe's time is up. Its socket is asked once more, so an answer that came in
        time but was not yet seen (this thread was busy) still counts: a verdict never
        comes before the timeout, and never ignores what arrived before it."""
        sock, _ = self.live[i]
        if self.batch[i].proto == "tcp":
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._finish(i, REFUSED if code in REFUSED_ERRNOS else DROPPED)
                return
            try:
                sock.getpeername()  # only a connected socket has a peer
            except OSError:
                self._finish(i, DROPPED)
                return
            self._finish(i, OPEN)
            return
        try:
            sock.recv(4096)
        except BlockingIOError:
            self._finish(i, DROPPED)
            return
        except OSError:
            self._finish(i, REFUSED)
            return
        self._finish(i, OPEN)

    def _finish(self, i: int, outcome: str) -> None:
        self._close(i)
        self.outcomes[i] = outcome
        t = self._target(i)
        if t is not None:
            self.busy[t] -= 1
            self._release(("target", t[0], str(t[1]), t[2]))

    def _close(self, i: int) -> None:
        sock, port = self.live.pop(i)
        if sock.fileno() >= 0:
            with contextlib.suppress(KeyError):  # never registered: finished at its start
                self.selector.unregister(sock)
        sock.close()
        if port is not None:
            name = self.batch[i].netns
            self.ports[name].append(port)
            self._release(("ports", name))
