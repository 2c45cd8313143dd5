"""The inventory's one validator (lib/) as `tools` reports it, the corpus of bad inventories,
the CLI's exit codes, and comment-keeping edits."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from conftest import BAD, EXAMPLE, REPO, requires_nix
from hypothesis import given, settings
from hypothesis import strategies as st

from homestack.cli import cli
from homestack.errors import CheckFailed, UserError
from homestack.inventory import set_inventory_value
from homestack.plan import check_inventory, inspect, load_plan

pytestmark = requires_nix
EXPECTED: dict[str, list[str]] = json.loads(
    (REPO / "tests" / "inventories" / "bad" / "expected.json").read_text()
)
# What must never reach a user: Nix's traces and lookups that failed.
NIX_NOISE = re.compile(r"while evaluating|attribute '.*' missing|stack trace|cannot coerce|at «")


def lib_problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(data))
    return [p.removeprefix("inventory.toml: ") for p in check_inventory(path)]


def test_example_is_valid() -> None:
    assert check_inventory(EXAMPLE) == []


def test_corpus_covers_every_file_and_is_large() -> None:
    assert sorted(p.name for p in BAD) == sorted(EXPECTED)
    assert len(BAD) >= 119  # the first corpus (59) and at least 60 cases of the strict rules


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_tools_prints_lib_s_whole_list(path: Path) -> None:
    assert check_inventory(path) == [f"{path.name}: {e}" for e in EXPECTED[path.name]]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_the_nix_plan_throws_the_same_lines(path: Path) -> None:
    """`(import ./lib).mkPlan FILE`, what the flake's `lib.mkPlan` is, without the flake."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "-E", f"(import {REPO}/lib).mkPlan {path}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert not NIX_NOISE.search(out.stderr), out.stderr
    message = out.stderr[out.stderr.index("error: ") + len("error: ") :]
    lines = [line.strip() for line in message.strip().splitlines()]
    assert lines == [f"{path.name}: {e}" for e in EXPECTED[path.name]]


def test_the_flake_s_lib_throws_the_same_lines(tmp_path: Path) -> None:
    bad = next(p for p in BAD if p.stem == "two-relays")
    out = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--offline",
         "--impure", f"path:{REPO}#lib", "--apply", f"l: l.mkPlan {bad}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"two-relays.toml: {EXPECTED[bad.name][0]}" in out.stderr
    assert not NIX_NOISE.search(out.stderr), out.stderr


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


def test_check_json_lists_the_problems(capsys: pytest.CaptureFixture[str]) -> None:
    from homestack.cli import main

    bad = next(p for p in BAD if p.stem == "two-relays")
    with pytest.raises(SystemExit) as exc:
        main(["inventory", "check", "--json", str(bad)])
    assert exc.value.code == 2
    shown = json.loads(capsys.readouterr().out)
    assert shown["problems"] == [f"two-relays.toml: {e}" for e in EXPECTED[bad.name]]


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "inventory.toml"
    broken.write_text('domain = "home.arpa"\n[guests\n')
    with pytest.raises(UserError, match=r"/inventory.toml: not valid TOML: .*line 2"):
        check_inventory(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such inventory file"):
        load_plan(tmp_path / "nope.toml")


def test_a_valid_inventory_s_counts_come_from_lib() -> None:
    found = inspect(EXAMPLE, plan=False)
    assert found.problems == [] and found.plan is None
    assert found.counts == {"hosts": 2, "guests": 4, "users": 1}


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
    assert check_inventory(example) == []
    assert "# Guests: one MicroVM each" in example.read_text()


def test_set_value_in_new_table_falls_back_to_a_valid_rewrite(example: Path) -> None:
    set_inventory_value(example, ["users", "bob", "age_key"], "age1" + "p" * 58)
    data = tomllib.loads(example.read_text())
    assert data["users"]["bob"]["age_key"] == "age1" + "p" * 58
    assert data["guests"]["auth"]["routes"] == [{"name": "id", "port": 1411}]


@settings(max_examples=25, deadline=None)
@given(address=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_address_is_judged_by_the_subnet(address: int, tmp_path_factory: Any) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    dotted = ".".join(str((address >> s) & 255) for s in (24, 16, 8, 0))
    data["guests"]["db"]["address"] = dotted
    problems = lib_problems(data, tmp_path_factory.mktemp("addr"))
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
    with pytest.raises(UserError, match=r"^.*: is a directory, not an inventory file$"):
        check_inventory(tmp_path)
    latin1 = tmp_path / "inventory.toml"
    latin1.write_bytes(b'domain = "caf\xe9"\n')
    with pytest.raises(UserError, match=r"inventory.toml: not valid TOML: not UTF-8 text$"):
        check_inventory(latin1)


def test_cli_check_takes_the_inventory_option_too(tmp_path: Path) -> None:
    bad = next(p for p in BAD if p.stem == "address-outside-subnet")
    result = CliRunner().invoke(cli, ["inventory", "check", "-i", str(bad)], standalone_mode=False)
    assert isinstance(result.exception, CheckFailed)
    result = CliRunner().invoke(
        cli, ["inventory", "check", str(EXAMPLE), "-i", str(bad)], standalone_mode=False
    )
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith("give the inventory once")


def test_cli_show_of_a_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from homestack.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["inventory", "show", "-i", str(tmp_path)])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
