"""tools/homestack/cli.py: the command tree as a whole — the same `-i/--inventory` wherever
an inventory is read, whole one-line summaries, and one line plus exit 2 for bad input."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from homestack.cli import COMMANDS, cli, main

# Every command that reads an inventory (lab has its own, tested with it).
READS_INVENTORY = [
    ("inventory", "check"), ("inventory", "plan"), ("inventory", "show"), ("explain",),
    *[("secrets", c) for c in ("init", "bootstrap", "rules", "edit", "show", "set", "rotate",
                                "sync", "check", "recipients")],
    ("ca", "init"), ("ca", "trust"), ("certs", "issue"), ("certs", "check"), ("certs", "renew"),
    ("deploy",), ("provision",),
]  # fmt: skip


def command(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(cli)
    found: click.Command | None = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.get_command(ctx, name)
    assert found is not None, path
    return found


@pytest.mark.parametrize("path", READS_INVENTORY, ids=" ".join)
def test_inventory_option_is_the_same_everywhere(path: tuple[str, ...]) -> None:
    options = {
        tuple(p.opts): p.type
        for p in command(path).params
        if isinstance(p, click.Option) and "--inventory" in p.opts
    }
    assert list(options) == [("-i", "--inventory")], path
    (kind,) = options.values()
    assert isinstance(kind, click.Path) and not kind.dir_okay


@pytest.mark.parametrize("group", ["inventory", "secrets", "ca", "certs"])
def test_group_summaries_are_not_cut(group: str) -> None:
    result = CliRunner().invoke(cli, [group, "--help"], terminal_width=80)
    assert result.exit_code == 0
    assert "..." not in result.output.split("Commands:")[1], result.output


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"lab"}))
def test_json_is_offered_where_programs_read_the_output(name: str) -> None:
    wants_json: dict[str, list[str | None]] = {
        "inventory": ["check", "plan", "show"], "secrets": ["check", "sync", "recipients"],
        "certs": ["check"], "explain": [None], "deploy": [None],
    }  # fmt: skip
    for sub in wants_json.get(name, []):
        found = command((name,) if sub is None else (name, sub))
        assert any("--json" in p.opts for p in found.params if isinstance(p, click.Option))


@pytest.mark.parametrize(
    "argv",
    [
        ["inventory", "show", "-i", "{tmp}"],
        ["inventory", "plan", "-i", "{tmp}/missing.toml"],
        ["explain", "-i", "{tmp}/broken.toml"],
        ["secrets", "check", "-i", "{tmp}/broken.toml"],
        ["certs", "check", "-i", "{tmp}/broken.toml"],
        ["deploy", "--dry-run", "-i", "{tmp}/broken.toml"],
    ],
    ids=lambda argv: " ".join(a for a in argv if "{" not in a),
)
def test_bad_inventories_are_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.toml").write_text("[hosts\n")
    with pytest.raises(SystemExit) as exc:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1
