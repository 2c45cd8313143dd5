"""`tools test`: list and run the flake's NixOS VM tests (`checks.<system>.<name>`), and,
when named, the ones that need nested virtualisation (`legacyPackages.<system>.nestedChecks`).

The tests boot QEMU virtual machines, so they need Nix with flakes and KVM; where either
is missing this says so in one line instead of failing deep inside a build.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from homestack.errors import UserError
from homestack.inventory import find_inventory
from homestack.process import Runner, default_runner, error_line

NIX = ("nix", "--extra-experimental-features", "nix-command flakes")
KVM = Path("/dev/kvm")
# For each check: is it a NixOS VM test? (those carry an interactive driver)
IS_VM_TEST = "checks: builtins.mapAttrs (name: check: check ? driverInteractive) checks"


@dataclass(frozen=True)
class Check:
    name: str
    vm: bool  # a NixOS VM test (needs KVM), as opposed to a plain build check
    nested: bool = False  # boots VMs inside the test VM: run only when named

    def attribute(self, system: str) -> str:
        """The flake attribute that builds (runs) this check."""
        if self.nested:
            return f".#legacyPackages.{system}.{NESTED}.{self.name}"
        return f".#checks.{system}.{self.name}"


NESTED = "nestedChecks"


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    seconds: float


def require_nix() -> None:
    if shutil.which("nix") is None:
        raise UserError(
            "nix: command not found; the NixOS VM tests need Nix with flakes "
            "(https://nixos.org/download) and KVM"
        )


def require_kvm() -> None:
    if not KVM.exists():
        raise UserError(
            f"{KVM} is missing: NixOS VM tests boot virtual machines and need KVM "
            "(turn on virtualisation in the firmware, or nested virtualisation "
            "in the VM this runs in)"
        )
    if not os.access(KVM, os.R_OK | os.W_OK):
        raise UserError(f"{KVM}: permission denied (add yourself to the kvm group)")


def current_system(runner: Runner, flake: Path) -> str:
    result = runner.run(
        [*NIX, "eval", "--impure", "--raw", "--expr", "builtins.currentSystem"],
        check=True,
        cwd=flake,
    )
    return result.stdout.strip()


def list_checks(runner: Runner, flake: Path, system: str) -> list[Check]:
    import json  # noqa: PLC0415 - only this command needs it

    result = runner.run(
        [*NIX, "eval", "--json", f".#checks.{system}", "--apply", IS_VM_TEST],
        check=False,
        cwd=flake,
    )
    if result.returncode != 0:
        raise UserError(
            f"{flake}: cannot evaluate checks.{system}: "
            f"{error_line(result.stderr, 'nix eval failed')}"
        )
    found = json.loads(result.stdout or "{}")
    return [Check(name, bool(vm)) for name, vm in sorted(found.items())] + list_nested(
        runner, flake, system
    )


def list_nested(runner: Runner, flake: Path, system: str) -> list[Check]:
    """The VM tests that need nested virtualisation; none when the flake has no such set."""
    import json  # noqa: PLC0415 - only this command needs it

    result = runner.run(
        [
            *NIX,
            "eval",
            "--json",
            f".#legacyPackages.{system}.{NESTED}",
            "--apply",
            "builtins.attrNames",
        ],
        check=False,
        cwd=flake,
    )
    if result.returncode != 0:
        return []
    return [Check(name, True, nested=True) for name in sorted(json.loads(result.stdout or "[]"))]


# The VM tests' names, read from tests/nixos without nixpkgs: the attribute set it returns
# does not depend on its arguments, so they are never forced.
_TEST_NAMES = (
    "builtins.attrNames (import ./tests/nixos/default.nix (builtins.mapAttrs (n: _: throw n) "
    "(builtins.functionArgs (import ./tests/nixos/default.nix))))"
)


def vm_test_names(runner: Runner, flake: Path) -> list[Check]:
    """The NixOS VM tests of tests/nixos, found with no input fetched (nix-instantiate)."""
    import json  # noqa: PLC0415 - only this command needs it

    result = runner.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", _TEST_NAMES],
        check=False, cwd=flake,
    )  # fmt: skip
    if result.returncode != 0:
        reason = error_line(result.stderr, "cannot list the tests")
        raise UserError(f"{flake}/tests/nixos: {reason}")
    names = json.loads(result.stdout)
    nested_file = flake / "tests" / "nixos" / "nested.nix"
    nested = set()
    if nested_file.is_file():
        listed = runner.run(
            ["nix-instantiate", "--eval", "--strict", "--json", str(nested_file)],
            check=False,
            cwd=flake,
        )
        nested = set(json.loads(listed.stdout)) if listed.returncode == 0 else set()
    return [Check(name, True, nested=name in nested) for name in sorted(names)]


def run_checks(
    runner: Runner,
    flake: Path,
    system: str,
    checks: Sequence[Check],
    *,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> list[Outcome]:
    """Build each check in turn (Nix's log streams through); ``say`` hears what starts and
    how each ended, with the time it took, so a long run shows where it is."""
    outcomes = []
    total = len(checks)
    began = clock()
    for number, check in enumerate(checks, start=1):
        name = check.name
        say(f"== [{number}/{total}] {name}: building and running it (Nix's log follows)")
        start = clock()
        result = runner.run(
            [*NIX, "build", check.attribute(system), "-L", "--no-link"],
            check=False,
            cwd=flake,
            capture=False,
        )
        outcome = Outcome(name, result.returncode == 0, clock() - start)
        outcomes.append(outcome)
        verdict = "passed" if outcome.passed else f"FAILED (nix exit {result.returncode})"
        left = f"; {total - number} to go" if number < total else ""
        say(
            f"== [{number}/{total}] {name}: {verdict} in {outcome.seconds:.1f} s "
            f"({clock() - began:.0f} s so far{left})"
        )
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    width = max(len(o.name) for o in outcomes)
    lines = [
        f"{o.name:<{width}}  {'passed' if o.passed else 'FAILED':<6}  {o.seconds:.1f} s"
        for o in outcomes
    ]
    passed = sum(o.passed for o in outcomes)
    lines.append(f"{passed} of {len(outcomes)} passed")
    return "\n".join(lines)


def select(checks: Sequence[Check], names: Sequence[str]) -> list[Check]:
    by_name = {c.name: c for c in checks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(
            f"no check named {', '.join(unknown)} (known: {', '.join(by_name) or 'none'})"
        )
    if names:
        return [by_name[n] for n in names]
    return [c for c in checks if c.vm and not c.nested]


@click.command(name="test", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("names", nargs=-1)
@click.option(
    "--interactive",
    is_flag=True,
    help="Start the interactive test driver of one test (start_all(), shell_interact()).",
)
@click.option("--list", "list_only", is_flag=True, help="List the checks; run nothing.")
@click.option(
    "--flake",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="The Homestack flake (default: the directory of the inventory, found as "
    "-i/--inventory is elsewhere).",
)
def test(names: tuple[str, ...], interactive: bool, list_only: bool, flake: Path | None) -> None:
    """Run the NixOS VM tests NAMEs (default: all but those needing nested virtualisation)
    and summarise the results."""
    runner = default_runner
    if flake is None:
        flake = find_inventory().resolve().parent
    require_nix()

    def say(line: str) -> None:
        click.echo(line, err=True)

    system = current_system(runner, flake)
    say(f"test: evaluating checks.{system} of {flake} (can take a minute)")
    try:
        checks = list_checks(runner, flake, system)
    except UserError as exc:
        if not list_only:
            raise
        # Without nixpkgs (offline) the flake's checks cannot be evaluated; the VM tests'
        # names can still be read from tests/nixos.
        click.echo(f"{exc}; listing the NixOS VM tests of tests/nixos instead", err=True)
        checks = vm_test_names(runner, flake)
    if list_only:
        for check in checks:
            kind = "NixOS VM test" if check.vm else "build check"
            if check.nested:
                kind += " (nested virtualisation; run only when named)"
            click.echo(f"{check.name:<24} {kind}")
        return
    chosen = select(checks, names)
    if not chosen:
        raise UserError(f"checks.{system} has no NixOS VM tests")
    if any(c.vm for c in chosen):
        require_kvm()
    if interactive:
        if len(chosen) != 1:
            raise UserError("--interactive starts one test's driver: name exactly one test")
        say(f"test: building and starting the interactive driver of {chosen[0].name}")
        result = runner.run(
            [*NIX, "run", f"{chosen[0].attribute(system)}.driverInteractive"],
            check=False,
            cwd=flake,
            capture=False,
        )
        sys.exit(result.returncode)
    say(f"test: running {len(chosen)} test(s): {', '.join(c.name for c in chosen)}")
    outcomes = run_checks(runner, flake, system, chosen, say=say)
    click.echo(summary(outcomes))
    sys.exit(0 if all(o.passed for o in outcomes) else 1)
