"""Starting the lab's long-running processes inside namespaces, and knowing when they are up.

Each daemon is started as `ip netns exec NS [unshare --ipc] [setpriv ...] PROGRAM`: every
step execs, so the PID we record is the daemon's own. Short commands go through `runner`,
the project's Runner with two lab rules: every program starts in `/` (the daemons run as
other users, who may not enter the checkout), and a failure shows the program's whole
message, not only its last line (nft prints the message, the offending line, then carets).
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from homestack.errors import UserError
from homestack.lab import netns
from homestack.lab.netns import is_gone
from homestack.process import Result, Runner

_CAPS = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
# Popen objects of daemons started by this process; kept so Python does not warn about them.
_children: list[subprocess.Popen[bytes]] = []


# Wrappers the lab puts before a program (`ip netns exec NS`, `unshare --ipc`, `setpriv …`).
_WRAPPERS = frozenset({"ip", "unshare", "setpriv"})
_MESSAGE_LINES = 12  # enough for any message we have seen; a runaway log is cut


def program_name(args: Sequence[str]) -> str:
    """The program a wrapped command runs, and where: `nft (in hslab-proxy)`."""
    rest, where = list(args), ""
    while rest and rest[0] in _WRAPPERS:
        if rest[0] == "ip" and rest[1:3] == ["netns", "exec"] and len(rest) > 3:
            where, rest = rest[3], rest[4:]
        elif rest[0] in {"unshare", "setpriv"}:
            rest = rest[1:]
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
        else:
            break
    name = Path(rest[0]).name if rest else " ".join(args[:3])
    return f"{name} (in {where})" if where else name


def failure_message(result: Result) -> str:
    """`PROGRAM (in NS): exit N` and the program's own message, indented, line for line."""
    lines = [ln.rstrip() for ln in result.stderr.splitlines() if ln.strip()]
    if not lines:
        lines = [ln.rstrip() for ln in result.stdout.splitlines() if ln.strip()]
    head = f"{program_name(result.args)}: exit code {result.returncode}"
    if not lines:
        return head
    cut = lines[-_MESSAGE_LINES:]
    if len(cut) < len(lines):
        cut = [f"(… {len(lines) - len(cut)} earlier lines)", *cut]
    return head + ":\n" + "\n".join(f"    {ln}" for ln in cut)


class LabRunner(Runner):
    """The project's Runner, run from `/`, keeping a failed program's whole message."""

    workdir = "/"

    def failure(self, result: Result) -> str:
        return failure_message(result)


runner = LabRunner()


@dataclass(frozen=True)
class Started:
    pid: int
    start: int
    log: Path


def start_time(pid: int) -> int:
    """The process start time in clock ticks (field 22 of /proc/PID/stat), 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def setpriv(user: str, *, bind_low_ports: bool = False) -> list[str]:
    entry = pwd.getpwnam(user)
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        *(_CAPS if bind_low_ports else []),
    ]


# How to enter a namespace that is a container's (homestack.lab.incus): its mount and
# network namespaces, instead of `ip netns exec`.
ENTER: dict[str, list[str]] = {}


def spawn(
    netns: str,
    args: Sequence[str],
    *,
    log: Path,
    user: str | None = None,
    bind_low_ports: bool = False,
    own_ipc: bool = False,
    env: Mapping[str, str] | None = None,
) -> Started:
    """Start a detached daemon in ``netns``; its output goes to ``log``."""
    cmd = list(ENTER.get(netns, ["ip", "netns", "exec", netns]))
    if own_ipc:
        # Its own IPC namespace: SysV segments vanish with the process, even after kill -9.
        cmd += ["unshare", "--ipc"]
    if user is not None:
        cmd += setpriv(user, bind_low_ports=bind_low_ports)
    cmd += list(args)
    proc = runner.spawn(cmd, log=log, env=env)
    _children.append(proc)
    return Started(proc.pid, start_time(proc.pid), log)


def python_program(script: Path, *args: str) -> list[str]:
    """Run a standard-library-only script, isolated from site packages.

    ``script`` must be a copy in the lab's run directory, and the system's python3 is
    preferred: the script runs as `nobody`, who may not reach the checkout or this
    process's interpreter (both may sit under a private home directory such as /root).
    """
    system = Path("/usr/bin/python3")
    python = str(system) if system.exists() else os.path.realpath(sys.executable)
    return [python, "-I", str(script), *args]


# Listening sockets are asked of the kernel through sock_diag (what `ss -l` uses), which
# walks only the sockets in the asked state. /proc/PID/net/tcp walks the whole established
# hash table on every read (about 5 ms each here, all of it system time): a lab of 30
# guests polling it spent more CPU on that than on starting its daemons.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 0x1, 0x300, 2, 3
LISTEN_STATE = {"tcp": 10, "udp": 7}  # TCP_LISTEN; an unconnected UDP socket is TCP_CLOSE
PROTOCOL = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class Listeners:
    """Which ports listen in the network namespace of a process, asked through a sock_diag
    socket made inside that namespace; `/proc/PID/net` only where the kernel lacks a
    protocol's sock_diag module."""

    def __init__(self, pid: int, diag: socket.socket) -> None:
        self.pid, self.diag = pid, diag

    @classmethod
    def of(cls, pid: int) -> Listeners | None:
        """None while ``pid`` is still in our namespace (`ip netns exec` has not entered
        the lab's yet) or gone."""
        path = f"/proc/{pid}/ns/net"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            return None
        try:
            theirs, ours = os.fstat(fd), Path("/proc/self/ns/net").stat()
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                return None
            made: list[socket.socket | BaseException] = []

            def make() -> None:  # on a thread of its own: setns moves only the calling thread
                try:
                    netns.enter_fd(fd, path)
                    made.append(
                        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
                    )
                except BaseException as exc:  # handed to the caller
                    made.append(exc)

            thread = threading.Thread(target=make)
            thread.start()
            thread.join()
        finally:
            os.close(fd)
        if isinstance(made[0], BaseException):
            raise made[0]
        return cls(pid, made[0])

    def close(self) -> None:
        self.diag.close()

    def ports(self, proto: str) -> set[int]:
        """The ports with a listening ``proto`` socket (IPv4 or IPv6)."""
        ports: set[int] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            req = struct.pack("=BBBBI", family, PROTOCOL[proto], 0, 0, 1 << LISTEN_STATE[proto])
            req += bytes(48)  # struct inet_diag_sockid: any address, any port
            self.diag.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                                       NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)  # fmt: skip
            done = False
            while not done:
                data = self.diag.recv(65536)
                pos = 0
                while pos + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, pos)
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, pos + 16)[0]
                        if code == errno.ENOENT:  # no sock_diag module for this protocol
                            return self.proc_ports(proto)
                        raise OSError(code, f"sock_diag: {os.strerror(code)}")
                    # struct inet_diag_msg: family, state, timer, retrans, then sport
                    # (big-endian)
                    ports.add(struct.unpack_from(">H", data, pos + 16 + 4)[0])
                    pos += (length + 3) & ~3
        return ports

    def proc_ports(self, proto: str) -> set[int]:
        """The slow way, for a kernel without the sock_diag module of ``proto``."""
        want_state = "0A" if proto == "tcp" else "07"
        ports: set[int] = set()
        for table in (proto, proto + "6"):
            try:
                lines = Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                fields = line.split()
                if fields[3] == want_state:
                    ports.add(int(fields[1].split(":")[1], 16))
        return ports


def wait_listening(
    started: Started, name: str, sockets: Sequence[tuple[str, int]], timeout: float = 10.0
) -> None:
    """Wait until ``sockets`` listen in the daemon's namespace; fail with its log if it dies."""
    deadline = time.monotonic() + timeout
    listeners: Listeners | None = None
    try:
        while True:
            if is_gone(started.pid):
                raise UserError(f"tools lab: {name} exited at start-up: {_tail(started.log)}")
            listeners = listeners or Listeners.of(started.pid)
            if listeners is not None:
                have = {p: listeners.ports(p) for p in {proto for proto, _ in sockets}}
                if all(port in have[proto] for proto, port in sockets):
                    return
            if time.monotonic() > deadline:
                raise UserError(
                    f"tools lab: {name} did not listen on {sockets} within "
                    f"{timeout:.0f} s: {_tail(started.log)}"
                )
            time.sleep(0.01)
    finally:
        if listeners is not None:
            listeners.close()


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-3:]) if lines else f"(empty log {log})"
