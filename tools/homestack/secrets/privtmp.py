"""Run a command with TMPDIR on a private tmpfs that no other process can see.

`python -m homestack.secrets.privtmp MOUNTPOINT -- COMMAND…` enters a new mount namespace
(as root, or inside a user namespace otherwise), mounts a fresh tmpfs (mode 0700) on
MOUNTPOINT and runs COMMAND with TMPDIR pointing there; the tmpfs vanishes with the
namespace when COMMAND exits. If namespaces are not permitted it falls back to a 0700
directory on /dev/shm (still RAM-backed) and says so. Plaintext never touches a disk.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

from homestack.process import default_runner

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 0x4000
MS_PRIVATE = 0x40000
TMPFS_OPTIONS = b"mode=0700,size=64m"


def _error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_private_tmpfs(libc: ctypes.CDLL, mountpoint: str) -> None:
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _error("making mounts private")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"tmpfs", mountpoint.encode(), b"tmpfs", flags, TMPFS_OPTIONS) != 0:
        raise _error(f"mounting a tmpfs on {mountpoint}")


def _enter_user_namespace(libc: ctypes.CDLL) -> None:
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise _error("unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def fs_type(path: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, kind = "", None
    target = os.path.realpath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        mount = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-") + 1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


def enter_private_tmp(mountpoint: str) -> tuple[str, str | None]:
    """(TMPDIR to use, a directory to delete afterwards or None); prints which it chose."""
    libc = _libc()
    errors = []
    for how in ("root", "user"):
        try:
            if how == "root":
                if libc.unshare(CLONE_NEWNS) != 0:
                    raise _error("unshare")
            else:
                _enter_user_namespace(libc)
            _mount_private_tmpfs(libc, mountpoint)
        except OSError as exc:
            errors.append(f"{exc.strerror or exc}")
            continue
        print(
            f"plaintext goes to a private tmpfs on {mountpoint} (own mount namespace; "
            "no other process can see it)",
            file=sys.stderr,
        )
        return mountpoint, None
    if fs_type("/dev/shm") != "tmpfs":
        print(
            f"error: cannot make a private tmpfs ({'; '.join(errors)}) and /dev/shm is not a "
            "tmpfs: refusing to put plaintext on disk",
            file=sys.stderr,
        )
        sys.exit(2)
    fallback = tempfile.mkdtemp(prefix="homestack-edit-", dir="/dev/shm")
    Path(fallback).chmod(0o700)
    print(
        f"mount namespaces are not permitted here ({errors[0]}); plaintext goes to "
        f"{fallback} (tmpfs, mode 0700)",
        file=sys.stderr,
    )
    return fallback, fallback


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m homestack.secrets.privtmp MOUNTPOINT -- COMMAND…", file=sys.stderr)
        return 2
    tmpdir, cleanup = enter_private_tmp(argv[0])
    try:
        result = default_runner.run(argv[2:], check=False, env={"TMPDIR": tmpdir}, capture=False)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
