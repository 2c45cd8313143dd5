"""`tools lab`: the rendered stack on real daemons in network namespaces (thin click layer)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import click

from homestack.errors import UserError
from homestack.inventory import find_inventory
from homestack.lab import browser, checks, daemons, lifecycle
from homestack.lab.state import LabPaths, load_state
from homestack.lab.topology import Topology
from homestack.plan import load_plan

NEEDED = ("ip", "nft", "setpriv", "unshare", "caddy", "dnsmasq", "psql")
inventory_option = click.option(
    "--inventory",
    "-i",
    "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Inventory file (default: ./inventory.toml or $HOMESTACK_INVENTORY).",
)


def _preflight() -> None:
    if os.geteuid() != 0:
        raise UserError("tools lab: needs root (it creates network namespaces)")
    missing = [p for p in NEEDED if shutil.which(p) is None]
    if not (lifecycle.PG_BIN / "postgres").exists():
        missing.append(str(lifecycle.PG_BIN / "postgres"))
    if missing:
        raise UserError(
            f"tools lab: missing {', '.join(missing)} (Debian: apt-get install iproute2 "
            "nftables util-linux caddy dnsmasq-base postgresql-15)"
        )


def lab_engine(plan: dict[str, Any], path: Path, wanted: str | None) -> str:
    """The engine the lab runs the guests with: the inventory's, which --engine must match."""
    engines = {h["engine"] for h in plan["hosts"].values() if h.get("role") == "hypervisor"}
    engine = engines.pop() if len(engines) == 1 else "microvm"
    if wanted == "incus" and engine != "incus":
        raise UserError(
            f'{path.name}: hosts.*.engine: no hypervisor has engine = "incus"; '
            "set it on the hypervisor to run the lab on Incus"
        )
    if engine == "incus" and shutil.which("incus") is None:
        raise UserError(
            "tools lab: the inventory's engine is incus and incus is not installed "
            "(scripts/bootstrap installs incus-base from bookworm-backports)"
        )
    return engine


def _plan_for(paths: LabPaths, inventory_path: Path | None) -> dict[str, Any]:
    """The plan the running lab was built from (saved by `up`), or a fresh one."""
    saved = paths.root / "plan.json"
    state = load_state(paths)
    if inventory_path is None and state is not None and saved.exists():
        plan: dict[str, Any] = json.loads(saved.read_text())
        return plan
    path = find_inventory(inventory_path).resolve()
    if state is not None and state.inventory and state.inventory != str(path):
        raise UserError(
            f"tools lab: the running lab was built from {state.inventory}, "
            f"not {path}; run `tools lab up -i {path}` first"
        )
    return load_plan(path)


@click.group()
def lab() -> None:
    """Run the rendered stack on real daemons in network namespaces.

    Needs root. Nothing is linked to the machine's own network: the lab's namespaces
    reach only each other.
    """


@lab.command()
@inventory_option
@click.option(
    "--cold",
    is_flag=True,
    help="Initialise PostgreSQL from scratch instead of copying the cached cluster.",
)
@click.option(
    "--replace", is_flag=True, help="Take down a running lab built from another inventory first."
)
@click.option(
    "--engine",
    type=click.Choice(["microvm", "incus"]),
    default=None,
    help="Run the guests in namespaces (microvm) or as real Incus containers "
    "(incus); default: the hypervisor's engine in the inventory.",
)
def up(inventory_path: Path | None, cold: bool, replace: bool, engine: str | None) -> None:
    """Build the lab from the inventory's plan and start every daemon (idempotent)."""
    _preflight()
    started = time.monotonic()
    path = find_inventory(inventory_path).resolve()
    plan = load_plan(path)
    paths = LabPaths.from_env()
    engine = lab_engine(plan, path, engine)
    state = lifecycle.up(
        plan,
        paths,
        daemons.runner,
        inventory=str(path),
        cold=cold,
        replace_other=replace,
        log=click.echo,
        engine=engine,
    )
    (paths.root / "plan.json").write_text(json.dumps(plan))
    topo = Topology.from_plan(plan, paths.prefix)
    click.echo(f"lab up from {path} in {time.monotonic() - started:.2f} s")
    _print_status(lifecycle.status(paths), topo)
    root = state.info.get("root")
    click.echo(
        f"\ntry: ip netns exec {topo.client.netns} curl --cacert {root} "
        f"https://{(plan.get('routes') or [{'fqdn': topo.domain}])[0]['fqdn']}/"
    )


@lab.command()
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--strict",
    is_flag=True,
    help="Also fail flows no guest takes part in (LAN or tunnel to the "
    "hypervisor and beyond) when only the guests' firewalls filter.",
)
@click.option(
    "--browser",
    "use_browser",
    is_flag=True,
    help="Also load every route in headless Chromium from the LAN, trusting only "
    "the lab's root, and once without it (must fail).",
)
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="With --browser: write a PNG of the first route and its security details.",
)
def test(
    inventory_path: Path | None,
    as_json: bool,
    strict: bool,
    use_browser: bool,
    screenshot: Path | None,
) -> None:
    """Check DNS, HTTPS, the allow matrix (three filter layers) and database logins.

    Exits 2 when any check fails.
    """
    _preflight()
    paths = LabPaths.from_env()
    plan = _plan_for(paths, inventory_path)
    report = checks.run(plan, paths, daemons.runner, strict=strict)
    if use_browser or screenshot is not None:
        report.checks += browser.lab_checks(plan, paths, daemons.runner, screenshot=screenshot)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(checks.render(report, Topology.from_plan(plan, paths.prefix), plan))
    if report.failures:
        raise click.exceptions.Exit(2)


@lab.command()
@click.option(
    "--purge-cache",
    is_flag=True,
    help="Also remove the cached PostgreSQL cluster used for fast bring-up.",
)
def down(purge_cache: bool) -> None:
    """Stop every lab process and delete every lab namespace and file (idempotent)."""
    _preflight()
    started = time.monotonic()
    paths = LabPaths.from_env()
    lifecycle.down(paths, daemons.runner, log=click.echo)
    if purge_cache:
        shutil.rmtree(paths.cache, ignore_errors=True)
    click.echo(f"lab down in {time.monotonic() - started:.2f} s")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Show the lab's namespaces and processes; stand-ins are labelled as such."""
    paths = LabPaths.from_env()
    rows = lifecycle.status(paths)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("lab: not running")
        return
    saved = paths.root / "plan.json"
    topo = (
        Topology.from_plan(json.loads(saved.read_text()), paths.prefix) if saved.exists() else None
    )
    _print_status(rows, topo)
    state = load_state(paths)
    if state is not None and not state.complete:
        click.echo("\nlab incomplete (an `up` was interrupted): run `tools lab down`")
    elif state is not None and state.mode != "both":
        click.echo(f"\nfilters: {state.mode} only (a `test` was interrupted; `up` restores)")


def _print_status(rows: list[dict[str, Any]], topo: Topology | None) -> None:
    procs = sorted(
        (r for r in rows if r["kind"] == "process"), key=lambda r: (r["netns"], r["role"])
    )
    spaces = [r for r in rows if r["kind"] == "netns"]
    addresses = {m.netns: (m.name, m.address) for m in topo.machines} if topo else {}
    width = max([10, *(len(name) + 1 for name, _ in addresses.values())])
    click.echo(f"{'namespace':<18} {'machine':<{width}} {'address':<16} state")
    for r in spaces:
        name, addr = addresses.get(r["name"], ("?", "?"))
        click.echo(
            f"{r['name']:<18} {name:<{width}} {addr:<16} {'present' if r['running'] else 'MISSING'}"
        )
    click.echo(f"\n{'process':<20} {'what':<34} {'pid':>7}  {'namespace':<18} state")
    for r in procs:
        what = (
            "STAND-IN, not the real service"
            if r.get("standin")
            else "listener for the other plan ports"
            if r["role"] == "standin"
            else "real Pebble, the lab's ACME CA"
            if r["role"] == "pebble"
            else "lego's real provider (--dns exec)"
            if r["role"] == "lego-dns"
            else "real daemon, rendered config"
        )
        name = r["name"] if r["role"] != "standin" or r.get("standin") else "port listener"
        click.echo(
            f"{name:<20} {what:<34} {r['pid']:>7}  {r['netns']:<18} "
            f"{'running' if r['running'] else 'STOPPED'}"
        )
