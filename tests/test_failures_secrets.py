"""`tools secrets` on bad input and damaged files: one line naming the file, exit 2, and
every file byte for byte as it was (sha256 before and after). Never a traceback.

The classes (see the module's sections): values on stdin, key names, links and files that
are not regular files, damaged or tampered files, key files, and the editor.
"""

from __future__ import annotations

import hashlib
import io
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest
from test_secrets_helpers import BOB, VECTORS, add_admin, tools

from homestack.secrets.sops import Sops
from homestack.secrets.store import MAX_VALUE

VPN = "secrets/vpn.yaml"
AUTH = "secrets/auth.yaml"
PGP_ONLY = VECTORS / "sops-nix" / "secrets.yaml"  # sops-nix's vector: age and PGP keys


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file of the repository (links by their target's name), but the
    audit log under .homestack/, whose job is to record the refused command."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".homestack" or rel.startswith(".homestack/"):
            continue
        if path.is_symlink():
            found[rel] = f"link:{path.readlink()}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """What `… | tools secrets set` reads: bytes, as a pipe gives them."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `tools ARGV`; it must fail as a user error: exit 2, one line, no traceback."""
    code, _, err = tools(capsys, *argv)
    assert "Traceback" not in err
    assert code == 2, err
    # progress lines (sync's counters) may come first; the error is one line, the last
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


class Refuse(Protocol):
    def __call__(self, *argv: str, value: bytes | None = None) -> str: ...


@pytest.fixture
def refuse(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Refuse:
    """`tools ARGV` (with ``value`` on stdin, when given) must be `refused` and leave every
    file of the repository byte for byte as it was; returns its error line."""

    def attempt(*argv: str, value: bytes | None = None) -> str:
        if value is not None:
            stdin(monkeypatch, value)
        before = digests(repo)
        line = refused(capsys, *argv)
        assert digests(repo) == before
        return line

    return attempt


# --- values on stdin ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "the value on stdin is empty"),
        (b"\n", "the value on stdin is empty"),
        (b"\xff\xfe\x00binary", "not UTF-8 text (byte 0)"),
        (b"ok then \xc3", "not UTF-8 text (byte 8)"),
        (b"x" * (MAX_VALUE + 1), "the value is more than 1024 KiB"),
    ],
    ids=["empty", "newline-only", "binary", "truncated-utf8", "huge"],
)
def test_set_refuses_a_value_it_would_not_store_as_sent(
    refuse: Refuse, data: bytes, why: str
) -> None:
    line = refuse("secrets", "set", VPN, "netbird/turn-password", value=data)
    assert line.startswith(f"error: {VPN}: netbird/turn-password: ")
    assert why in line and "nothing was stored" in line


@pytest.mark.parametrize(
    ("value", "key"),
    [(b"", "ca/key"), (b"value", "sops")],
    ids=["an-empty-value", "a-sops-key"],
)
def test_a_refused_set_creates_no_file(repo: Path, refuse: Refuse, value: bytes, key: str) -> None:
    """Neither an empty value nor the key `sops` makes a file that does not exist yet."""
    refuse("secrets", "set", "secrets/ca.yaml", key, value=value)
    assert not (repo / "secrets/ca.yaml").exists()


def test_an_empty_value_is_stored_when_asked_for(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin(monkeypatch, b"")
    code, _, err = tools(capsys, "secrets", "set", "--allow-empty", VPN, "netbird/turn-password")
    assert code == 0, err
    assert tools(capsys, "secrets", "show", VPN, "netbird/turn-password")[1] == "\n"


def test_a_failing_producer_in_a_real_pipe_stores_nothing(repo: Path) -> None:
    before = digests(repo)
    tools_bin = Path(sys.executable).parent / "tools"
    result = subprocess.run(
        ["sh", "-c", f"false | {tools_bin} secrets set {VPN} netbird/turn-password"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {VPN}: netbird/turn-password: the value on stdin")
    assert digests(repo) == before


# --- key names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (
            "netbird",
            "is a section holding 3 key(s) (netbird/datastore-key, netbird/relay-secret",
        ),
        ("/netbird/", "is a section holding 3 key(s)"),
        ("sops", "the top-level key 'sops' is reserved"),
        ("sops/mac", "the top-level key 'sops' is reserved"),
        ("netbird/turn-password/x", "netbird/turn-password is a value, not a section"),
    ],
)
def test_set_refuses_a_key_that_would_replace_other_keys_or_sops_metadata(
    refuse: Refuse, capsys: pytest.CaptureFixture[str], key: str, why: str
) -> None:
    line = refuse("secrets", "set", VPN, key, value=b"value")
    assert line.startswith(f"error: {VPN}: {key}: ") and why in line
    assert line.endswith("the file is unchanged")
    # and the file still opens: nothing was written into its metadata
    assert tools(capsys, "secrets", "show", VPN, "netbird/relay-secret")[0] == 0


@pytest.mark.parametrize("key", ["ключ", 'a"b', "a b\\c", "x'y", "a]b"])
def test_a_key_name_is_stored_as_given_not_escaped(
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
) -> None:
    stdin(monkeypatch, b"v")
    assert tools(capsys, "secrets", "set", VPN, key)[0] == 0
    assert tools(capsys, "secrets", "show", VPN, key)[1] == "v\n"
    from homestack.secrets.sopsfile import read_sops_file

    assert key in read_sops_file(repo / VPN).key_paths  # not \u043a… or a\"b


@pytest.mark.parametrize("key", ["a[b", "line\nbreak"])
def test_a_key_sops_cannot_address_is_refused(refuse: Refuse, key: str) -> None:
    line = refuse("secrets", "set", VPN, key, value=b"v")
    shown = key if key.isprintable() else repr(key)
    assert line.startswith(f"error: {VPN}: {shown}: sops cannot address a key holding '['")


# --- links and files that are not regular files -----------------------------------------------


def link_db_to_vpn(repo: Path) -> None:
    """secrets/db.yaml (the db guest's file) as a link to the vpn guest's file."""
    (repo / "secrets/db.yaml").symlink_to("vpn.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ("secrets", "set", "secrets/db.yaml", "password"),
        ("secrets", "rotate", "secrets/db.yaml"),
        ("secrets", "edit", "secrets/db.yaml"),
        ("secrets", "show", "secrets/db.yaml"),
        ("secrets", "recipients", "secrets/db.yaml"),
    ],
    ids=lambda argv: argv[1],
)
def test_a_link_to_another_machines_file_is_never_followed(
    repo: Path, monkeypatch: pytest.MonkeyPatch, refuse: Refuse, argv: tuple[str, ...]
) -> None:
    link_db_to_vpn(repo)
    monkeypatch.setenv("EDITOR", "false")
    assert refuse(*argv, value=b"db-password") == (
        "error: secrets/db.yaml: is a symbolic link (to vpn.yaml); a sops file must be a "
        "regular file in the repository, not followed through a link"
    )


def test_a_link_out_of_the_repository_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    outside = tmp_path / "outside.yaml"
    shutil.copyfile(repo / VPN, outside)
    (repo / "secrets/db.yaml").symlink_to(outside)
    before, kept = digests(repo), outside.read_bytes()
    stdin(monkeypatch, b"x")
    assert "is a symbolic link" in refused(capsys, "secrets", "set", "secrets/db.yaml", "k")
    assert digests(repo) == before and outside.read_bytes() == kept


def test_a_linked_directory_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    shutil.move(repo / "secrets/shared", elsewhere)
    (repo / "secrets/shared").symlink_to(elsewhere)
    before = digests(elsewhere)
    stdin(monkeypatch, b"x")
    line = refused(capsys, "secrets", "set", "secrets/shared/pg-pocketid.yaml", "password")
    assert "secrets/shared: is a symbolic link" in line
    assert digests(elsewhere) == before


@pytest.mark.parametrize("command", ["set", "rotate", "edit", "show", "recipients"])
def test_a_directory_is_not_a_sops_file(
    repo: Path, monkeypatch: pytest.MonkeyPatch, refuse: Refuse, command: str
) -> None:
    (repo / "secrets/db.yaml").mkdir()
    monkeypatch.setenv("EDITOR", "false")
    argv = ["secrets", command, "secrets/db.yaml"] + (["k"] if command == "set" else [])
    line = refuse(*argv, value=b"x")
    assert line == "error: secrets/db.yaml: is a directory, not a sops file"


def test_a_named_pipe_is_refused_without_waiting_on_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(repo / "secrets/db.yaml")
    start = time.monotonic()
    line = refused(capsys, "secrets", "show", "secrets/db.yaml")
    assert line == "error: secrets/db.yaml: is a named pipe, not a sops file"
    stdin(monkeypatch, b"x")
    assert "is a named pipe" in refused(capsys, "secrets", "set", "secrets/db.yaml", "k")
    assert time.monotonic() - start < 30


def test_check_and_sync_name_a_link_among_the_secret_files(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link_db_to_vpn(repo)
    add_admin(repo / "inventory.toml", "bob", BOB)  # so that sync has work to do
    before = digests(repo)
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2 and "Traceback" not in err
    assert "secrets/db.yaml: broken: is a symbolic link; a sops file must be a regular file" in (
        err.splitlines()
    )
    line = refused(capsys, "secrets", "sync")
    assert line.startswith("error: ") and "secrets/db.yaml" in line and "symbolic link" in line
    assert digests(repo) == before


# --- damaged and tampered files ---------------------------------------------------------------


def alter(key: str) -> Callable[[Path], None]:
    """Change the first letter of ``key``'s ciphertext: the file stays well-formed YAML."""

    def tamper(path: Path) -> None:
        text = path.read_text()
        match = re.search(rf"{key}: ENC\[AES256_GCM,data:(.)", text)
        assert match
        flipped = "A" if match.group(1) != "A" else "B"
        path.write_text(text[: match.start(1)] + flipped + text[match.end(1) :])

    return tamper


alter_mac = alter("mac")
alter_value = alter("turn-password")


@pytest.mark.parametrize("tamper", [alter_mac, alter_value], ids=["mac", "value"])
def test_check_finds_a_file_changed_outside_sops(
    repo: Path, capsys: pytest.CaptureFixture[str], tamper: Callable[[Path], None]
) -> None:
    tamper(repo / VPN)
    before = digests(repo)
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2 and "Traceback" not in err
    mine = [line for line in err.splitlines() if line.startswith(VPN)]
    assert mine and "does not verify" in mine[0], err
    assert digests(repo) == before


@pytest.mark.parametrize("tamper", [alter_mac, alter_value], ids=["mac", "value"])
def test_sync_never_re_keys_a_tampered_file(
    repo: Path, capsys: pytest.CaptureFixture[str], refuse: Refuse, tamper: Callable[[Path], None]
) -> None:
    add_admin(repo / "inventory.toml", "bob", BOB)  # every file gains a recipient
    tools(capsys, "secrets", "rules")
    tamper(repo / VPN)
    line = refuse("secrets", "sync")
    assert line.startswith(f"error: {VPN}: sops decrypt failed: ")
    assert "changed outside sops (damaged or tampered with)" in line
    assert line.endswith("not re-keyed, every file is unchanged")
    assert not (repo / "secrets/.sync").exists()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda text: text[: len(text) // 2], ""),
        (lambda text: text[: text.index("    lastmodified")], "no lastmodified"),
        (lambda _: "", "not a sops file"),
        (lambda _: "\x00\x01garbage", ""),
    ],
    ids=["half", "cut-before-lastmodified", "empty", "garbage"],
)
def test_a_damaged_file_is_an_error_naming_it(
    repo: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[str], str], why: str
) -> None:
    path = repo / VPN
    path.write_text(damage(path.read_text()))
    before = digests(repo)
    code, out, err = tools(capsys, "secrets", "recipients", VPN)
    assert code == 2 and "Traceback" not in err
    assert "None" not in out + err
    assert f"error: {VPN}: " in err and why in err
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2 and any(line.startswith(f"{VPN}: broken") for line in err.splitlines())
    assert refused(capsys, "secrets", "show", VPN).startswith(f"error: {VPN}")
    assert digests(repo) == before


def test_pgp_recipients_are_named_not_nobody(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = PGP_ONLY.read_text()
    # keep only its PGP keys: drop the age list (its entries run up to lastmodified)
    pgp_only = re.sub(r"    age:\n(?:        .*\n)*?(?=    lastmodified)", "", text)
    assert "age1" not in pgp_only
    (repo / "secrets/old.yaml").write_text(pgp_only)
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2
    line = next(line for line in err.splitlines() if line.startswith("secrets/old.yaml"))
    assert "nobody" not in line
    assert "pgp key 7FB89715AADA920D65D25E63F9BA9DEBD03F57C0" in line
    code, out, _ = tools(capsys, "secrets", "recipients", "secrets/old.yaml")
    assert code == 0 and "pgp:2504791468B153B8A3963CC97BA53D1919C5DFD4" in out


def test_without_an_admin_key_check_says_the_mac_was_not_verified(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], admin_sops: Sops,
) -> None:  # fmt: skip
    from test_secrets_audit import complete

    complete(repo, admin_sops)
    alter_value(repo / VPN)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "none.txt"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    code, out, err = tools(capsys, "secrets", "check")
    # the metadata is in line, but a tampered value cannot be seen without the key: it says so
    assert (code, err) == (0, "")
    assert out == "secrets: 15 files match the inventory; MAC not verified (no admin key)\n"


# --- key files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "who"), [(0o644, "others"), (0o640, "its group")])
def test_an_age_key_others_can_read_is_refused(  # noqa: PLR0917 - fixtures, by name
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], session_keys: Path, mode: int, who: str,
) -> None:  # fmt: skip
    key = tmp_path / "keys.txt"
    shutil.copyfile(session_keys / "admin_alice.agekey", key)
    key.chmod(mode)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    before = digests(repo)
    line = refused(capsys, "secrets", "show", VPN)
    assert line == (
        f"error: {key}: this age key is readable by {who} (mode {mode:04o}); it must be 0600: "
        f"run `chmod 600 {key}` (and consider the key exposed if others use this machine)"
    )
    stdin(monkeypatch, b"x")
    assert "readable by" in refused(capsys, "secrets", "set", VPN, "netbird/turn-password")
    assert "readable by" in refused(capsys, "secrets", "check")  # once, not once per file
    # init never claims "(mode 0600)" for a key that is not
    code, out, err = tools(capsys, "secrets", "init")
    assert code == 2 and "mode 0600)" not in out and "readable by" in err
    assert digests(repo) == before


def test_a_directory_as_the_key_file_is_one_line(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path))
    assert "not an age key file" in refused(capsys, "secrets", "show", VPN)


# --- the editor -------------------------------------------------------------------------------


def editor_script(tmp_path: Path) -> str:
    """First run: add a line and break the YAML. Second run: fix only the broken line."""
    script = tmp_path / "editor.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f'if [ ! -e "{tmp_path}/once" ]; then\n'
        f'  touch "{tmp_path}/once"\n'
        '  printf "kept: my edit\\nbroken: [\\n" >> "$1"\n'
        "else\n"
        '  sed -i "/^broken/d" "$1"\n'
        "fi\n"
    )
    script.chmod(0o755)
    return str(script)


def edit_on_a_terminal(repo: Path, editor: str, answer: bytes) -> tuple[int, str]:
    """`tools secrets edit` with a terminal as its stdin; ``answer`` typed when asked."""
    leader, follower = pty.openpty()
    env = {**os.environ, "EDITOR": editor}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tools"), "secrets", "edit", AUTH],
        cwd=repo, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(follower)
    os.write(leader, answer)
    out, err = proc.communicate(timeout=120)
    os.close(leader)
    return proc.returncode, out.decode() + err.decode()


def test_edit_with_invalid_yaml_reopens_the_editor_on_the_users_text(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = edit_on_a_terminal(repo, editor_script(tmp_path), b"y\n")
    assert code == 0, output
    assert "Traceback" not in output
    assert "edit: not valid YAML" in output and "re-open the editor with your changes?" in output
    # the edit made before the mistake survived the second round
    assert tools(capsys, "secrets", "show", AUTH, "kept")[1] == "my edit\n"


def test_edit_declined_keeps_the_old_file(repo: Path, tmp_path: Path) -> None:
    before = digests(repo)
    code, output = edit_on_a_terminal(repo, editor_script(tmp_path), b"n\n")
    assert code == 2, output
    assert "Traceback" not in output
    assert "your changes were discarded" in output and "the old file is kept" in output
    assert digests(repo) == before


def test_edit_without_a_terminal_says_the_changes_were_discarded(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    before = digests(repo)
    monkeypatch.setenv("EDITOR", editor_script(tmp_path))
    code, _, err = tools(capfd, "secrets", "edit", AUTH)
    assert code == 2 and "Traceback" not in err
    assert "no terminal to ask on" in err and "the old file is kept" in err
    assert digests(repo) == before


# --- other inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "binary", "public-key", "directory"])
def test_bootstrap_names_a_key_file_it_cannot_import(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    key = tmp_path / "key"
    if kind == "fifo":
        os.mkfifo(key)  # read naively, this would hang
    elif kind == "binary":
        key.write_bytes(bytes(range(256)) * 8)
    elif kind == "public-key":
        key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0= root@db\n")
    else:
        key.mkdir()
    before = digests(repo)
    argv = ("secrets", "bootstrap", "db", "--key", str(key), "--force", "--no-sync")
    code, _, err = tools(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    assert str(key) in err.splitlines()[-1]
    assert digests(repo) == before


@pytest.mark.parametrize("key", ["", "/", "//"])
def test_set_refuses_an_empty_name_before_reading_a_value(refuse: Refuse, key: str) -> None:
    line = refuse("secrets", "set", VPN, key, value=b"value")
    assert line == f"error: {VPN}: {key}: an empty secret name; the file is unchanged"
