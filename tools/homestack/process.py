"""The one place that runs external programs.

Every call goes through a `Runner`, so tests can record and script commands
(see `RecordingRunner`), and so that a missing program becomes a clear `UserError`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from homestack.errors import UserError


@dataclass(frozen=True)
class Result:
    """What a finished command returned."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Call:
    """One command as a runner was asked to run it (``cwd`` None: the runner's own)."""

    args: tuple[str, ...]
    input: str | bytes | None = None
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    timeout: float | None = None
    capture: bool = True


class Runner:
    """Runs commands for real.

    A variant changes one hook: where a command runs when the caller names no folder
    (``workdir``), what a failure says (`failure`), or what running is (`execute`: the
    test runners record and script commands there).
    """

    workdir: str | None = None  # None: this process's working directory

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
        """Run ``args`` (a list, never a shell string); raise UserError if ``check`` fails."""
        result = self.execute(Call(tuple(args), input, env, cwd, timeout, capture))
        if check and result.returncode != 0:
            raise UserError(self.failure(result))
        return result

    def execute(self, call: Call) -> Result:
        """Run ``call`` and say what it did, whatever its exit code."""
        program = call.args[0]
        search = (call.env or os.environ).get("PATH")
        if "/" not in program and shutil.which(program, path=search) is None:
            raise UserError(f"{program}: command not found (install it, or use the dev shell)")
        try:
            proc = subprocess.run(
                list(call.args),
                check=False,
                input=call.input,
                env=None if call.env is None else {**os.environ, **call.env},
                cwd=self.workdir if call.cwd is None else call.cwd,
                timeout=call.timeout,
                capture_output=call.capture,
                text=not isinstance(call.input, bytes),
            )
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"{program}: timed out after {call.timeout} s") from exc
        except OSError as exc:  # a path that is not there, or not executable
            raise UserError(f"{program}: cannot run it: {exc.strerror}") from exc
        out = proc.stdout if proc.stdout is not None else ""
        err = proc.stderr if proc.stderr is not None else ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        return Result(call.args, proc.returncode, out, err)

    def failure(self, result: Result) -> str:
        """What the UserError of a failed checked command says: its last line of stderr."""
        err = result.stderr.strip()
        detail = err.splitlines()[-1] if err else f"exit code {result.returncode}"
        return f"{' '.join(result.args[:3])}: {detail}"

    def spawn(
        self, args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program detached from us: stdin from /dev/null, stdout and
        stderr appended to ``log``, in its own session, in ``workdir``. The caller owns it."""
        with log.open("ab") as out:
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                env=None if env is None else {**os.environ, **env},
            )


# Lines programs add after the error itself (Nix's hints), never the error.
_HINTS = ("(use '--show-trace'", "For full logs, run")


def error_line(output: str, fallback: str) -> str:
    """The one line of a program's error output that says what went wrong.

    Nix's first ``error:`` line (without the prefix) when there is one; else the last line
    that is not a hint such as "(use '--show-trace' …)"; else ``fallback``.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            message = line.removeprefix("error:").strip()
            if message:
                return message
    useful = [line for line in lines if not line.startswith(_HINTS)]
    return useful[-1] if useful else fallback


Script = Callable[[tuple[str, ...]], Result | None]


@dataclass
class RecordingRunner(Runner):
    """A runner for tests: records every call and answers from ``script``.

    ``script`` gets the argument tuple and returns a Result, or None for a call it leaves
    alone: ``otherwise`` runs that one (a real Runner, say); without it, the call succeeds
    with empty output.
    """

    script: Script | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)
    otherwise: Runner | None = None

    def execute(self, call: Call) -> Result:
        self.calls.append(call.args)
        answer = self.script(call.args) if self.script else None
        if answer is not None:
            return answer
        if self.otherwise is not None:
            return self.otherwise.execute(call)
        return Result(call.args, 0, "", "")


default_runner = Runner()
