"""`tools secrets edit`: plaintext only on a private tmpfs; the old file survives failures."""

# ruff: noqa: F811 - pytest fixtures imported from test_secrets_helpers are parameters here
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import pytest
from test_secrets_helpers import (  # noqa: F401 - fixtures
    admin_sops,
    built_repo,
    repo,
    session_keys,
    tools,
)

from homestack.secrets.privtmp import fs_type
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import read_sops_file

AUTH = "secrets/auth.yaml"


def editor(tmp_path: Path, body: str) -> str:
    """An EDITOR script; it logs where it was given the file and on what filesystem."""
    script = tmp_path / "editor.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f'echo "$1 $(stat -f -c %T "$(dirname "$1")")" >> "{tmp_path}/editor.log"\n' + body
    )
    script.chmod(0o755)
    return str(script)


def test_edit_saves_a_change(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDITOR", editor(tmp_path, 'echo "added: value" >> "$1"\n'))
    code, out, err = tools(capfd, "secrets", "edit", AUTH)
    assert (code, out) == (0, f"{AUTH}: saved (re-encrypted)\n"), err
    assert tools(capfd, "secrets", "show", AUTH, "added")[1] == "value\n"
    path, fstype = (tmp_path / "editor.log").read_text().split()
    assert fstype == "tmpfs"
    assert "plaintext goes to a private tmpfs" in err or "/dev/shm" in err
    assert not Path(path).exists()  # gone with its namespace


def test_unchanged_file_is_not_rewritten(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = (repo / AUTH).read_bytes()
    monkeypatch.setenv("EDITOR", editor(tmp_path, ""))
    code, out, _ = tools(capfd, "secrets", "edit", AUTH)
    assert (code, out) == (0, f"{AUTH}: no change, file untouched\n")
    assert (repo / AUTH).read_bytes() == before


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('echo "broken: [" >> "$1"\n', "not valid YAML"),
        ('echo "x: 1" >> "$1"\nexit 3\n', "the editor exited with code 3"),
        ('printf "a: 1\\na: 2\\n" > "$1"\n', "duplicate key 'a'"),
        ('printf -- "- a\\n- b\\n" > "$1"\n', "top level must be a mapping"),
        ('printf "sops: 1\\n" > "$1"\n', "reserved by sops"),
    ],
)
def test_failures_keep_the_old_file(  # noqa: PLR0917 - pytest passes fixtures by name
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    body: str,
    why: str,
) -> None:
    before = (repo / AUTH).read_bytes()
    monkeypatch.setenv("EDITOR", editor(tmp_path, body))
    code, _, err = tools(capfd, "secrets", "edit", AUTH)
    assert code == 2
    assert why in err and "the old file is kept" in err
    assert (repo / AUTH).read_bytes() == before
    assert not [p for p in (repo / "secrets").iterdir() if p.name.startswith(".edit")]


def test_edit_creates_a_planned_file(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDITOR", editor(tmp_path, 'printf "ca:\\n    key: dummy\\n" > "$1"\n'))
    code, out, err = tools(capfd, "secrets", "edit", "secrets/ca.yaml")
    assert (code, out) == (0, "secrets/ca.yaml: created\n"), err
    assert read_sops_file(repo / "secrets/ca.yaml").key_paths == {"ca", "ca/key"}


def _files_touched_since(roots: list[Path], since: float) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root, onerror=lambda _e: None):
            for name in names:
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if (
                    stat.S_ISREG(info.st_mode)
                    and info.st_mtime >= since
                    and info.st_size < 50_000_000
                ):
                    found.append(path)
    return found


class CanaryScan:
    """While the editor holds the plaintext, scan every persistent place the run could
    write to (from outside the edit's mount namespace); the editor waits for the scan."""

    def __init__(self, tmp_path: Path, roots: list[Path]) -> None:
        self.ready, self.done = tmp_path / "editor.ready", tmp_path / "scan.done"
        self.canary = "CANARY-" + os.urandom(16).hex()  # in memory and env only
        self.roots = [p for p in roots if p.exists() and fs_type(str(p)) != "tmpfs"]
        self.since = time.time() - 1
        self.leaks: list[Path] = []
        self.scanned = 0
        self.thread = threading.Thread(target=self._scan_when_ready, daemon=True)

    def editor_body(self) -> str:
        # The editor waits for the scan, but never longer than a minute.
        return (
            'printf "canary: %s\\n" "$CANARY" >> "$1"\n'
            f'touch "{self.ready}"\n'
            "i=0\n"
            f'while [ ! -e "{self.done}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n'
        )

    def _scan_when_ready(self) -> None:
        deadline = time.time() + 30
        try:
            while not self.ready.exists() and time.time() < deadline:
                time.sleep(0.02)
            self.scan()
        finally:
            self.done.touch()  # whatever happened, release the editor

    def scan(self) -> None:
        files = _files_touched_since(self.roots, self.since)
        self.scanned += len(files)
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:  # removed or closed to us since it was listed
                continue
            if self.canary.encode() in data:
                self.leaks.append(path)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.touch()
        self.thread.join(timeout=30)
        self.scan()  # and once more after the run


def test_plaintext_canary_never_reaches_persistent_disk(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # where sops would write without our tmpfs
    roots = [Path("/tmp"), Path("/var/tmp"), tmp_path, repo, home, Path.home()]
    with CanaryScan(tmp_path, roots) as scan:
        monkeypatch.setenv("CANARY", scan.canary)
        monkeypatch.setenv("EDITOR", editor(tmp_path, scan.editor_body()))
        code, _, err = tools(capfd, "secrets", "edit", AUTH)
    assert code == 0, err
    assert scan.ready.exists() and scan.scanned > 0
    assert scan.leaks == []
    # the canary really went through the editor into the encrypted file
    assert tools(capfd, "secrets", "show", AUTH, "canary")[1] == scan.canary + "\n"
    capfd.readouterr()


def test_the_canary_scan_sees_a_plain_sops_edit_leak(
    repo: Path, tmp_path: Path, admin_sops: Sops
) -> None:
    # control: plain `sops edit` with TMPDIR on disk puts the plaintext where the scan looks.
    # Where /tmp is a tmpfs (Debian 13), /var/tmp or the checkout itself is on disk.
    places = (tmp_path, Path("/var/tmp"), Path(__file__).parent)
    parent = next((d for d in places if fs_type(str(d)) != "tmpfs"), None)
    if parent is None:
        pytest.skip("/tmp, /var/tmp and the checkout are all on a tmpfs")
    tmpdir = Path(tempfile.mkdtemp(prefix="homestack-canary-", dir=parent))
    try:
        with CanaryScan(tmp_path, [tmpdir]) as scan:
            body = editor(tmp_path, scan.editor_body())
            result = admin_sops.run(
                ["edit", str(repo / AUTH)],
                env={"EDITOR": body, "TMPDIR": str(tmpdir), "CANARY": scan.canary},
            )
        assert result.returncode == 0, result.stderr
        assert scan.leaks and scan.leaks[0].is_relative_to(tmpdir)
    finally:
        shutil.rmtree(tmpdir)


def test_falls_back_to_dev_shm_when_namespaces_are_refused(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import errno

    from homestack.secrets import privtmp

    class Refusing:
        def unshare(self, _flags: int) -> int:
            ctypes_errno[0] = errno.EPERM
            return -1

    ctypes_errno = [0]
    monkeypatch.setattr(privtmp, "_libc", Refusing)
    monkeypatch.setattr(privtmp.ctypes, "get_errno", lambda: ctypes_errno[0])
    if fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    tmpdir, cleanup = privtmp.enter_private_tmp(str(tmp_path))
    try:
        assert tmpdir == cleanup and tmpdir.startswith("/dev/shm/homestack-edit-")
        assert stat.S_IMODE(Path(tmpdir).stat().st_mode) == 0o700
        assert "plaintext goes to /dev/shm/homestack-edit-" in capfd.readouterr().err
    finally:
        Path(tmpdir).rmdir()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_an_unprivileged_user_gets_a_private_tmpfs_too() -> None:
    # as `nobody`: no CAP_SYS_ADMIN, so the launcher goes through a user namespace
    mountpoint = Path(tempfile.mkdtemp(prefix="homestack-test-"))  # reachable by nobody
    # nobody cannot enter a checkout under a closed home (Debian's /root is 0700), nor the
    # virtualenv there: it runs a copy of the package with the system's interpreter (the
    # one a Debian venv links to; a pyenv one may sit under /root too).
    code = Path(tempfile.mkdtemp(prefix="homestack-code-"))
    try:
        os.chown(mountpoint, 65534, 65534)
        package = Path(sys.modules["homestack"].__file__ or "").parent
        shutil.copytree(package, code / "homestack", ignore=shutil.ignore_patterns("__pycache__"))
        code.chmod(0o755)
        probe = 'stat -f -c %T "$TMPDIR"; touch "$TMPDIR/plain"; ls "$TMPDIR"'
        system = Path("/usr/bin/python3")
        launcher = [
            str(system) if system.exists() else os.path.realpath(sys.executable),
            "-m",
            "homestack.secrets.privtmp",
            str(mountpoint),
            "--",
        ]
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                *launcher,
                "sh",
                "-c",
                probe,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(code)},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["tmpfs", "plain"]
        if "not permitted" in result.stderr:
            pytest.skip(f"user namespaces are off here: {result.stderr.strip()}")
        assert "private tmpfs" in result.stderr
        assert list(mountpoint.iterdir()) == []  # nothing reached the directory on disk
    finally:
        shutil.rmtree(mountpoint)
        shutil.rmtree(code)


def test_a_file_you_cannot_open_is_kept(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = (repo / AUTH).read_bytes()
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "missing.txt"))
    monkeypatch.setenv("EDITOR", editor(tmp_path, 'echo "x: 1" >> "$1"\n'))
    code, _, err = tools(capfd, "secrets", "edit", AUTH)
    assert code == 2
    assert f"error: {AUTH}: sops edit failed: SOPS_AGE_KEY_FILE=" in err
    assert "does not exist; the old file is kept" in err
    assert (repo / AUTH).read_bytes() == before


def test_an_editor_that_cannot_run_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from homestack.secrets import editor

    doc = tmp_path / "x.yaml"
    doc.write_text("a: 1\n")
    monkeypatch.setenv(editor.REAL_EDITOR, "/nowhere/editor")
    assert editor.main([str(doc)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "edit: /nowhere/editor: cannot run it: No such file or directory "
        "(set $EDITOR to your editor)\n"
    )
