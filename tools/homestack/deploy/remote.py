"""Commands on a machine over SSH, through the one runner.

ssh exits with 255 when the connection fails or drops; that becomes `ConnectionLost`, which
says what ssh ran into (name, refusal, timeout, authentication, a drop), so the deploy can
tell "the command failed" from "it never ran" from "we do not know what happened".
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from homestack.process import Result, Runner

# BatchMode: never prompt (a deploy runs unattended). ServerAlive*: notice a dead link in
# about 15 s instead of hanging on it.
DEFAULT_OPTIONS: tuple[str, ...] = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
)
SSH_CONNECTION_ERROR = 255

# What ssh prints when it fails (exit 255), as (words in its stderr, what it means, whether
# it failed before the remote command could start). Order matters: first match wins.
_SSH_FAILURES: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (
        (
            "Could not resolve hostname",
            "Name or service not known",
            "Temporary failure in name resolution",
            "nodename nor servname",
        ),
        "cannot resolve the host name",
        True,
    ),
    (("Connection refused",), "connection refused (is sshd running there?)", True),
    (
        ("No route to host", "Network is unreachable", "Network unreachable"),
        "no route to the host",
        True,
    ),
    (
        ("Permission denied", "Too many authentication failures", "No more authentication"),
        "authentication failed (is your SSH key on the machine?)",
        True,
    ),
    (
        ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "host key verification failed (not the host key known for it)",
        True,
    ),
    (
        (
            "Connection timed out",
            "Operation timed out",
            "timed out during banner exchange",
            " timed out",
        ),  # OpenSSH 9: "Connection to 203.0.113.10 port 22 timed out"
        "timed out connecting",
        True,
    ),
    (
        ("Bad configuration option", "command-line: line", "Bad port", "garbage at end of line"),
        "ssh refused its options (see -o/--ssh-option)",
        True,
    ),
    (
        (
            "Connection closed",
            "closed by remote host",
            "Connection reset",
            "Broken pipe",
            "not responding",
            "client_loop:",
        ),
        "lost the connection",
        False,
    ),
)


def classify(stderr: str) -> tuple[str, bool]:
    """(what went wrong, True if ssh failed before the remote command could run)."""
    for needles, meaning, before in _SSH_FAILURES:
        if any(n in stderr for n in needles):
            return meaning, before
    return "the connection failed", False


class ConnectionLost(Exception):  # an event, not a programming error: no -Error suffix
    """ssh could not connect, or the connection dropped.

    ``before_command``: ssh failed while connecting (name, refusal, timeout, authentication),
    so the command did not run; otherwise its effect is unknown. ``str()`` says which, in
    ssh's own words."""

    def __init__(self, target: str, command: str, stderr: str = "") -> None:
        meaning, before = classify(stderr)
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        said = lines[-1] if lines else ""
        detail = f" ({said})" if said and said.rstrip(".") not in meaning else ""
        if before:
            message = f"{target}: {meaning}{detail}"
        else:
            message = f"{target}: {meaning}{detail} during: {command}"
        super().__init__(message)
        self.target = target
        self.command = command
        self.reason = meaning
        self.before_command = before


@dataclass(frozen=True)
class Ssh:
    """How to reach machines: the ssh program (with any prefix) and its options."""

    program: tuple[str, ...] = ("ssh",)
    options: tuple[str, ...] = DEFAULT_OPTIONS

    def argv(self, target: str, command: Sequence[str]) -> list[str]:
        # ssh hands the remote shell one string; quoting each word keeps it a list.
        return [*self.program, *self.options, target, "--", shlex.join(command)]

    def nix_sshopts(self) -> str:
        """The same options for `nix copy --to ssh://…` (it reads NIX_SSHOPTS)."""
        return shlex.join(self.options)

    @property
    def local(self) -> bool:
        return False


@dataclass(frozen=True)
class Local(Ssh):
    """The machine the deploy runs on (GitOps, `tools deploy --local`): commands run here,
    and there is no connection to lose, so exit code 255 is only an exit code."""

    def argv(self, target: str, command: Sequence[str]) -> list[str]:
        del target
        return list(command)

    @property
    def local(self) -> bool:
        return True


@dataclass(frozen=True)
class Remote:
    """One SSH destination."""

    runner: Runner
    ssh: Ssh
    target: str

    def run(self, command: Sequence[str], *, input: str | None = None) -> Result:
        """Run ``command`` there; a non-zero exit is returned, a lost connection raised.
        ``input`` is its stdin (ssh forwards ours otherwise: a terminal, on a laptop)."""
        result = self.runner.run(self.ssh.argv(self.target, command), check=False, input=input)
        if result.returncode == SSH_CONNECTION_ERROR and not self.ssh.local:
            raise ConnectionLost(self.target, shlex.join(command), result.stderr)
        return result

    def ok(self, command: Sequence[str]) -> bool:
        return self.run(command).returncode == 0
