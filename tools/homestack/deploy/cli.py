"""`tools deploy`: the click layer over homestack.deploy.engine."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import click

from homestack.cliopts import inventory_option
from homestack.deploy import engine, record
from homestack.deploy import gitops as gitops_run
from homestack.deploy.order import waves
from homestack.deploy.remote import DEFAULT_OPTIONS, Local, Remote, Ssh
from homestack.deploy.status import status as machine_status
from homestack.deploy.steps import DeployOptions
from homestack.errors import UserError
from homestack.guards import guarded
from homestack.process import Runner, default_runner


def load(inventory: Path | None) -> tuple[Path, dict[str, Any]]:
    """The inventory's path and its plan (computed by lib/)."""
    try:
        from homestack.inventory import find_inventory  # noqa: PLC0415
        from homestack.plan import inspect  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise UserError(f"tools deploy: {exc.name} is missing from this build") from exc
    path = find_inventory(inventory)
    found = inspect(path, plan=True)
    found.raise_problems("; nothing was deployed")
    assert found.plan is not None
    return path, found.plan


def runner() -> Runner:
    return default_runner


def validator(plan: dict[str, Any], inventory: Path, progress: engine.Progress) -> engine.Validate:
    """What checks the secrets and certificates before anything is built (the library)."""
    root = inventory.resolve().parent
    return lambda: engine.validate(plan, root, progress)


class _Printer:
    """Progress lines, one per step, prefixed with the machine; safe across threads."""

    def __init__(self, *, err: bool, comment: bool) -> None:
        self.err = err
        self.comment = comment
        self.lock = threading.Lock()

    def progress(self, machine: str, message: str) -> None:
        line = f"# {machine}: {message}" if self.comment else f"[{machine}] {message}"
        with self.lock:
            click.echo(line, err=self.err)

    def command(self, line: str) -> None:
        with self.lock:
            click.echo(line)


@click.command(name="deploy", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("machines", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the commands a deploy runs, in order.")
@click.option("--build-only", is_flag=True, help="Validate and build; switch nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@click.option(
    "--yes",
    is_flag=True,
    help="Ask nothing: remove guests that left the inventory and apply Incus hosts' OpenTofu "
    "plans (a final snapshot of what goes is kept).",
)
@inventory_option
@click.option(
    "--health-timeout",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds each health check may take to pass.",
)
@click.option(
    "--watchdog",
    type=click.IntRange(min=1),
    default=900,
    show_default=True,
    help="Seconds after which a machine rolls itself back unless the deploy confirmed it healthy.",
)
@click.option(
    "-o",
    "--ssh-option",
    "ssh_options",
    multiple=True,
    help="Extra ssh option, as for ssh -o (repeatable).",
)
@click.option(
    "--approve",
    metavar="TOKEN",
    help="Deploy a change that breaks a guard: the token `tools plan approve` "
    "printed for this exact diff.",
)
@click.option(
    "--local",
    is_flag=True,
    help="Deploy the host this runs on (and its guests) without ssh, as GitOps does.",
)
@click.option(
    "--fetch-record",
    is_flag=True,
    help="Deploy nothing: fetch the newest deployed record from the hosts into "
    ".homestack/deployed.json (what `tools plan diff --against deployed` reads).",
)
def deploy(  # noqa: PLR0917 - click passes options by keyword
    machines: tuple[str, ...],
    dry_run: bool,
    build_only: bool,
    as_json: bool,
    yes: bool,
    inventory_path: Path | None,
    health_timeout: float,
    watchdog: int,
    ssh_options: tuple[str, ...],
    approve: str | None,
    local: bool,
    fetch_record: bool,
) -> None:
    """Build, switch, health-check and roll back MACHINEs (default: all), in the plan's order.

    \b
    tools deploy [MACHINE…] [--dry-run] [--build-only] [--json]
    tools deploy status [MACHINE…] [--json]   what each machine runs, and its GitOps state
    tools deploy --fetch-record               the hosts' newest deployed record, kept here

    Exit status: 0 when every machine runs its new configuration, 1 when any did not
    (each one's state is printed), 2 for a problem in the inventory or the command line,
    or an OpenTofu plan not applied because a final snapshot of what it deletes failed.
    """
    path, plan = load(inventory_path)
    ssh = Ssh(options=(*DEFAULT_OPTIONS, *[x for o in ssh_options for x in ("-o", o)]))
    if machines[:1] == ("status",) and "status" not in {*plan["hosts"], *plan["guests"]}:
        if dry_run:  # print what it would ask; connect to nothing
            click.echo("# tools deploy --dry-run status: the commands status runs.", err=as_json)
            printed = engine.DryRunRunner(_stderr if as_json else click.echo)
            asked = machine_status(plan, printed, ssh, machines[1:])
            click.echo(f"# dry run: {len(asked)} machine(s); nothing was run", err=as_json)
            return
        rows = machine_status(
            plan,
            runner(),
            ssh,
            machines[1:],
            progress=lambda name: click.echo(f"[{name}] asking over ssh", err=True),
        )
        if as_json:
            click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        else:
            for row in rows:
                click.echo(row.line())
        sys.exit(0 if all(r.reachable for r in rows) else 1)

    if fetch_record:
        sys.exit(_fetch_record(path, plan, ssh, machines, dry_run=dry_run, as_json=as_json))

    if local:
        if len(machines) != 1 or machines[0] not in plan["hosts"]:
            raise UserError(
                f"{path}: tools deploy --local: name the one host this is "
                f"(one of {', '.join(sorted(plan['hosts']))})"
            )
        machines = (machines[0], *plan["hosts"][machines[0]].get("guests", []))
        ssh = Local()
    options = DeployOptions(
        dry_run=dry_run,
        build_only=build_only,
        yes=yes,
        health_timeout=health_timeout,
        watchdog=watchdog,
    )
    printer = _Printer(err=as_json or not dry_run, comment=dry_run and not as_json)
    run_with: Runner = runner()
    if dry_run:
        # With --json, stdout holds the report alone.
        click.echo(
            "# tools deploy --dry-run: the commands a deploy runs, in this order.", err=as_json
        )
        click.echo(
            "# @name@ stands for a value known only once the command before it ran.", err=as_json
        )
        run_with = engine.DryRunRunner(printer.command if not as_json else _stderr)

    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            printer.progress("deploy", f"{question} -> no (not a terminal; use --yes)")
            return False
        return click.confirm(question, default=False, err=True)

    # The guards (homestack.guards) show the diff against what is deployed (the newest record
    # of this checkout's and the hosts') and refuse a change that breaks one unless
    # --approve names that exact diff. A dry run or a build connects to nothing.
    waves(plan, machines)  # an unknown machine is named before anything connects
    deployed = _deployed(path, plan, ssh, machines[:1] if local else (), options, printer)
    report = guarded(
        path,
        plan,
        approve=approve,
        dry_run=dry_run,
        build_only=build_only,
        selected=machines,
        echo=lambda line: printer.progress("guards", line),
        deployed=deployed,
        hosts_read=not (dry_run or build_only),
        run=lambda this: engine.deploy(
            plan,
            runner=run_with,
            flake=path.parent,
            selected=machines,
            options=options,
            ssh=ssh,
            validate=validator(plan, path, printer.progress),
            progress=printer.progress,
            confirm=confirm,
            deployed=this,
        ),
    )
    if as_json:
        click.echo(report.dumps())
        if report.held:  # the one line, for a person reading stderr
            click.echo(f"tools deploy: {report.held}", err=True)
    else:
        click.echo(report.summary(), err=not dry_run)
    # 2: a destructive OpenTofu apply was held back (its final snapshot or export failed)
    sys.exit(2 if report.held else 0 if report.ok else 1)


def _deployed(  # noqa: PLR0917 - the deploy's state, handed over once
    inventory: Path,
    plan: dict[str, Any],
    ssh: Ssh,
    hosts: tuple[str, ...],
    options: DeployOptions,
    printer: _Printer,
) -> record.DeployedRecord | None:
    """The newest record of this checkout's and the ``hosts``' (default: all), for the
    guards; a dry run or a build connects to nothing and says so (None: not read)."""
    if options.dry_run or options.build_only:
        what = "dry run" if options.dry_run else "build"
        printer.progress(
            "guards",
            f"compared with this checkout's record only (a {what} reads no host's; "
            "`tools deploy --fetch-record` fetches theirs)",
        )
        return None
    found = record.hosts_of(plan, hosts)
    printer.progress("guards", f"read the deployed record on {', '.join(h for h, _ in found)}")
    return record.read_newest(inventory, found, runner(), ssh, printer.progress)


def _fetch_record(
    inventory: Path,
    plan: dict[str, Any],
    ssh: Ssh,
    machines: tuple[str, ...],
    *,
    dry_run: bool,
    as_json: bool,
) -> int:
    """`tools deploy --fetch-record [HOST…]`: 0 when this checkout now has a record (the
    newest of its own and the hosts'), 1 when there is none anywhere."""
    unknown = sorted(set(machines) - set(plan["hosts"]))
    if unknown:
        raise UserError(
            f"{inventory}: tools deploy --fetch-record: {unknown[0]!r} is not a host "
            f"(hosts: {', '.join(sorted(plan['hosts']))})"
        )
    hosts = record.hosts_of(plan, machines)

    def say(machine: str, line: str) -> None:
        click.echo(f"[{machine}] {line}", err=True)

    if dry_run:
        printed = engine.DryRunRunner(click.echo)
        click.echo("# tools deploy --dry-run --fetch-record: the commands it runs.")
        for _, target in hosts:
            Remote(printed, ssh, target).run(record.READ, input="")
        click.echo(f"# dry run: {len(hosts)} host(s); nothing was run")
        return 0
    best = record.read_newest(inventory, hosts, runner(), ssh, say)
    if as_json:
        click.echo(json.dumps(best and best.summary(), indent=2))
        return 0 if best else 1
    if best is None:
        click.echo(
            "no deployed record in this checkout or on the hosts that answered; "
            "a complete `tools deploy` writes one"
        )
        return 1
    click.echo(f"deployed record: {best.where} ({best.describe()})")
    return 0


def _stderr(line: str) -> None:
    click.echo(line, err=True)


@click.command(name="gitops", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--machine", required=True, help="The host this runs on.")
@click.option("--repository", required=True, help="Git URL of the Homestack repository.")
@click.option("--branch", default="main", show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/homestack/gitops"),
    show_default=True,
)
@click.option(
    "--allowed-signers",
    type=click.Path(path_type=Path),
    required=True,
    help="git's gpg.ssh.allowedSignersFile: the admins' keys.",
)
@click.option("--health-timeout", type=float, default=300.0, show_default=True)
def gitops(  # noqa: PLR0917 - click passes options by keyword
    machine: str,
    repository: str,
    branch: str,
    state_dir: Path,
    allowed_signers: Path,
    health_timeout: float,
) -> None:
    """Fetch BRANCH, verify the head commit, and deploy it here with the deploy engine.

    \b
    Exit status: 0 switched or unchanged, 3 refused, failed, rolled back or held (an Incus
    host's OpenTofu plan that deletes something waits for a person; recorded in
    status.json), 75 a failure that may pass (network, lock): the next run tries again.
    """
    settings = gitops_run.Settings(
        machine=machine,
        repository=repository,
        branch=branch,
        state_dir=state_dir,
        allowed_signers=allowed_signers,
    )
    options = DeployOptions(health_timeout=health_timeout)

    def say(message: str) -> None:
        click.echo(f"[gitops] {message}", err=True)

    def plan_of(inventory: Path) -> dict[str, Any]:
        return load(inventory)[1]

    run = gitops_run.GitOps(
        settings,
        runner=runner(),
        load_plan=plan_of,
        progress=say,
        deploy=gitops_run.local_deploy(
            runner(), options=options, progress=lambda m, msg: say(f"{m}: {msg}")
        ),
    )
    sys.exit(run.run().exit_code)
