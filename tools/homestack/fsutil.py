"""Atomic file writes (a reader sees the old file or the new one, never half of either), and
reads that refuse links and special files where following them would be a hole."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from homestack.errors import UserError


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def require_plain(root: Path, rel: str, *, what: str = "file", shown: str | None = None) -> None:
    """Refuse ``root/rel`` unless every part of it below ``root`` is a real directory and
    the file, if it exists, is a regular file.

    A symbolic link would make a write land in the file it points to (another machine's
    secrets, or outside the repository), so none is followed. Messages name the file
    ``shown`` (default ``rel``) and call it ``what``."""
    path = Path(root)
    parts = Path(rel).parts
    for index, part in enumerate(parts):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return  # not there yet: it will be created as a regular file
        except OSError as exc:
            raise UserError(f"{rel}: cannot read it: {exc.strerror}") from exc
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode):
            target = path.readlink()
            name = shown if last and shown else "/".join(parts[: index + 1])
            raise UserError(
                f"{name}: is a symbolic link (to {target}); a {what} must be a regular file "
                "in the repository, not followed through a link"
            )
        if last and not stat.S_ISREG(mode):
            raise UserError(f"{shown or rel}: is {_kind(mode)}, not a {what}")
        if not last and not stat.S_ISDIR(mode):
            raise UserError(f"{shown or rel}: {'/'.join(parts[: index + 1])} is {_kind(mode)}")


def read_regular(path: Path, shown: str | Path | None = None, *, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file itself (not a link to one).

    Opened with O_NOFOLLOW and checked with fstat, so the file read is the one checked."""
    name = shown if shown is not None else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{name}: is a symbolic link; a {what} must be a regular file") from exc
        raise UserError(f"{name}: cannot read it: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{name}: is {_kind(mode)}, not a {what}")
        try:
            return handle.read()
        except OSError as exc:
            raise UserError(f"{name}: cannot read it: {exc.strerror}") from exc
