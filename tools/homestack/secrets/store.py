"""Reading and changing one secret file: show, set, rotate. Writes go to a staged copy
that replaces the file atomically, and plaintext only travels through pipes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from homestack.errors import UserError
from homestack.fsutil import atomic_write, require_plain
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import render_rules
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import SopsFormatError, read_sops_file
from homestack.secrets.staging import Stage


def _lexical(path: Path) -> Path:
    """``path`` made absolute with `..` folded, and no link followed (unlike resolve)."""
    return Path(os.path.normpath(Path.cwd() / path))


def relative(root: Path, file: str | Path) -> str:
    """A secret file as the plan names it: relative to the repository, with `/`.

    Links are not followed (a link to another machine's file would otherwise be written
    through), and the file must be a regular file or not exist yet."""
    path = Path(file)
    absolute = _lexical(path if path.is_absolute() else Path.cwd() / path)
    bases = dict.fromkeys((root, root.resolve(), _lexical(root)))
    rel = None
    for base in bases:
        try:
            rel = absolute.relative_to(base).as_posix()
            break
        except ValueError:
            continue
    if rel is None and not path.is_absolute():
        inside = _lexical(root / path)
        if inside.exists() or inside.is_symlink():
            with contextlib.suppress(ValueError):
                rel = inside.relative_to(_lexical(root)).as_posix()
    if rel is None or rel in (".", "") or rel.startswith("../"):
        raise UserError(f"{file}: not inside the repository {root}")
    require_plain(root, rel, what="sops file")
    return rel


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


# A secret is a key, a password or a certificate: kilobytes. sops-nix decrypts whole files
# into memory (/run/secrets is a ramfs), so anything near this size belongs elsewhere.
MAX_VALUE = 1024 * 1024
RESERVED = "sops"  # sops keeps its metadata under this top-level key


def value_from_input(
    raw: bytes, shown: str, *, keep_newline: bool = False, allow_empty: bool = False
) -> str:
    """The secret a user piped in, or a UserError naming ``shown`` (``FILE: KEY``).

    Refuses what would be stored as something else than what was sent: bytes that are
    not UTF-8 (sops stores text; they would become U+FFFD), and an empty value (a
    producer that failed in a pipe looks exactly like this) unless ``allow_empty``."""
    if len(raw) > MAX_VALUE:
        raise UserError(
            f"{shown}: the value is more than {MAX_VALUE // 1024} KiB; a secret holds a key "
            "or a password, not data (nothing was stored)"
        )
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{shown}: the value on stdin is not UTF-8 text (byte {exc.start}); encode binary "
            "secrets first, e.g. with base64 (nothing was stored)"
        ) from None
    if value.endswith("\n") and not keep_newline:
        value = value[:-1]
    if value == "" and not allow_empty:
        raise UserError(
            f"{shown}: the value on stdin is empty (did the command before the pipe fail?); "
            "nothing was stored; pass --allow-empty if an empty secret is intended"
        )
    return value


def key_problem(key: str, existing: frozenset[str]) -> str | None:
    """Why ``key`` (``a/b``) must not be set in a file holding ``existing`` key paths."""
    parts = [p for p in key.split("/") if p]
    if not parts:
        return "an empty secret name"
    if any("[" in p or any(ord(c) < 0x20 for c in p) for p in parts):
        return "sops cannot address a key holding '[' or a control character"
    if parts[0] == RESERVED:
        return f"the top-level key {RESERVED!r} is reserved for sops's own metadata"
    name = "/".join(parts)
    below = sorted(k for k in existing if k.startswith(name + "/"))
    if below:
        shown = ", ".join(below[:3]) + (", …" if len(below) > 3 else "")
        return (
            f"is a section holding {len(below)} key(s) ({shown}); setting it would replace "
            "them all; set one secret by its full name"
        )
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in existing and not any(k.startswith(prefix + "/") for k in existing):
            return f"{prefix} is a value, not a section; setting {name} would replace it"
    return None


def set_secret(
    root: Path,
    plan: SecretsPlan,
    rel: str,
    key: str,
    value: str,
    *,
    sops: Sops,
    allow_empty: bool = False,
) -> bool:
    """Set ``key`` (``a/b`` for nested) in ``rel``; True if the file was created."""
    plan.spec(rel)
    require_plain(root, rel, what="sops file")
    exists = (root / rel).exists()
    try:
        existing = read_sops_file(root / rel).key_paths if exists else frozenset()
    except SopsFormatError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise UserError(
            f"{rel}: not a readable sops file ({detail}); the file is unchanged"
        ) from None
    problem = key_problem(key, existing)
    if problem is None and value == "" and not allow_empty:
        problem = "empty value (pass allow_empty to store one)"
    if problem is not None:
        raise UserError(f"{rel}: {key}: {problem}; the file is unchanged")
    if not exists:
        create_file(root, plan, rel, _nested(key, value), sops)
        return True
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
