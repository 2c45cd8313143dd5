"""Ask lib/ about an inventory: its problems and its plan (lib/ is the one implementation).

One `nix-instantiate` evaluation of lib/eval.nix answers both: the list of problems, each
worded by lib as "KEY: message", and, when there are none, the plan with every artifact.
Python never judges an inventory itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homestack.errors import CheckFailed, UserError
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


@dataclass(frozen=True)
class Inspection:
    """What lib says of one inventory file."""

    path: Path
    problems: list[str]  # each "FILE: KEY: message", exactly as lib words it
    counts: dict[str, int] | None  # hosts, guests, users; None when there are problems
    plan: dict[str, Any] | None  # None when there are problems or it was not asked for

    def raise_problems(self, what: str = "") -> None:
        """Raise CheckFailed listing every problem, if there are any."""
        if self.problems:
            raise CheckFailed(f"{self.path}: {len(self.problems)} problem(s){what}", self.problems)


def _unreadable(path: Path) -> str | None:
    """Why the file cannot be an inventory before Nix looks at it, or None."""
    try:
        path.read_bytes().decode()
    except UnicodeDecodeError:
        return f"{path}: not valid TOML: not UTF-8 text"
    except FileNotFoundError:
        return f"{path}: no such inventory file"
    except IsADirectoryError:
        return f"{path}: is a directory, not an inventory file"
    except OSError as exc:
        return f"{path}: cannot read the inventory: {exc.strerror}"
    return None


def _nix_failure(path: Path, stderr: str) -> str:
    """One line for an evaluation that failed outright: lib's own messages never do, so this
    is the TOML parser (which names no file) or the file itself; tomllib gives the line."""
    try:
        tomllib.loads(path.read_bytes().decode())
    except UnicodeDecodeError:
        return f"{path}: not valid TOML: not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        return f"{path}: not valid TOML: {exc}"
    except OSError as exc:
        return f"{path}: cannot read the inventory: {exc.strerror}"
    return f"{path}: {error_line(stderr, 'nix-instantiate failed')}"


def inspect(inventory: Path, *, plan: bool, runner: Runner = default_runner) -> Inspection:
    """lib's verdict on ``inventory``, and its plan when ``plan`` and the file is valid."""
    if shutil.which("nix-instantiate") is None:
        raise UserError(
            "nix-instantiate: command not found; the plan is computed by Nix "
            "(Debian/Ubuntu: apt-get install nix-bin; or use the flake's dev shell)"
        )
    path = Path(inventory)
    reason = _unreadable(path)
    if reason is not None:
        raise UserError(reason)
    absolute = path.resolve()
    args = ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode"]
    args += [str(lib_dir(absolute) / "eval.nix"), "--argstr", "inventory", str(absolute)]
    args += [] if plan else ["--arg", "plan", "false"]
    result = runner.run(
        args,
        check=False,
        env={"NIX_PATH": "", "NIX_REMOTE": os.environ.get("NIX_REMOTE", "")},
    )
    if result.returncode != 0:
        raise UserError(_nix_failure(path, result.stderr))
    answer: dict[str, Any] = json.loads(result.stdout)
    problems = [f"{path.name}: {e}" for e in answer["errors"]]
    return Inspection(path, problems, answer["counts"], answer["plan"])


def check_inventory(inventory: Path, runner: Runner = default_runner) -> list[str]:
    """The problems of ``inventory``, each "FILE: KEY: message"; [] when it is valid."""
    return inspect(inventory, plan=False, runner=runner).problems


def load_plan(inventory: Path, runner: Runner = default_runner) -> dict[str, Any]:
    """The plan of ``inventory`` as evaluated by lib/ (needs `nix-instantiate`, no nixpkgs);
    raises CheckFailed listing every problem of an invalid inventory."""
    found = inspect(inventory, plan=True, runner=runner)
    found.raise_problems()
    assert found.plan is not None
    return found.plan


def json_schema(inventory: Path | None = None, runner: Runner = default_runner) -> dict[str, Any]:
    """The inventory's JSON Schema (draft 2020-12), from the lib/ that judges ``inventory``."""
    where = lib_dir(Path(inventory).resolve() if inventory is not None else None)
    result = runner.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode",
         str(where / "jsonschema.nix")],
        check=False,
        env={"NIX_PATH": "", "NIX_REMOTE": os.environ.get("NIX_REMOTE", "")},
    )  # fmt: skip
    if result.returncode != 0:
        raise UserError(f"{where / 'jsonschema.nix'}: {error_line(result.stderr, 'failed')}")
    document: dict[str, Any] = json.loads(result.stdout)
    return document
