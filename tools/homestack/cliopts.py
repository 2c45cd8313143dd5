"""Options every command group shares, so `-i/--inventory` reads and behaves the same
wherever an inventory is read.

Groups (`secrets`, `ca`, `certs`) accept the option before or after the subcommand name;
the value given last wins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from homestack.inventory import find_inventory

INVENTORY_HELP = (
    "The inventory (default: $HOMESTACK_INVENTORY, else inventory.toml in this "
    "directory or the nearest one above it)."
)
_META_KEY = "homestack.inventory"

F = TypeVar("F", bound=Callable[..., object])


def inventory_option(f: F) -> F:
    """`-i/--inventory FILE`, passed to the command as ``inventory_path``."""
    return click.option(
        "-i",
        "--inventory",
        "inventory_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=INVENTORY_HELP,
    )(f)


def _remember(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    # Only remembered, never evaluated here: `--help` must not wait for Nix.
    if value is not None:
        ctx.meta[_META_KEY] = value


def shared_inventory_option(f: F) -> F:
    """`-i/--inventory FILE` for a group and its subcommands; read it with `inventory_path`."""
    return click.option(
        "-i",
        "--inventory",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_remember,
        help=INVENTORY_HELP,
    )(f)


def inventory_path(ctx: click.Context) -> Path:
    """The inventory a shared option named (on the group or the subcommand), else the default."""
    given: Path | None = ctx.meta.get(_META_KEY)
    return find_inventory(given)


def repo_root(ctx: click.Context | None = None) -> Path:
    """The repository: the directory of the inventory in use (found as `find_inventory` does)."""
    path = inventory_path(ctx) if ctx is not None else find_inventory(None)
    return path.resolve().parent
