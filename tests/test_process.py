"""tools/homestack/process.py: the runner's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from homestack.errors import UserError
from homestack.lab.daemons import LabRunner
from homestack.process import Call, RecordingRunner, Result, Runner, error_line


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


def test_a_failed_checked_command_is_its_last_line_of_stderr() -> None:
    with pytest.raises(UserError) as err:
        Runner().run(["sh", "-c", "echo first >&2; echo 'last words' >&2; exit 3"], check=True)
    assert str(err.value) == "sh -c echo first >&2; echo 'last words' >&2; exit 3: last words"
    with pytest.raises(UserError, match=r"^false: exit code 1$"):
        Runner().run(["false"], check=True)
    assert Runner().run(["false"], check=False).returncode == 1


def test_the_lab_runner_starts_in_root_unless_told_and_says_the_whole_message(
    tmp_path: Path,
) -> None:
    lab, here = LabRunner(), Runner()
    assert lab.run(["pwd"], check=True).stdout == "/\n"
    assert lab.run(["pwd"], check=True, cwd=tmp_path).stdout == f"{tmp_path}\n"
    assert here.run(["pwd"], check=True).stdout == f"{Path.cwd()}\n"
    log = tmp_path / "spawned.log"
    lab.spawn(["pwd"], log=log).wait(timeout=10)
    here.spawn(["pwd"], log=log).wait(timeout=10)
    assert log.read_text() == f"/\n{Path.cwd()}\n"
    with pytest.raises(UserError) as err:
        lab.run(["sh", "-c", "echo one >&2; echo two >&2; exit 4"], check=True)
    assert str(err.value) == "sh: exit code 4:\n    one\n    two"


def test_a_recording_runner_scripts_some_calls_and_hands_on_the_rest(tmp_path: Path) -> None:
    def script(args: tuple[str, ...]) -> Result | None:
        return Result(args, 1, "", "refused\n") if args[0] == "ssh" else None

    quiet = RecordingRunner(script=script)
    real = RecordingRunner(script=script, otherwise=LabRunner())
    for runner in (quiet, real):
        with pytest.raises(UserError, match=r"^ssh host true: refused$"):
            runner.run(["ssh", "host", "true"], check=True)
    assert quiet.run(["pwd"], check=True).stdout == ""
    assert real.run(["pwd"], check=True).stdout == "/\n"  # the real runner's own folder
    assert real.run(["cat"], check=True, input="fed\n", cwd=tmp_path).stdout == "fed\n"
    assert quiet.calls == [("ssh", "host", "true"), ("pwd",)]
    assert real.calls == [("ssh", "host", "true"), ("pwd",), ("cat",)]


def test_a_runner_is_one_hook_to_override() -> None:
    class Spy(Runner):
        def __init__(self) -> None:
            self.seen: list[Call] = []

        def execute(self, call: Call) -> Result:
            self.seen.append(call)
            return super().execute(call)

    spy = Spy()
    assert spy.run(["cat"], check=True, input=b"raw", timeout=5).stdout == "raw"
    assert spy.seen == [Call(("cat",), b"raw", None, None, 5, True)]
