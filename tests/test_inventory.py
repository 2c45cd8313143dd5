"""tools/homestack/inventory.py: validation, the CLI's exit codes, comment-keeping edits."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BAD, EXAMPLE, expected_key
from hypothesis import given, settings
from hypothesis import strategies as st

from homestack.cli import cli
from homestack.errors import CheckFailed, UserError
from homestack.inventory import (
    check_inventory,
    load_inventory,
    mac_for,
    set_inventory_value,
    validate,
)


def test_example_is_valid() -> None:
    assert check_inventory(EXAMPLE) == []


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_inventory_is_rejected_naming_the_key(path: Path) -> None:
    problems = check_inventory(path)
    key = expected_key(path)
    assert problems, f"{path.name} was accepted"
    assert any(p.startswith(f"{path.name}: {key}: ") for p in problems), problems


def test_cli_check_exit_code_and_one_line_per_problem() -> None:
    runner = CliRunner()
    bad = next(p for p in BAD if p.stem == "address-outside-subnet")
    result = runner.invoke(cli, ["inventory", "check", str(bad)], standalone_mode=False)
    assert isinstance(result.exception, CheckFailed)
    assert result.exception.findings == [
        "address-outside-subnet.toml: guests.db.address: 192.168.101.5 is outside "
        "networks.guests.cidr 192.168.100.0/24"
    ]


def test_cli_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from homestack.cli import main

    bad = next(p for p in BAD if p.stem == "host-unknown")
    with pytest.raises(SystemExit) as exc:
        main(["inventory", "check", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("host-unknown.toml: guests.db.host: ")


def test_invalid_toml_is_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "inventory.toml"
    broken.write_text('domain = "home.arpa"\n[guests\n')
    with pytest.raises(UserError, match=r"inventory.toml: not valid TOML"):
        load_inventory(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such inventory file"):
        load_inventory(tmp_path / "nope.toml")


def test_mac_is_stable_and_locally_administered() -> None:
    assert mac_for("auth") == mac_for("auth")
    assert mac_for("auth") != mac_for("db")
    first = int(mac_for("auth").split(":")[0], 16)
    assert first & 0b10 and not first & 0b1


def test_set_value_keeps_comments(example: Path) -> None:
    before = example.read_text()
    set_inventory_value(example, ["hosts", "homelab", "host_key"], "ssh-ed25519 AAAA new")
    after = example.read_text()
    assert tomllib.loads(after)["hosts"]["homelab"]["host_key"] == "ssh-ed25519 AAAA new"
    assert after.count("#") == before.count("#")
    assert len(after.splitlines()) == len(before.splitlines())


def test_set_value_adds_missing_key_to_its_table(example: Path) -> None:
    set_inventory_value(example, ["users", "alice", "age_key"], "age1" + "q" * 58)
    set_inventory_value(example, ["guests", "db", "mac"], "02:00:00:00:00:20")
    data = tomllib.loads(example.read_text())
    assert data["guests"]["db"]["mac"] == "02:00:00:00:00:20"
    assert validate(data) == []
    assert "# Guests: one MicroVM each" in example.read_text()


def test_set_value_in_new_table_falls_back_to_a_valid_rewrite(example: Path) -> None:
    set_inventory_value(example, ["users", "bob", "age_key"], "age1" + "p" * 58)
    data = tomllib.loads(example.read_text())
    assert data["users"]["bob"]["age_key"] == "age1" + "p" * 58
    assert data["guests"]["auth"]["routes"] == [{"name": "id", "port": 1411}]


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(address=st.integers(min_value=0, max_value=2**32 - 1), name=names)
def test_any_address_is_judged_by_the_subnet(address: int, name: str) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    dotted = ".".join(str((address >> s) & 255) for s in (24, 16, 8, 0))
    data["guests"]["db"]["address"] = dotted
    problems = validate(data)
    about_db = [p for p in problems if p.startswith("guests.db.address")]
    inside = (address >> 8) == (192 << 16 | 168 << 8 | 100) and address & 255 not in (0, 1, 255)
    taken = dotted in {"192.168.100.10", "192.168.100.11", "192.168.100.2"}
    if not inside:
        assert about_db, dotted
    else:
        duplicate = [p for p in problems if "is also the address of" in p]
        assert bool(duplicate) == taken
        assert problems == duplicate


def test_unreadable_inventory_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^.*: cannot read the inventory: Is a directory$"):
        load_inventory(tmp_path)
    latin1 = tmp_path / "inventory.toml"
    latin1.write_bytes(b'domain = "caf\xe9"\n')
    with pytest.raises(UserError, match=r"inventory.toml: not valid TOML: not UTF-8 text$"):
        load_inventory(latin1)


def test_cli_check_takes_the_inventory_option_too(tmp_path: Path) -> None:
    bad = next(p for p in BAD if p.stem == "address-outside-subnet")
    result = CliRunner().invoke(cli, ["inventory", "check", "-i", str(bad)],
                                standalone_mode=False)
    assert isinstance(result.exception, CheckFailed)
    result = CliRunner().invoke(cli, ["inventory", "check", str(EXAMPLE), "-i", str(bad)],
                                standalone_mode=False)
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith("give the inventory once")


def test_cli_show_of_a_directory_exits_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from homestack.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["inventory", "show", "-i", str(tmp_path)])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
