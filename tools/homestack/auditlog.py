"""The audit log: one JSON line per mutating command, appended, never rewritten.

`homestack.cli` wraps every command: when the command path is one of `MUTATING`, it appends
when, who (user, machine, the admin age recipient), what (command and arguments, values of
secret-bearing options left out), the diff hash when the command had one, and the result.
Lines are written with O_APPEND in one write each and fsynced, so concurrent commands never
interleave and a line that was reported written survives a crash.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.process import default_runner


@dataclass(frozen=True)
class Mutating:
    """A command path that changes something, and the arguments that make it read-only."""

    path: tuple[str, ...]
    unless_flags: tuple[str, ...] = ()  # e.g. --dry-run
    unless_first: tuple[str, ...] = ()  # a first argument that makes it a query (deploy status)
    only_with: tuple[str, ...] = ()  # flags without which it changes nothing (ca trust --install)


MUTATING: tuple[Mutating, ...] = (
    Mutating(("secrets", "init")),
    Mutating(("secrets", "bootstrap")),  # also writes host keys into the inventory
    Mutating(("secrets", "set")),
    Mutating(("secrets", "generate")),
    Mutating(("secrets", "sync")),
    Mutating(("secrets", "rotate")),
    Mutating(("secrets", "edit")),
    Mutating(("secrets", "rules"), unless_flags=("--check",)),
    Mutating(("ca", "init")),
    Mutating(("ca", "trust"), only_with=("--install",)),
    Mutating(("certs", "issue")),
    Mutating(("certs", "renew")),
    Mutating(("deploy",), unless_flags=("--dry-run", "--build-only"), unless_first=("status",)),
    Mutating(("rollback",)),
    Mutating(("provision",), unless_flags=("--dry-run",)),
    Mutating(("plan", "approve")),
)

# Options whose values are never written, whatever the command.
SECRET_OPTIONS = ("--value", "--password", "--secret", "--token", "--approve", "--key")

_notes: dict[str, Any] = {}


def annotate(**values: Any) -> None:
    """Attach values (the diff hash, whether it was approved) to the running command's line."""
    _notes.update(values)


def begin() -> None:
    """Forget notes left by an earlier command in this process."""
    _notes.clear()


def mutating(path: Sequence[str], args: Sequence[str]) -> bool:
    """Whether the command at ``path`` with arguments ``args`` (after the path) changes
    anything, by the declared table."""
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if flags & {"-h", "--help"}:
        return False
    positional = [a for a in args if not a.startswith("-")]
    for entry in MUTATING:
        if tuple(path) != entry.path:
            continue
        if flags & set(entry.unless_flags):
            return False
        if entry.unless_first and positional[:1] and positional[0] in entry.unless_first:
            return False
        return not entry.only_with or bool(flags & set(entry.only_with))
    return False


def redact(args: Sequence[str]) -> list[str]:
    """``args`` with the value of every secret-bearing option replaced."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if name in SECRET_OPTIONS:
            out.append(f"{name}=<redacted>" if eq else name)
            hide_next = not eq
            continue
        out.append(arg)
    return out


def log_path(inventory: Path) -> Path:
    """$HOMESTACK_AUDIT_LOG, else .homestack/audit.log next to the inventory."""
    env = os.environ.get("HOMESTACK_AUDIT_LOG")
    if env:
        return Path(env)
    return Path(inventory).resolve().parent / ".homestack" / "audit.log"


def log_for(inventory: Path) -> Path | None:
    """Where a command on ``inventory`` is logged; None when there is no such inventory
    (nothing can have changed, and no directory is made beside a file that is not there)."""
    if os.environ.get("HOMESTACK_AUDIT_LOG") or Path(inventory).is_file():
        return log_path(inventory)
    return None


def _age_recipient() -> str | None:
    """The admin's age recipient from the comment age-keygen (and `tools secrets init`)
    writes above the identity; the identity itself is never parsed."""
    try:
        from homestack.secrets.keys import admin_key_path  # noqa: PLC0415
    except ImportError:
        return None
    try:
        with admin_key_path().open() as handle:
            for line in handle:
                if line.startswith("# public key: "):
                    return line.removeprefix("# public key: ").strip()
    except OSError:
        return None
    return None


def who() -> dict[str, Any]:
    """Who runs this command, as far as it can be known without reading a secret."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "user": user,
        "host": socket.gethostname(),
        "age_recipient": _age_recipient(),
        "ssh_keys": _agent_keys(),
        **({"sudo_user": os.environ["SUDO_USER"]} if os.environ.get("SUDO_USER") else {}),
    }


def _agent_keys() -> list[str]:
    """Fingerprints of the keys the SSH agent offers (what deploy's ssh signs with)."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return []
    try:
        listed = default_runner.run(["ssh-add", "-l"], check=False, timeout=5)
    except UserError:  # no ssh-add, or the agent hangs
        return []
    if listed.returncode != 0:
        return []
    return [line.split()[1] for line in listed.stdout.splitlines() if len(line.split()) > 1]


def append(path: Path, entry: Mapping[str, Any]) -> None:
    """Append ``entry`` as one line: one write(2) with O_APPEND, then fsync."""
    line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if path.parent.name == ".homestack" and not ignore.exists():
        ignore.write_text("*\n")  # local state of this checkout
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise UserError(
                f"{path}: short write to the audit log ({written} of {len(line)} bytes)"
            )
        os.fsync(fd)
    finally:
        os.close(fd)


def record(
    path: Path, command: Sequence[str], args: Sequence[str], result: str, **extra: Any
) -> dict[str, Any]:
    """Write the line for one finished command; ``result`` is "ok" or its error line."""
    entry = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": who(),
        "command": " ".join(command),
        "args": redact(args),
        "result": result,
        **{k: v for k, v in {**_notes, **extra}.items() if v is not None},
    }
    _notes.clear()
    append(path, entry)
    return entry


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every entry of the log, oldest first; a damaged line is reported, not skipped."""
    try:
        handle = path.open()
    except FileNotFoundError:
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{path}:{number}: not a JSON line: {exc}") from exc
            yield entry


def line(entry: Mapping[str, Any]) -> str:
    """One entry for people."""
    person = entry.get("who") or {}
    key = f" ({person['age_recipient'][:16]}…)" if person.get("age_recipient") else ""
    diff = f" diff {entry['diff'][:12]}" if entry.get("diff") else ""
    approved = " approved" if entry.get("approved") else ""
    args = " ".join(entry.get("args") or [])
    return (
        f"{entry.get('when')} {person.get('user')}@{person.get('host')}{key} "
        f"tools {entry.get('command')}{' ' + args if args else ''}{diff}{approved}: "
        f"{entry.get('result')}"
    )
