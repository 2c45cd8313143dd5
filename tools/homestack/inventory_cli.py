"""`tools inventory`: check, plan and show the inventory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from homestack.cliopts import inventory_option
from homestack.errors import UserError
from homestack.inventory import find_inventory
from homestack.plan import inspect, json_schema, load_plan


@click.group()
def inventory() -> None:
    """Check, plan and show the inventory."""


@inventory.command("check", short_help="Validate the inventory; one line per problem.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def check(file: Path | None, inventory_path: Path | None, as_json: bool) -> None:
    """Validate schema and cross-references; one line per problem, exit 2 if any.

    FILE is the same as --inventory FILE.
    """
    if file is not None and inventory_path is not None and file != inventory_path:
        raise UserError(f"give the inventory once: {file} or --inventory {inventory_path}")
    path = find_inventory(file or inventory_path)
    found = inspect(path, plan=False)
    if as_json:
        click.echo(json.dumps({"file": str(path), "problems": found.problems}, indent=2))
        if found.problems:
            raise SystemExit(2)
        return
    found.raise_problems()
    counts = found.counts or {}
    click.echo(
        f"{path}: ok ({counts.get('hosts', 0)} hosts, {counts.get('guests', 0)} guests, "
        f"{counts.get('users', 0)} users)"
    )


@inventory.command("plan")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON.")
def plan(inventory_path: Path | None, as_json: bool) -> None:
    """Evaluate the plan with Nix (lib/) and print it."""
    path = find_inventory(inventory_path)
    result = load_plan(path)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    _print_plan_summary(result)


def _print_plan_summary(p: dict[str, Any]) -> None:
    net = p["network"]
    click.echo(
        f"domain {p['domain']}  guest network {net['cidr']} via {net['gateway']} on {net['bridge']}"
    )
    click.echo("")
    click.echo(f"{'guest':<10} {'host':<10} {'address':<16} {'mac':<18} {'tap':<15} services")
    for name in sorted(p["guests"]):
        g = p["guests"][name]
        click.echo(
            f"{name:<10} {g['host']:<10} {g['address']:<16} {g['mac']:<18} {g['tap']:<15} "
            f"{', '.join(g['services'])}"
        )
    click.echo("")
    click.echo("routes:")
    for r in p["routes"]:
        click.echo(
            f"  https://{r['fqdn']}{'' if r['path'] == '/' else r['path']} -> {r['upstream']}"
        )
    click.echo("allowed flows:")
    for f in p["allow"]:
        click.echo(f"  {f['from']:>8} -> {f['to']:<6} {f['port']}/{f['proto']:<4} {f['reason']}")
    click.echo("deploy order: " + " | ".join(", ".join(w) for w in p["deployOrder"]))
    click.echo(f"artifacts: {', '.join(sorted(k for k, v in p['artifacts'].items() if v))}")


@inventory.command("schema")
@inventory_option
def schema(inventory_path: Path | None) -> None:
    """Print the inventory's JSON Schema, derived by lib/.

    lib/jsonschema.nix derives it from the declarations the validator checks."""
    path = find_inventory(inventory_path)
    click.echo(json.dumps(json_schema(path), indent=2, sort_keys=True))


@inventory.command("show")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the parsed inventory as JSON.")
def show(inventory_path: Path | None, as_json: bool) -> None:
    """Show the machines and people the inventory describes."""
    path = find_inventory(inventory_path)
    p = load_plan(path)
    shown = {
        "domain": p["domain"],
        "users": p["users"],
        "hosts": {
            n: {k: h[k] for k in ("role", "system", "target")} for n, h in p["hosts"].items()
        },
        "guests": {
            n: {k: g[k] for k in ("host", "address", "vcpu", "memory", "services")}
            for n, g in p["guests"].items()
        },
    }
    if as_json:
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    click.echo(f"{path}  domain {p['domain']}")
    click.echo("users:")
    for name, user in sorted(p["users"].items()):
        role = "admin" if user["admin"] else "user"
        click.echo(
            f"  {name:<12} {role:<6} {len(user['sshKeys'])} ssh key(s)"
            f"{', age key' if user['ageKey'] else ''}"
        )
    click.echo("hosts:")
    for name, host in sorted(shown["hosts"].items()):
        click.echo(f"  {name:<12} {host['role']:<11} {host['system']:<14} {host['target']}")
    click.echo("guests:")
    for name, guest in sorted(shown["guests"].items()):
        click.echo(
            f"  {name:<12} on {guest['host']:<10} {guest['address']:<16} "
            f"{guest['vcpu']} vcpu {guest['memory']:>5} MiB  {', '.join(guest['services'])}"
        )
