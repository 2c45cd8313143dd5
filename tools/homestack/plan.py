"""Evaluate the Nix plan of an inventory (lib/ is the one implementation of the plan)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.inventory import read_inventory
from homestack.process import Runner, default_runner, error_line

# lib/ ships inside the repository; tools may also run from an installed copy that
# carries lib/ next to the package (the flake's package does), or HOMESTACK_LIB.
_HERE = Path(__file__).resolve().parent


def lib_dir(inventory: Path | None = None) -> Path:
    """Where lib/ is: next to the inventory (the checkout it belongs to), $HOMESTACK_LIB,
    or the checkout these tools run from."""
    candidates = [inventory.parent / "lib"] if inventory is not None else []
    env = os.environ.get("HOMESTACK_LIB")
    candidates += [Path(env)] if env else []
    candidates += [_HERE.parent.parent / "lib", _HERE / "lib"]
    for candidate in candidates:
        if (candidate / "eval.nix").is_file():
            return candidate
    raise UserError("lib/eval.nix not found: set HOMESTACK_LIB to the repository's lib/ directory")


def load_plan(inventory: Path, runner: Runner = default_runner) -> dict[str, Any]:
    """The plan of ``inventory`` as evaluated by lib/ (needs `nix-instantiate`, no nixpkgs)."""
    if shutil.which("nix-instantiate") is None:
        raise UserError(
            "nix-instantiate: command not found; the plan is computed by Nix "
            "(Debian/Ubuntu: apt-get install nix-bin; or use the flake's dev shell)"
        )
    # Parse it here first: TOML errors then name the file, which Nix's do not.
    read_inventory(inventory)
    inventory = Path(inventory).resolve()
    result = runner.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            "--readonly-mode",
            str(lib_dir(inventory) / "eval.nix"),
            "--argstr",
            "inventory",
            str(inventory),
        ],
        check=False,
        env={"NIX_PATH": "", "NIX_REMOTE": os.environ.get("NIX_REMOTE", "")},
    )
    if result.returncode != 0:
        raise UserError(error_line(result.stderr, f"{inventory}: nix-instantiate failed"))
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan
