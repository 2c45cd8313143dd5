"""sops: the command lines the wrapper runs (recorded), and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from homestack.errors import UserError
from homestack.process import RecordingRunner, Result
from homestack.secrets.sops import Sops, index_of


def test_set_passes_the_value_on_stdin_never_in_argv() -> None:
    runner = RecordingRunner()
    Sops(runner=runner, binary="sops").set(Path("secrets/a.yaml"), "db/password", "hunter2")
    (call,) = runner.calls
    assert call == (
        "sops",
        "set",
        "--value-stdin",
        "secrets/a.yaml",
        '["db"]["password"]',
    )
    assert not any("hunter2" in arg for arg in call)


def test_encrypt_reads_plaintext_from_stdin() -> None:
    runner = RecordingRunner()
    Sops(runner=runner, binary="sops").encrypt(
        '{"k": "hunter2"}',
        "secrets/a.yaml",
        config=Path("/r/.sops.yaml"),
        cwd=Path("/r"),
    )
    (call,) = runner.calls
    assert call[1:] == (
        "--config",
        "/r/.sops.yaml",
        "encrypt",
        "--filename-override",
        "secrets/a.yaml",
    )


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (51, "MAC mismatch: the file was changed outside sops"),
        (128, "none of your age identities can decrypt its data key"),
    ],
)
def test_exit_codes_become_one_line_errors(code: int, message: str) -> None:
    def fail(args: tuple[str, ...]) -> Result:
        return Result(args, code, "", "lots of\nsops output\n")

    with pytest.raises(UserError, match=message):
        Sops(runner=RecordingRunner(script=fail), binary="sops").decrypt(Path("x.yaml"))


def test_index_of_nested_keys() -> None:
    assert index_of("a") == '["a"]'
    assert index_of("pocket-id/encryption-key") == '["pocket-id"]["encryption-key"]'
    with pytest.raises(UserError):
        index_of("/")
