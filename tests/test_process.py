"""tools/homestack/process.py: the runner's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from homestack.errors import UserError
from homestack.process import Runner, error_line


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # Nix: the error line, not the hint after it
        (
            "warning: error: unable to download 'x'; retrying\n"
            "error: unable to download 'x': Couldn't resolve host name (6)\n"
            "(use '--show-trace' to show detailed location information)\n",
            "unable to download 'x': Couldn't resolve host name (6)",
        ),
        (
            "\x1b[31;1merror:\x1b[0m inventory.toml: guests.db.address: bad\n",
            "inventory.toml: guests.db.address: bad",
        ),
        ("some output\nFor full logs, run 'nix log /nix/store/x.drv'.\n", "some output"),
        (
            "zfs: cannot open 'tank/x': dataset does not exist\n",
            "zfs: cannot open 'tank/x': dataset does not exist",
        ),
        ("", "exit code 3"),
    ],
)
def test_error_line(output: str, expected: str) -> None:
    assert error_line(output, "exit code 3") == expected


def test_a_missing_program_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"^no-such-program-here: command not found"):
        Runner().run(["no-such-program-here"], check=False)


def test_a_program_path_that_cannot_run_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"/nowhere/editor: cannot run it: No such file"):
        Runner().run(["/nowhere/editor"], check=False)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match=r"not-executable: cannot run it: Permission denied"):
        Runner().run([str(script)], check=False)
