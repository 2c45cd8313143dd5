"""The sops calls the certificate commands make, through homestack.secrets.

Plaintext keys only travel through pipes: values go to sops on stdin and come back on
stdout; creation rules and staging are the secrets package's.
"""

from __future__ import annotations

from pathlib import Path

from homestack.certs.settings import SecretRef
from homestack.errors import UserError
from homestack.process import Runner
from homestack.secrets.model import SecretsPlan
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.store import create_file, set_secret


def has_value(root: Path, file: str, key: str) -> bool:
    """Whether `file` holds `key` (a/b). Key names are clear text: nothing is decrypted."""
    path = root / file
    return path.is_file() and key in read_sops_file(path).key_paths


def decrypt_value(root: Path, file: str, key: str, runner: Runner) -> str:
    """The decrypted string at `key` in `file`."""
    path = root / file
    if not path.is_file():
        raise UserError(f"{file}: not found")
    if not has_value(root, file, key):
        raise UserError(f"{file}: has no key {key}")
    # Errors name the file as the user knows it, relative to the repository.
    return Sops(runner=runner).decrypt(path, extract=key, shown_as=file)


def set_value(
    root: Path, secrets: SecretsPlan, ref: SecretRef, value: str, runner: Runner, *, replace: bool
) -> None:
    """Store `value` at `ref` for the recipients the plan gives its file.

    With `replace`, a new file (and data key) holding only this value takes its place.
    """
    sops = Sops(runner=runner)
    if replace:
        document: dict[str, object] = {}
        node = document
        *parents, last = ref.key.split("/")
        for part in parents:
            child: dict[str, object] = {}
            node[part] = child
            node = child
        node[last] = value
        create_file(root, secrets, ref.file, document, sops=sops)
    else:
        set_secret(root, secrets, ref.file, ref.key, value, sops=sops)
