"""The `tools` command: a thin click layer over the homestack library.

Subcommand groups live next to the library code they drive and are imported only
when used, so `tools --help` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from homestack import auditlog
from homestack.errors import CheckFailed, UserError

# name -> (module, attribute, one-line help). Each module defines a click command or group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inventory": ("homestack.inventory_cli", "inventory", "Check, plan and show the inventory."),
    "explain": ("homestack.explain", "explain", "Describe the whole architecture."),
    "secrets": ("homestack.secrets.cli", "secrets", "Manage sops secrets and machine keys."),
    "ca": ("homestack.certs.cli", "ca", "The private certificate authority."),
    "certs": ("homestack.certs.cli", "certs", "Issue, check and renew certificates."),
    "lab": ("homestack.lab.cli", "lab", "Run the rendered stack on real daemons in namespaces."),
    "deploy": ("homestack.deploy.cli", "deploy", "Build, switch, health-check, roll back."),
    "gitops": ("homestack.deploy.cli", "gitops", "One GitOps run on this host (its timer)."),
    "test": ("homestack.vmtest", "test", "Run the NixOS VM tests."),
    "provision": ("homestack.deploy.provision", "provision", "Install a fresh machine."),
    "plan": ("homestack.plan_cli", "plan", "What a change means: diff two plans, approve one."),
    "audit": ("homestack.plan_cli", "audit", "Print the audit log of mutating commands."),
    "mcp": ("homestack.mcp_server", "mcp", "Serve the Model Context Protocol to agents (stdio)."),
    "tofu": ("homestack.tofu", "tofu", "OpenTofu configuration for Incus hypervisors."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _ = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _missing(cmd_name)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help comes from the table so `tools --help` imports nothing else.
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _missing(name: str) -> click.Command:
    @click.command(name=name, help="(not available in this build)")
    def missing() -> None:
        raise UserError(f"tools {name}: this command is not available in this build")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="homestack-tools", message="%(version)s")
def cli() -> None:
    """Manage a Homestack homelab from its inventory.toml."""


def _command_path(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``args`` into the subcommand path (["secrets", "set"]) and every other argument
    (group options included), by walking the command tree as click will."""
    command: click.Command = cli
    ctx = click.Context(cli, resilient_parsing=True)
    path: list[str] = []
    at: set[int] = set()
    i = 0
    while isinstance(command, click.Group) and i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            takes_value = "=" not in arg and any(
                arg in p.opts and not getattr(p, "is_flag", False)
                for p in command.params
                if isinstance(p, click.Option)
            )
            i += 2 if takes_value else 1
            continue
        sub = command.get_command(ctx, arg)
        if sub is None:
            break
        path.append(arg)
        at.add(i)
        command = sub
        i += 1
    return path, [a for n, a in enumerate(args) if n not in at]


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors become one line on stderr and exit code 2. A mutating
    command (homestack.auditlog.MUTATING) leaves one line in the audit log, whatever its end."""
    args = list(sys.argv[1:] if argv is None else argv)
    path, rest = _command_path(args)
    log = auditlog.log_for(_inventory_of(rest)) if auditlog.mutating(path, rest) else None
    if log is None:
        return _main(args)
    auditlog.begin()
    _last_error.clear()
    result = "ok"
    try:
        code = _main(args)
        result = "ok" if not code else f"exit {code}"
        return code
    except SystemExit as exc:
        result = "ok" if exc.code in (0, None) else _last_error.get("line", f"exit {exc.code}")
        raise
    except BaseException as exc:
        result = f"error: {type(exc).__name__}: {exc}"
        raise
    finally:
        auditlog.record(log, path, rest, result)


def _inventory_of(args: list[str]) -> Path:
    """The inventory a command names with -i/--inventory, else the one it would find."""
    from homestack.inventory import find_inventory  # noqa: PLC0415

    for i, arg in enumerate(args):
        if arg in ("-i", "--inventory") and i + 1 < len(args):
            return find_inventory(Path(args[i + 1]))
        if arg.startswith("--inventory="):
            return find_inventory(Path(arg.split("=", 1)[1]))
    return find_inventory(None)


_last_error: dict[str, str] = {}


def _main(argv: list[str]) -> Any:
    try:
        return cli.main(args=argv, standalone_mode=False)
    except CheckFailed as exc:
        for finding in exc.findings:
            click.echo(finding, err=True)
        click.echo(f"error: {exc}", err=True)
        _last_error["line"] = f"error: {exc}"
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        _last_error["line"] = f"error: {exc}"
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
