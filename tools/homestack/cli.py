"""The `tools` command: a thin click layer over the homestack library.

Subcommand groups live next to the library code they drive and are imported only
when used, so `tools --help` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

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
    "test": ("homestack.vmtest", "test", "Run the NixOS VM tests."),
    "provision": ("homestack.deploy.provision", "provision", "Install a fresh machine."),
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


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        return cli.main(args=argv, standalone_mode=False)
    except CheckFailed as exc:
        for finding in exc.findings:
            click.echo(finding, err=True)
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
