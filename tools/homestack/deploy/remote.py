"""Commands on a machine over SSH, through the one runner.

ssh exits with 255 when the connection fails or drops; that becomes `ConnectionLost`, so
the deploy can tell "the command failed" from "we do not know what happened".
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from homestack.process import Result, Runner

# BatchMode: never prompt (a deploy runs unattended). ServerAlive*: notice a dead link in
# about 15 s instead of hanging on it.
DEFAULT_OPTIONS: tuple[str, ...] = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=10",
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
)
SSH_CONNECTION_ERROR = 255


class ConnectionLost(Exception):  # an event, not a programming error: no -Error suffix
    """The SSH connection failed or dropped: the command's effect is unknown."""

    def __init__(self, target: str, command: str) -> None:
        super().__init__(f"lost the connection to {target} during: {command}")
        self.target = target
        self.command = command


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

    def run(self, command: Sequence[str]) -> Result:
        """Run ``command`` there; a non-zero exit is returned, a lost connection raised."""
        result = self.runner.run(self.ssh.argv(self.target, command), check=False)
        if result.returncode == SSH_CONNECTION_ERROR and not self.ssh.local:
            raise ConnectionLost(self.target, shlex.join(command))
        return result

    def ok(self, command: Sequence[str]) -> bool:
        return self.run(command).returncode == 0
