"""homestack.auditlog and its hook in homestack.cli: one JSON line per mutating command,
appended whole, naming who and the result, never a secret value."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, requires_nix

from homestack import auditlog
from homestack.cli import cli, main


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit" / "audit.log"
    monkeypatch.setenv("HOMESTACK_AUDIT_LOG", str(path))
    monkeypatch.setenv("HOMESTACK_APPROVAL_KEY", str(tmp_path / "approval.key"))
    key = tmp_path / "keys.txt"
    key.write_text(
        "# created: 2026-11-01T00:00:00Z\n# public key: age1publicpart\n"
        "AGE-SECRET-KEY-1NOTAREALKEYBUTNEVERLOGGEDEITHER\n"
    )
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    return path


def entries(path: Path) -> list[dict[str, Any]]:
    return list(auditlog.read(path))


@pytest.mark.parametrize(("path", "args", "expected"), [
    (["secrets", "set"], ["secrets/db.yaml", "password"], True),
    (["secrets", "rules"], [], True),
    (["secrets", "rules"], ["--check"], False),
    (["secrets", "check"], [], False),
    (["deploy"], [], True),
    (["deploy"], ["db", "--approve", "x"], True),
    (["deploy"], ["--dry-run"], False),
    (["deploy"], ["status", "db"], False),
    (["deploy"], ["--help"], False),
    (["ca", "trust"], [], False),
    (["ca", "trust"], ["--install"], True),
    (["certs", "renew"], ["--days", "10"], True),
    (["inventory", "plan"], [], False),
])  # fmt: skip
def test_the_declared_table_says_what_mutates(
    path: list[str], args: list[str], expected: bool
) -> None:
    assert auditlog.mutating(path, args) is expected


def test_secret_bearing_option_values_are_never_written() -> None:
    assert auditlog.redact(["db", "--approve", "abc", "--value=hunter2", "-i", "x.toml"]) == [
        "db",
        "--approve",
        "<redacted>",
        "--value=<redacted>",
        "-i",
        "x.toml",
    ]


def test_a_failed_mutating_command_is_logged_with_its_error_line(tmp_path: Path, log: Path) -> None:
    missing = tmp_path / "nowhere" / "inventory.toml"
    with pytest.raises(SystemExit) as exit_info:
        main(["certs", "-i", str(missing), "issue"])
    assert exit_info.value.code == 2
    (entry,) = entries(log)
    assert entry["command"] == "certs issue"
    assert entry["args"] == ["-i", str(missing)]
    assert entry["result"].startswith("error: ") and "inventory" in entry["result"]
    assert entry["who"]["age_recipient"] == "age1publicpart"
    assert entry["who"]["user"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_read_only_commands_leave_no_line(tmp_path: Path, log: Path) -> None:
    with pytest.raises(SystemExit):
        main(["secrets", "-i", str(tmp_path / "none.toml"), "check"])
    assert not log.exists()


@requires_nix
def test_a_value_read_from_stdin_never_reaches_the_log(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "repo" / "inventory.toml"
    inventory.parent.mkdir()
    shutil.copyfile(EXAMPLE, inventory)
    monkeypatch.setattr("sys.stdin", io.StringIO("correct-horse-battery-staple\n"))
    with contextlib.suppress(SystemExit):  # without sops it fails; the line is written anyway
        main(["secrets", "-i", str(inventory), "set", "secrets/db.yaml", "extra"])
    text = log.read_text()
    assert "correct-horse-battery-staple" not in text
    assert "AGE-SECRET-KEY" not in text
    (entry,) = entries(log)
    assert entry["command"] == "secrets set"
    assert entry["args"] == ["-i", str(inventory), "secrets/db.yaml", "extra"]


@requires_nix
def test_an_approval_is_logged_with_its_diff_hash_and_audit_prints_it(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "repo" / "inventory.toml"
    inventory.parent.mkdir()
    inventory.write_text(EXAMPLE.read_text().replace("memory = 512", "memory = 1024"))
    main(["plan", "approve", "-i", str(inventory), "--against", str(EXAMPLE)])
    out = capsys.readouterr().out
    digest = out.split("diff ")[-1].split()[0]
    (entry,) = entries(log)
    assert entry["command"] == "plan approve" and entry["result"] == "ok"
    assert entry["diff"] == digest and len(digest) == 64
    token = out.split("approval token: ")[1].strip()
    assert token not in log.read_text()  # the token is output for a person, not a record

    shown = CliRunner().invoke(cli, ["audit", "-i", str(inventory)])
    assert shown.exit_code == 0
    assert "tools plan approve" in shown.output and f"diff {digest[:12]}" in shown.output
    as_json = CliRunner().invoke(cli, ["audit", "-i", str(inventory), "--json"])
    assert json.loads(as_json.output.splitlines()[0])["diff"] == digest


def _append_many(path: str, worker: int) -> None:
    for n in range(40):
        auditlog.append(Path(path), {"worker": worker, "n": n, "pad": "x" * 20000})


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    seen = [(e["worker"], e["n"]) for e in entries(path)]
    assert sorted(seen) == [(w, n) for w in range(4) for n in range(40)]


def test_a_damaged_line_is_reported_not_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    auditlog.append(path, {"command": "deploy"})
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(auditlog.UserError, match=r"audit.log:2: not a JSON line"):
        entries(path)


def test_who_names_the_agents_ssh_keys_by_fingerprint(
    tmp_path: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh-add"
    fake.write_text("#!/bin/sh\necho '256 SHA256:Zm9vYmFy alice@laptop (ED25519)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    person = auditlog.who()
    assert person["ssh_keys"] == ["SHA256:Zm9vYmFy"]
    assert person["age_recipient"] == "age1publicpart"
    monkeypatch.delenv("SSH_AUTH_SOCK")
    assert auditlog.who()["ssh_keys"] == []
    monkeypatch.setenv("SUDO_USER", "alice")
    assert auditlog.who()["sudo_user"] == "alice"


def test_no_inventory_no_log_and_no_directory_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMESTACK_AUDIT_LOG", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        main(["certs", "-i", str(empty / "inventory.toml"), "issue"])
    assert list(empty.iterdir()) == []
