"""Starting the lab's long-running processes inside namespaces, and knowing when they are up.

Each daemon is started as `ip netns exec NS [unshare --ipc] [setpriv ...] PROGRAM`: every
step execs, so the PID we record is the daemon's own. Short commands go through the
project's Runner; only these detached daemons are started here with Popen.
"""

from __future__ import annotations

import pwd
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from homestack.errors import UserError
from homestack.lab.netns import is_gone
from homestack.process import default_runner

_CAPS = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
# Popen objects of daemons started by this process; kept so Python does not warn about them.
_children: list[subprocess.Popen[bytes]] = []


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
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            *(_CAPS if bind_low_ports else [])]


# How to enter a namespace that is a container's (homestack.lab.incus): its mount and
# network namespaces, instead of `ip netns exec`.
ENTER: dict[str, list[str]] = {}


def spawn(netns: str, args: Sequence[str], *, log: Path, user: str | None = None,
          bind_low_ports: bool = False, own_ipc: bool = False,
          env: Mapping[str, str] | None = None) -> Started:
    """Start a detached daemon in ``netns``; its output goes to ``log``."""
    cmd = list(ENTER.get(netns, ["ip", "netns", "exec", netns]))
    if own_ipc:
        # Its own IPC namespace: SysV segments vanish with the process, even after kill -9.
        cmd += ["unshare", "--ipc"]
    if user is not None:
        cmd += setpriv(user, bind_low_ports=bind_low_ports)
    cmd += list(args)
    proc = default_runner.spawn(cmd, log=log, env=env)
    _children.append(proc)
    return Started(proc.pid, start_time(proc.pid), log)


def python_program(path: Path, *args: str) -> list[str]:
    """Run a standard-library-only script of this package, isolated from site packages.

    The system's python3 is preferred: the script runs as `nobody`, who may not be able to
    reach this process's interpreter (a virtualenv under a private home directory).
    """
    system = Path("/usr/bin/python3")
    python = str(system) if system.exists() else sys.executable
    return [python, "-I", str(path), *args]


def _listening(pid: int, proto: str, port: int) -> bool:
    want_state = "0A" if proto == "tcp" else "07"
    text = ""
    for table in (proto, proto + "6"):  # Caddy listens on a dual-stack socket
        try:
            text += Path(f"/proc/{pid}/net/{table}").read_text().split("\n", 1)[1]
        except (FileNotFoundError, IndexError):
            continue
    for line in text.splitlines():
        fields = line.split()
        if fields[3] == want_state and int(fields[1].split(":")[1], 16) == port:
            return True
    return False


def wait_listening(started: Started, name: str, sockets: Sequence[tuple[str, int]],
                   timeout: float = 10.0) -> None:
    """Wait until ``sockets`` listen in the daemon's namespace; fail with its log if it dies."""
    deadline = time.monotonic() + timeout
    while True:
        if is_gone(started.pid):
            raise UserError(f"tools lab: {name} exited at start-up: {_tail(started.log)}")
        if all(_listening(started.pid, proto, port) for proto, port in sockets):
            return
        if time.monotonic() > deadline:
            raise UserError(f"tools lab: {name} did not listen on {sockets} within "
                            f"{timeout:.0f} s: {_tail(started.log)}")
        time.sleep(0.01)


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-3:]) if lines else f"(empty log {log})"
