"""Evaluate the Nix plan of an inventory (lib/ is the one implementation of the plan)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.process import Runner, default_runner

# lib/ ships inside the repository; tools may also run from an installed copy that
# carries lib/ next to the package (the flake's package does), or HOMESTACK_LIB.
_HERE = Path(__file__).resolve().parent


def lib_dir() -> Path:
    """Where lib/ is: $HOMESTACK_LIB, the repository checkout, or the installed share dir."""
    env = os.environ.get("HOMESTACK_LIB")
    candidates = [Path(env)] if env else []
    candidates += [_HERE.parent.parent / "lib", _HERE / "lib"]
    for candidate in candidates:
        if (candidate / "eval.nix").is_file():
            return candidate
    raise UserError("lib/eval.nix not found: set HOMESTACK_LIB to the repository's lib/ directory")


def _nix_error(stderr: str, inventory: Path) -> str:
    """Reduce Nix's error output to the one message our lib threw."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("error:"):
            message = line.removeprefix("error:").strip()
            if message:
                return message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"{inventory}: nix failed"


def load_plan(inventory: Path, runner: Runner = default_runner) -> dict[str, Any]:
    """The plan of ``inventory`` as evaluated by lib/ (needs `nix-instantiate`, no nixpkgs)."""
    if shutil.which("nix-instantiate") is None:
        raise UserError(
            "nix-instantiate: command not found; the plan is computed by Nix "
            "(Debian/Ubuntu: apt-get install nix-bin; or use the flake's dev shell)"
        )
    inventory = Path(inventory).resolve()
    if not inventory.is_file():
        raise UserError(f"{inventory}: no such inventory file")
    result = runner.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            "--readonly-mode",
            str(lib_dir() / "eval.nix"),
            "--argstr",
            "inventory",
            str(inventory),
        ],
        check=False,
        env={"NIX_PATH": "", "NIX_REMOTE": os.environ.get("NIX_REMOTE", "")},
    )
    if result.returncode != 0:
        raise UserError(_nix_error(result.stderr, inventory))
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan
