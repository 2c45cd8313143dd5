"""Reading and changing one secret file: show, set, rotate. Writes go to a staged copy
that replaces the file atomically, and plaintext only travels through pipes.
"""

from __future__ import annotations

import json
from pathlib import Path

from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import render_rules
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.staging import Stage


def relative(root: Path, file: str | Path) -> str:
    """A secret file as the plan names it: relative to the repository, with `/`."""
    path = Path(file)
    absolute = path if path.is_absolute() else (Path.cwd() / path)
    try:
        return absolute.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        candidate = (root / path).resolve()
        if not path.is_absolute() and candidate.exists():
            return candidate.relative_to(root.resolve()).as_posix()
        raise UserError(f"{file}: not inside the repository {root}") from None


def _nested(key: str, value: str) -> dict[str, object]:
    parts = [p for p in key.split("/") if p]
    document: dict[str, object] = {}
    node = document
    for part in parts[:-1]:
        child: dict[str, object] = {}
        node[part] = child
        node = child
    node[parts[-1]] = value
    return document


def create_file(
    root: Path, plan: SecretsPlan, rel: str, document: dict[str, object], sops: Sops
) -> None:
    """Encrypt a new file for the recipients the plan gives it (plaintext via stdin)."""
    plan.spec(rel)
    stage = Stage.create(root, "new", render_rules(plan))
    try:
        # JSON is valid YAML and needs no emitter care; sops writes its own YAML.
        encrypted = sops.encrypt(json.dumps(document), rel, config=stage.config, cwd=stage.dir)
    finally:
        stage.remove()
    atomic_write(root / rel, encrypted.encode())


def set_secret(
    root: Path, plan: SecretsPlan, rel: str, key: str, value: str, *, sops: Sops
) -> bool:
    """Set ``key`` (``a/b`` for nested) in ``rel``; True if the file was created."""
    if not (root / rel).exists():
        create_file(root, plan, rel, _nested(key, value), sops)
        return True
    plan.spec(rel)
    stage = Stage.create(root, "set", render_rules(plan))
    try:
        staged = stage.copy_in(rel)
        sops.set(staged, key, value, config=stage.config, shown_as=rel)
        stage.commit(rel)
    finally:
        stage.remove()
    return False


def rotate_file(root: Path, plan: SecretsPlan, rel: str, sops: Sops) -> None:
    """A new data key for ``rel``, every value re-encrypted; checked before it replaces the file."""
    if not (root / rel).exists():
        raise UserError(f"{rel}: no such file")
    stage = Stage.create(root, "rotate", render_rules(plan))
    try:
        staged = stage.copy_in(rel)
        sops.rotate(staged, config=stage.config, shown_as=rel)
        problems = read_sops_file(staged).problems
        if problems:
            raise UserError(f"{rel}: rotated copy is damaged ({problems[0]}); the old file is kept")
        sops.decrypt(staged, config=stage.config, shown_as=rel)
        stage.commit(rel)
    finally:
        stage.remove()
