"""Starting the lab's long-running processes inside namespaces, and knowing when they are up.

Each daemon is started as `ip netns exec NS [unshare --ipc] [setpriv ...] PROGRAM`: every
step execs, so the PID we record is the daemon's own. Short commands go through `runner`,
the project's Runner with two lab rules: every program starts in `/` (the daemons run as
other users, who may not enter the checkout), and a failure shows the program's whole
message, not only its last line (nft prints the message, the offending line, then carets).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from homestack.errors import UserError
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

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        capture: bool = True,
    ) -> Result:
        result = super().run(
            args,
            check=False,
            input=input,
            env=env,
            cwd="/" if cwd is None else cwd,
            timeout=timeout,
            capture=capture,
        )
        if check and result.returncode != 0:
            raise UserError(failure_message(result))
        return result

    def spawn(
        self, args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program detached from us: stdin from /dev/null, stdout and
        stderr appended to ``log``, in its own session, in `/`. The caller owns it."""
        with log.open("ab") as out:
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                env=None if env is None else {**os.environ, **env},
            )


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


def wait_listening(
    started: Started, name: str, sockets: Sequence[tuple[str, int]], timeout: float = 10.0
) -> None:
    """Wait until ``sockets`` listen in the daemon's namespace; fail with its log if it dies."""
    deadline = time.monotonic() + timeout
    while True:
        if is_gone(started.pid):
            raise UserError(f"tools lab: {name} exited at start-up: {_tail(started.log)}")
        if all(_listening(started.pid, proto, port) for proto, port in sockets):
            return
        if time.monotonic() > deadline:
            raise UserError(
                f"tools lab: {name} did not listen on {sockets} within "
                f"{timeout:.0f} s: {_tail(started.log)}"
            )
        time.sleep(0.01)


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-3:]) if lines else f"(empty log {log})"
