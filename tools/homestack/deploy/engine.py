"""One deploy run: validate, build every closure once, switch the plan's waves in order
(machines of one wave in parallel), and remove guests that left the inventory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homestack.deploy import health, incus, record, steps
from homestack.deploy.order import STATE_DIR, Kind, Machine, waves
from homestack.deploy.remote import ConnectionLost, Remote, Ssh
from homestack.deploy.report import DeployReport, MachineReport, Outcome, Removal
from homestack.deploy.steps import Context, DeployOptions, MachineRun, Snapshots
from homestack.plandiff import DeployedRecord
from homestack.process import Result, Runner, error_line

Progress = Callable[[str, str], None]
Confirm = Callable[[str], bool]


def _quiet(machine: str, message: str) -> None:
    del machine, message


def _refuse(question: str) -> bool:
    del question
    return False


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Stale:
    """A guest directory on a hypervisor that the plan no longer puts there."""

    guest: str
    host: str
    target: str
    dataset: str | None


Validate = Callable[[], Sequence[str]]


def validate(
    plan: Mapping[str, Any], root: Path, progress: Progress = lambda _machine, _message: None
) -> list[str]:
    """What `tools secrets check` and `tools certs check` find, through the library (never
    a `tools` found on PATH, which may be another program or missing): one line each."""
    from homestack.certs.check import check as check_certs  # noqa: PLC0415
    from homestack.certs.settings import CertSettings  # noqa: PLC0415
    from homestack.secrets import audit  # noqa: PLC0415
    from homestack.secrets.model import SecretsPlan  # noqa: PLC0415
    from homestack.secrets.sops import Sops  # noqa: PLC0415

    secrets = SecretsPlan.from_plan(plan)
    problems = [str(f) for f in audit.audit(root, secrets)]
    macs = audit.verify_macs(root, secrets, Sops())
    problems += [str(f) for f in macs.findings]
    progress("deploy", f"secrets: {audit.mac_summary(macs)}")
    problems += [str(f) for f in check_certs(CertSettings.from_plan(plan, root))]
    return problems


def build_command(machine: Machine) -> list[str]:
    return steps.build_command(machine.installable)


def _not_started(machines: Sequence[Machine], why: str) -> tuple[MachineReport, ...]:
    return tuple(MachineReport(m.name, m.kind.value, Outcome.NOT_STARTED, why) for m in machines)


def deploy(  # noqa: PLR0912 - the run's phases, in order
    plan: Mapping[str, Any],
    *,
    runner: Runner,
    flake: Path,
    selected: Sequence[str] = (),
    options: DeployOptions | None = None,
    validate: Validate | None = None,
    ssh: Ssh | None = None,
    progress: Progress = _quiet,
    confirm: Confirm = _refuse,
    clock: health.Clock | None = None,
    stamp: str | None = None,
    unattended: incus.Unattended | None = None,
    deployed: Callable[[], DeployedRecord] | None = None,
) -> DeployReport:
    """Deploy ``selected`` machines (all when empty) of ``plan``; never raises for a
    machine's failure: every machine's end state is in the report. ``unattended``: no one
    is asked whether to apply an Incus host's OpenTofu plan (GitOps), see there.
    ``deployed``: makes the record of this deploy, written on every deployed host once
    all of them succeeded (homestack.deploy.record)."""
    options = options or DeployOptions()
    ssh = ssh or Ssh()
    clock = clock or health.Clock()
    stamp = stamp or timestamp()
    order = waves(plan, selected)
    machines = [m for wave in order for m in wave]
    if not (options.dry_run or options.build_only):
        incus.require_passphrase(plan, machines)

    if validate is not None:
        progress("deploy", "validate: secrets and certificates")
        problems = list(validate())
        if problems:
            for line in problems:
                progress("deploy", line)
            error = (
                f"validation found {len(problems)} problem(s) in the secrets and "
                f"certificates: {problems[0]}"
            )
            return DeployReport(
                _not_started(machines, "not started: validation failed"),
                dry_run=options.dry_run,
                error=error,
            )

    built: dict[str, str] = {}
    for machine in machines:
        progress(machine.name, f"build {machine.installable}")
        result = runner.run(build_command(machine), check=False, cwd=flake)
        out = steps.built_path(result.stdout)
        if result.returncode != 0 or out is None:
            detail = error_line(result.stderr, f"exit code {result.returncode}")
            if result.returncode == 0:
                detail = "nix build printed no store path"
            return DeployReport(
                _not_started(machines, "not started: a build failed, nothing was changed"),
                dry_run=options.dry_run,
                error=f"build of {machine.name} failed: {detail}",
            )
        built[machine.name] = out
    # An Incus host's guests are created from images: built here too, before anything is
    # touched, so that a failed one stops the deploy with nothing changed.
    images: dict[str, str] = {}
    for host in [m for m in machines if m.kind is Kind.HOST and incus.runs_incus(plan, m.name)]:
        unbuilt = incus.build_images(runner, plan, host.name, flake=flake, progress=progress)
        if unbuilt is not None:
            return DeployReport(
                _not_started(machines, "not started: a build failed, nothing was changed"),
                dry_run=options.dry_run,
                error=f"build of {unbuilt}",
            )
        images.update(dict.fromkeys(plan["artifacts"]["incus"][host.name]["instances"], host.name))
    if options.build_only:
        return DeployReport(
            tuple(
                MachineReport(
                    m.name,
                    m.kind.value,
                    Outcome.BUILT,
                    f"built {built[m.name]}"
                    + (f"; Incus image in {incus.image_link(m.name)}" if m.name in images else ""),
                    new=built[m.name],
                )
                for m in machines
            ),
            dry_run=options.dry_run,
        )

    if any(m.kind is Kind.HOST and m.guests for m in machines):
        progress("deploy", "look for guests that are no longer in the inventory")
    unreachable: dict[str, ConnectionLost] = {}
    stale = find_stale(plan, machines, runner, ssh, progress, unreachable=unreachable)
    to_remove = [s for s in stale if options.yes or confirm(_question(s))]
    kept = [
        Removal(s.guest, s.host, False, "left in place (not confirmed; use --yes)")
        for s in stale
        if s not in to_remove
    ]

    ctx = Context(
        runner=runner,
        ssh=ssh,
        options=options,
        clock=clock,
        stamp=stamp,
        snapshots=Snapshots(stamp),
        progress=progress,
        guest_waves={
            h: sum(any(m.hypervisor == h for m in wave) for wave in order)
            for h in {m.name for m in machines if m.kind is Kind.HOST}
        },
    )
    try:
        report = _waves(ctx, plan, order, built, unreachable, to_remove, kept, flake=flake,
                        confirm=confirm, unattended=unattended)  # fmt: skip
    finally:  # the hypervisors' locks kept while their guests ran
        for remote in ctx.held.values():
            steps.release(remote)
    if deployed is not None and report.ok:
        hosts = [(m.name, m.target) for m in machines if m.kind is Kind.HOST]
        report = dataclasses.replace(
            report, records=record.write_on_hosts(deployed(), hosts, runner, ssh, progress, stamp)
        )
    return report


def _waves(  # noqa: PLR0917 - the state of one deploy, handed over once
    ctx: Context,
    plan: Mapping[str, Any],
    order: Sequence[Sequence[Machine]],
    built: Mapping[str, str],
    unreachable: Mapping[str, ConnectionLost],
    to_remove: Sequence[Stale],
    kept: Sequence[Removal],
    *,
    flake: Path,
    confirm: Confirm,
    unattended: incus.Unattended | None,
) -> DeployReport:
    """Each wave in turn, its machines in parallel; a failure stops the waves after it."""
    options, progress = ctx.options, ctx.progress
    reports: list[MachineReport] = []
    removals: list[Removal] = list(kept)
    failed: list[str] = []
    halted: dict[str, str] = {}  # Incus hypervisor -> why its guests are not switched
    held: str | None = None  # a destructive OpenTofu apply that was not made
    for number, wave in enumerate(order, start=1):
        if failed:
            reports += _not_started(wave, f"not started: {', '.join(failed)} failed earlier")
            continue
        for machine in [m for m in wave if m.hypervisor in halted]:
            reports += _not_started([machine], halted[str(machine.hypervisor)])
        wave = [m for m in wave if m.hypervisor not in halted]  # noqa: PLW2901
        if not wave:
            continue
        together = " (in parallel)" if len(wave) > 1 else ""
        progress(
            "deploy", f"wave {number} of {len(order)}: {', '.join(m.name for m in wave)}{together}"
        )
        workers = 1 if options.dry_run else len(wave)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(
                pool.map(
                    lambda m: (
                        _unreachable(m, built[m.name], unreachable[m.target])
                        if m.target in unreachable
                        else _run(ctx, m, built[m.name])
                    ),
                    wave,
                )
            )
        reports += done
        failed += [r.name for r in done if not r.outcome.ok]
        for machine, outcome in zip(wave, done, strict=True):
            if machine.kind is Kind.HOST and outcome.outcome.ok:
                removals += [remove_guest(ctx, s) for s in to_remove if s.host == machine.name]
            if (
                machine.kind is Kind.HOST
                and outcome.outcome.ok
                and incus.runs_incus(plan, machine.name)
            ):
                applied = incus.apply(
                    ctx, plan, machine, flake=flake, confirm=confirm, unattended=unattended
                )
                removals += applied.removals
                held = held or applied.held
                if applied.halt is not None:
                    halted[machine.name] = applied.halt
    return DeployReport(tuple(reports), tuple(removals), dry_run=options.dry_run, held=held)


def _run(ctx: Context, machine: Machine, new: str) -> MachineReport:
    if machine.kind is Kind.GUEST and machine.engine == "incus":
        return incus.GuestRun(ctx, machine, new).run()
    return MachineRun(ctx, machine, new).run()


def _question(stale: Stale) -> str:
    keep = f"a final snapshot of {stale.dataset} is kept" if stale.dataset else "it has no dataset"
    return (
        f"guest {stale.guest} is on {stale.host} but no longer in the inventory: "
        f"remove its unit and state ({keep})?"
    )


def _unreachable(machine: Machine, new: str, lost: ConnectionLost) -> MachineReport:
    """A machine whose ssh target could not be reached already in this run: reported
    unknown at once, rather than waiting for the same timeout again."""
    return MachineReport(
        machine.name,
        machine.kind.value,
        Outcome.UNKNOWN,
        "unknown: not switched, and what it runs could not be seen (nothing was changed on it)",
        new=new,
        error=str(lost),
    )


def find_stale(
    plan: Mapping[str, Any],
    machines: Sequence[Machine],
    runner: Runner,
    ssh: Ssh,
    progress: Progress = _quiet,
    *,
    unreachable: dict[str, ConnectionLost] | None = None,
) -> list[Stale]:
    """Guests with a directory under /var/lib/microvms that the plan does not place there.

    A hypervisor that cannot be reached is skipped and, if ``unreachable`` is given,
    recorded there by its ssh target (its own deploy then reports it unknown at once)."""
    found = []
    for machine in machines:
        if machine.kind is not Kind.HOST or plan["hosts"][machine.name].get("role") != "hypervisor":
            continue
        if incus.runs_incus(plan, machine.name):
            continue  # OpenTofu's plan removes instances that left (homestack.deploy.incus)
        try:
            result = Remote(runner, ssh, machine.target).run(["ls", "-1", STATE_DIR])
        except ConnectionLost as exc:
            progress(machine.name, f"cannot look for guests that left the inventory: {exc}")
            if unreachable is not None and exc.before_command:
                unreachable[machine.target] = exc
            continue
        if result.returncode != 0:
            continue  # no state directory yet: a fresh hypervisor
        zfs = plan["hosts"][machine.name].get("zfs") or {}
        for name in result.stdout.split():
            if name not in machine.guests:
                dataset = f"{zfs['pool']}/microvms/{name}" if zfs.get("pool") else None
                found.append(Stale(name, machine.name, machine.target, dataset))
    return found


def removal_commands(stale: Stale, stamp: str) -> list[list[str]]:
    """Stop the guest, keep its data only as a final snapshot outside the live tree, and
    delete its directory. The tap goes with the unit (microvm-tap-interfaces@ is PartOf it)."""
    commands = [["systemctl", "stop", f"microvm@{stale.guest}.service"]]
    if stale.dataset:
        pool = stale.dataset.split("/", 1)[0]
        archive = f"{pool}/homestack-removed"
        moved = f"{archive}/{stale.guest}-{stamp}"
        commands += [
            ["zfs", "snapshot", "-r", f"{stale.dataset}@homestack-final-{stamp}"],
            [
                "sh",
                "-c",
                f"zfs list -H -o name {archive} >/dev/null 2>&1 || "
                f"zfs create -o canmount=off -o mountpoint=none {archive}",
            ],
            ["zfs", "rename", "-u", stale.dataset, moved],
            ["zfs", "set", "mountpoint=none", moved],
        ]
    commands.append(["rm", "-rf", "--one-file-system", f"{STATE_DIR}/{stale.guest}"])
    return commands


def remove_guest(ctx: Context, stale: Stale) -> Removal:
    ctx.progress(stale.host, f"remove guest {stale.guest} (no longer in the inventory)")
    remote = Remote(ctx.runner, ctx.ssh, stale.target)
    for command in removal_commands(stale, ctx.stamp):
        try:
            result = remote.run(command)
        except ConnectionLost as exc:
            return Removal(stale.guest, stale.host, False, f"stopped half-way: {exc}")
        if result.returncode != 0 and command[:2] != ["systemctl", "stop"]:
            at = shlex.join(command)
            return Removal(
                stale.guest,
                stale.host,
                False,
                f"stopped half-way at `{at}` (exit {result.returncode})",
            )
    where = "no data"
    if stale.dataset:
        pool = stale.dataset.split("/", 1)[0]
        where = (
            f"final snapshot {pool}/homestack-removed/{stale.guest}-{ctx.stamp}"
            f"@homestack-final-{ctx.stamp}"
        )
    return Removal(stale.guest, stale.host, True, f"unit stopped, state removed; {where}")


def display_quote(word: str) -> str:
    """Like shlex.quote, but a word holding single quotes (a remote `sh -c '…'`) is put in
    double quotes when that needs no escapes: the same word, easier to read."""
    quoted = shlex.quote(word)
    if "'" in word and quoted != word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


class DryRunRunner(Runner):
    """Prints each command instead of running it and answers as if all went well.

    Values only known at run time are printed as @machine-what@ (a store path, a
    generation number)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.activated: dict[str, str] = {}  # ssh target -> system its last switch activated

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Any = None,
        timeout: float | None = None,
        capture: bool = True,
    ) -> Result:
        del check, input, cwd, timeout, capture
        prefix = "".join(f"{k}={display_quote(v)} " for k, v in (env or {}).items())
        self.emit(prefix + " ".join(display_quote(a) for a in args))
        return Result(tuple(args), 0, self.answer(list(args)), "")

    def answer(self, args: list[str]) -> str:  # noqa: PLR0911 - one answer per question
        if "build" in args and "--json" in args:
            attr = next(a for a in args if a.startswith(".#nixosConfigurations."))
            name = attr.split(".")[2]
            what = "toplevel" if attr.endswith(".toplevel") else "runner"
            return json.dumps([{"outputs": {"out": f"@{name}-{what}@"}}]) + "\n"
        if "--" not in args:
            return ""
        remote = shlex.split(args[-1])
        where = args[args.index("--") - 1]
        if remote[:2] == ["readlink", "-f"]:  # what runs: the previous system until a switch
            return self.activated.get(where, "@running-system@") + "\n"
        if remote[:1] == ["systemd-run"] and remote[-1] == "test" and "--wait" in remote:
            self.activated[where] = remote[-2].removesuffix("/bin/switch-to-configuration")
        # the hypervisor's switch links `current` and restarts the guest (microvm.nix)
        if remote[:1] == ["readlink"] and (
            remote[1].endswith("/current")
            or (remote[1].endswith("/booted") and where in self.activated)
        ):
            return f"@{remote[1].split('/')[-2]}-runner@\n"
        if remote[:1] == ["readlink"] and remote[1].endswith("/booted"):
            return f"@{remote[1].split('/')[-2]}-previous-runner@\n"
        if remote[:1] == ["readlink"]:
            return "system-@previous-generation@-link\n"
        if remote[:5] == ["zfs", "list", "-H", "-o", "name"]:  # as if every dataset existed
            return "".join(f"{d}\n" for d in remote[5:])
        return ""
