"""Locate, read and edit inventory.toml, keeping its comments.

Whether an inventory is valid is lib's question alone (`homestack.plan.inspect`); this
module only finds the file, parses it for editing, and writes changes atomically.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from homestack.errors import UserError
from homestack.fsutil import atomic_write


def find_inventory(path: Path | None = None) -> Path:
    """The inventory to use: ``path``, $HOMESTACK_INVENTORY, or inventory.toml here or above."""
    if path is not None:
        return Path(path)
    env = os.environ.get("HOMESTACK_INVENTORY")
    if env:
        return Path(env)
    here = Path.cwd()
    for directory in (here, *here.parents):
        candidate = directory / "inventory.toml"
        if candidate.is_file():
            return candidate
    return here / "inventory.toml"


def read_inventory(path: Path) -> dict[str, Any]:
    """Parse the TOML, with a one-line error naming the file on failure."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such inventory file") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise UserError(f"{path}: cannot read the inventory: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _set_in_text(text: str, keys: Sequence[str], value: Any) -> str | None:
    """Edit ``text`` in place, keeping comments: replace ``key = …`` in the right table,
    or add it at the end of that table. None when the layout is not one we can edit."""
    *table, leaf = keys
    header = "[" + ".".join(table) + "]" if table else None
    lines = text.splitlines(keepends=True)
    start = 0
    if header is not None:
        for i, line in enumerate(lines):
            if line.strip() == header:
                start = i + 1
                break
        else:
            return None
    end = len(lines)
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith("["):
            end = i
            break
    line_re = re.compile(rf"^(\s*){re.escape(leaf)}\s*=\s*")
    rendered = f"{leaf} = {_toml_value(value)}\n"
    for i in range(start, end):
        if line_re.match(lines[i]):
            old = lines[i]
            # Only single-line values are replaced; a comment after the value is kept.
            comment = ""
            try:
                tomllib.loads(old)
            except tomllib.TOMLDecodeError:
                return None
            m = re.search(r"\s#[^\"']*$", old.rstrip("\n"))
            if m:
                comment = m.group(0)
            lines[i] = f"{leaf} = {_toml_value(value)}{comment}\n"
            return "".join(lines)
    insert = end
    # Before the blank lines and comments that introduce the next table.
    while insert > start and (
        not lines[insert - 1].strip() or lines[insert - 1].lstrip().startswith("#")
    ):
        insert -= 1
    lines.insert(insert, rendered)
    return "".join(lines)


def set_inventory_value(path: Path, keys: Sequence[str], value: Any) -> None:
    """Set ``keys`` (e.g. ["hosts", "homelab", "host_key"]) to ``value``, atomically.

    Comments and layout are kept when the key's table is written as a ``[table]`` header;
    otherwise the file is rewritten with tomli-w (valid TOML, comments lost)."""
    path = Path(path)
    text = path.read_text()
    data = tomllib.loads(text)
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"{path}: {'.'.join(keys)}: {key} is not a table")
    node[keys[-1]] = value
    edited = _set_in_text(text, keys, value)
    if edited is not None:
        try:
            if tomllib.loads(edited) == data:
                atomic_write(path, edited.encode(), mode=path.stat().st_mode & 0o777)
                return
        except tomllib.TOMLDecodeError:
            pass
    atomic_write(path, tomli_w.dumps(data).encode(), mode=path.stat().st_mode & 0o777)
