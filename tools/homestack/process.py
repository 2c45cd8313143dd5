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


class Runner:
    """Runs commands for real."""

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
        program = args[0]
        search = (env or os.environ).get("PATH")
        if "/" not in program and shutil.which(program, path=search) is None:
            raise UserError(f"{program}: command not found (install it, or use the dev shell)")
        full_env = None if env is None else {**os.environ, **env}
        text = not isinstance(input, bytes)
        try:
            proc = subprocess.run(
                list(args),
                check=False,
                input=input,
                env=full_env,
                cwd=cwd,
                timeout=timeout,
                capture_output=capture,
                text=text,
            )
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"{program}: timed out after {timeout} s") from exc
        except OSError as exc:  # a path that is not there, or not executable
            raise UserError(f"{program}: cannot run it: {exc.strerror}") from exc
        out = proc.stdout if proc.stdout is not None else ""
        err = proc.stderr if proc.stderr is not None else ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        result = Result(tuple(args), proc.returncode, out, err)
        if check and proc.returncode != 0:
            detail = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
            raise UserError(f"{' '.join(args[:3])}: {detail}")
        return result

    def spawn(
        self, args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program detached from us: stdin from /dev/null, stdout and
        stderr appended to ``log``, in its own session. The caller owns the process."""
        with log.open("ab") as out:
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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

    ``script`` gets the argument tuple and returns a Result, or None to answer
    with success and empty output.
    """

    script: Script | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

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
        key = tuple(args)
        self.calls.append(key)
        answer = self.script(key) if self.script else None
        result = answer or Result(key, 0, "", "")
        if check and result.returncode != 0:
            raise UserError(f"{' '.join(key[:3])}: exit code {result.returncode}")
        return result


default_runner = Runner()
