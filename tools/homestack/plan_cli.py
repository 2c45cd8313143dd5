"""`tools plan diff|approve|guards` and `tools audit`: the click layer over
homestack.plandiff, homestack.guards and homestack.auditlog."""

from __future__ import annotations

import json
from pathlib import Path

import click

from homestack import auditlog, guards
from homestack.cliopts import inventory_option
from homestack.errors import UserError
from homestack.inventory import find_inventory
from homestack.plan import load_plan
from homestack.plandiff import PlanDiff, compare, resolve_against

AGAINST_HELP = (
    "The old side: a git revision of the inventory's repository (its lib/ too), a path to "
    "another inventory file, or `deployed` (what the last complete deploy recorded)."
)


@click.group()
def plan() -> None:
    """What a change to the inventory means, and approving one that breaks a guard."""


def _diff(inventory_path: Path | None, against: str) -> tuple[PlanDiff, list[guards.Violation]]:
    path = find_inventory(inventory_path)
    old, label = resolve_against(path, against)
    new = load_plan(path)
    diff = compare(old, new, old_label=label, new_label=str(path))
    return diff, guards.check(diff, guards.load_policy(path), old, new)


@plan.command("diff", short_help="What the inventory changes: flows, exposure, secrets, state.")
@click.option(
    "--against", default="HEAD", show_default=True, metavar="REV|FILE|deployed", help=AGAINST_HELP
)
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
def diff(against: str, inventory_path: Path | None, as_json: bool) -> None:
    """Compare the inventory's plan with an older one and say what the change means.

    Each change has a risk class: info, exposure (newly reachable from the LAN or the
    internet), access (a machine or person gains network access or a secret), destructive
    (state is lost). Guards the change breaks are listed after it; a deploy refuses it
    unless a person approves this exact diff (`tools plan approve`).
    """
    result, violations = _diff(inventory_path, against)
    if as_json:
        click.echo(
            json.dumps({**result.to_json(), "guards": [v.to_json() for v in violations]}, indent=2)
        )
        return
    for line in result.lines() + guards.violation_lines(violations):
        click.echo(line)


@plan.command("approve", short_help="Print the token that approves this exact diff.")
@click.option(
    "--against",
    default="deployed",
    show_default=True,
    metavar="REV|FILE|deployed",
    help=AGAINST_HELP,
)
@click.option(
    "--diff",
    "expected",
    metavar="HASH",
    help="The diff hash you reviewed; refuse if the diff is now a different one.",
)
@inventory_option
def approve(against: str, expected: str | None, inventory_path: Path | None) -> None:
    """Show the diff and the guards it breaks, and print the token that lets `tools deploy
    --approve TOKEN` deploy exactly this diff. The token is made with this user's approval
    key (~/.config/homestack/approval.key), which agents are never given."""
    result, violations = _diff(inventory_path, against)
    if expected and not result.digest.startswith(expected.lower()):
        raise UserError(f"the diff is now {result.digest}, not {expected}: review it again")
    for line in result.lines() + guards.violation_lines(violations):
        click.echo(line)
    auditlog.annotate(diff=result.digest)
    click.echo(f"approval token: {guards.approval_token(result.digest, create=True)}")


@plan.command("guards", short_help="List the guards a deploy checks.")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the guards as JSON.")
def list_guards(inventory_path: Path | None, as_json: bool) -> None:
    """List the built-in guards and those policy.toml adds."""
    found = guards.load_policy(find_inventory(inventory_path))
    if as_json:
        click.echo(json.dumps([g.to_json() for g in found], indent=2))
        return
    for guard in found:
        scope = "".join(
            f" {k} {', '.join(v)}"
            for k, v in (("to", guard.to), ("from", guard.from_), ("except to", guard.except_to))
            if v
        )
        click.echo(f"{guard.name} ({guard.origin}): {', '.join(guard.kinds)}{scope}")
        if guard.why:
            click.echo(f"  {guard.why}")


@click.command("audit")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON lines.")
def audit(inventory_path: Path | None, as_json: bool) -> None:
    """Print the audit log: one entry per mutating command, oldest first."""
    path = auditlog.log_path(find_inventory(inventory_path))
    entries = list(auditlog.read(path))
    if not entries and not as_json:
        click.echo(f"{path}: no entries")
    for entry in entries:
        click.echo(json.dumps(entry, sort_keys=True) if as_json else auditlog.line(entry))
