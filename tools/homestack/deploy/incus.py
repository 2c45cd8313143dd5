"""The Incus engine's half of a deploy: after its hypervisor switched, export and apply
the OpenTofu configuration (plan shown, apply only with consent; whatever the plan deletes
or replaces gets a final snapshot and an export first, every stateful instance a snapshot),
then switch each guest's NixOS system inside its instance, check it with the catalogue's
probes, and roll back to its previous system. The guests' images are built with the rest
of the deploy, before any machine is touched.

OpenTofu runs where the deploy runs, in infra/incus/ of the checkout, against the Incus
daemon its provider block names (docs/incus.md); the instance commands run on the
hypervisor over ssh. The state passphrase never passes through here: tofu reads it from
TF_VAR_state_passphrase, which must be set.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homestack import tofu as tofu_export
from homestack.deploy import health
from homestack.deploy.order import Kind, Machine
from homestack.deploy.remote import ConnectionLost, Remote
from homestack.deploy.report import MachineReport, Outcome, Removal, StepLog
from homestack.deploy.steps import NIX, PROFILE, Context, Reporting, StepFailed, copy_command
from homestack.errors import UserError
from homestack.process import Runner, error_line

PASSPHRASE_ENV = f"TF_VAR_{tofu_export.PASSPHRASE_VARIABLE}"
TOFU_DIR = "infra/incus"
IMAGE_DIR = "images"
PLAN_CHANGES = 2  # `tofu plan -detailed-exitcode`: 0 no changes, 1 error, 2 changes

Progress = Callable[[str, str], None]


def runs_incus(plan: Mapping[str, Any], host: str) -> bool:
    return host in plan.get("artifacts", {}).get("incus", {})


def require_passphrase(
    plan: Mapping[str, Any], machines: Sequence[Machine], environ: Mapping[str, str] = os.environ
) -> None:
    """Refuse before anything is built when tofu would run without its state passphrase."""
    hosts = [m.name for m in machines if m.kind is Kind.HOST and runs_incus(plan, m.name)]
    if hosts and not environ.get(PASSPHRASE_ENV):
        raise UserError(
            f"tools deploy: {PASSPHRASE_ENV} is not set: OpenTofu needs it to "
            f"encrypt the state of {', '.join(hosts)} (docs/incus.md)"
        )


def tofu(*args: str) -> list[str]:
    return ["tofu", f"-chdir={TOFU_DIR}", *args]


def plan_file(stamp: str) -> str:
    return f"homestack-{stamp}.tfplan"  # relative to TOFU_DIR


def snapshot_name(stamp: str) -> str:
    return f"homestack-{stamp}"


def in_instance(instance: str, command: Sequence[str]) -> list[str]:
    return ["incus", "exec", instance, "--", *command]


def import_command(instance: str, system: str) -> list[str]:
    """Copy ``system``'s closure from the hypervisor's store into the instance's own store
    (a container's /nix is its own root disk, not the host's)."""
    path = shlex.quote(system)
    return [
        "sh",
        "-c",
        f"nix-store --export $(nix-store --query --requisites {path}) | "
        f"incus exec {shlex.quote(instance)} -- nix-store --import >/dev/null",
    ]


def snapshot_commands(instance: Mapping[str, Any], stamp: str) -> list[list[str]]:
    """An instance snapshot covers its root disk and configuration only; the state is on a
    custom volume, which Incus snapshots separately."""
    name = snapshot_name(stamp)
    commands = [["incus", "snapshot", "create", str(instance["name"]), name]]
    commands += [
        ["incus", "storage", "volume", "snapshot", "create", str(v["pool"]), str(v["name"]), name]
        for v in instance.get("volumes", [])
    ]
    return commands


def switch_commands(instance: str, system: str) -> list[list[str]]:
    return [
        in_instance(instance, ["nix-env", "-p", PROFILE, "--set", system]),
        in_instance(instance, [f"{system}/bin/switch-to-configuration", "switch"]),
    ]


Confirm = Callable[[str], bool]


# -- what the saved plan destroys ------------------------------------------------------------

# `tofu show -json <planfile>` prints the plan in OpenTofu's JSON output format
# (opentofu.org/docs/internals/json-format; internal/command/jsonplan/plan.go and
# resource.go in opentofu/opentofu): `format_version` "1.x" (a new major is incompatible),
# and `resource_changes[]` with `address`, `mode` ("managed" | "data"), `type`, `name`,
# `deposed` and `change.actions`, one of ["no-op"], ["create"], ["read"], ["update"],
# ["delete"], ["delete", "create"], ["create", "delete"]: scanning for "delete" finds every
# object that goes away, replacements included. `change.before` is the object as it is now.
SHOW_FORMAT_MAJOR = "1"
SNAPSHOTTED_TYPES = ("incus_instance", "incus_storage_volume")
REMOVED_DIR = "/var/lib/homestack/removed"  # on the hypervisor: exports of what a plan destroys


@dataclass(frozen=True)
class Doomed:
    """An object the saved plan deletes, or replaces (deletes and creates anew)."""

    address: str  # incus_instance.old
    type: str
    name: str  # the Incus name (change.before.name); "" for a type without one
    pool: str  # incus_storage_volume only
    project: str  # "" for Incus's default project
    replaced: bool

    @property
    def what(self) -> str:
        return f"{self.address} ({'replaced' if self.replaced else 'deleted'})"

    @property
    def snapshotted(self) -> bool:
        return self.type in SNAPSHOTTED_TYPES


def doomed(show_json: str) -> list[Doomed]:
    """What `tofu show -json` says the plan deletes or replaces; ValueError if it cannot
    be read (then nothing may be applied)."""
    try:
        data = json.loads(show_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version = str(data.get("format_version", ""))
    if version.split(".", maxsplit=1)[0] != SHOW_FORMAT_MAJOR:
        raise ValueError(f"format_version {version!r}, this reads {SHOW_FORMAT_MAJOR}.x")
    found = []
    for change in data.get("resource_changes") or []:
        actions = (change.get("change") or {}).get("actions") or []
        if "delete" not in actions or change.get("mode", "managed") != "managed":
            continue
        address = str(change.get("address", "?"))
        before = (change.get("change") or {}).get("before") or {}
        rtype = str(change.get("type", ""))
        name = str(before.get("name") or "")
        pool = str(before.get("pool") or "")
        if rtype in SNAPSHOTTED_TYPES and not name:
            raise ValueError(f"{address}: the plan does not say its Incus name")
        if rtype == "incus_storage_volume" and not pool:
            raise ValueError(f"{address}: the plan does not say its storage pool")
        project = str(before.get("project") or "")
        found.append(
            Doomed(
                address=address,
                type=rtype,
                name=name,
                pool=pool,
                project="" if project == "default" else project,
                replaced="create" in actions,
            )
        )
    return found


def final_snapshot_name(stamp: str) -> str:
    return f"homestack-final-{stamp}"


def export_path(item: Doomed, stamp: str) -> str:
    stem = item.name if item.type == "incus_instance" else f"{item.pool}-{item.name}"
    return f"{REMOVED_DIR}/{stem}-{stamp}.tar.gz"


def keep_commands(item: Doomed, stamp: str) -> list[list[str]]:
    """A final snapshot, then an export to REMOVED_DIR: Incus deletes an instance's or a
    volume's snapshots with it, so only the export outlives the apply. `--instance-only`
    / `--volume-only` (incus 6.0 `export`, `storage volume export`): the object as it is
    now, which is its final snapshot, without every older snapshot copied in full."""
    project = ["--project", item.project] if item.project else []
    name = final_snapshot_name(stamp)
    if item.type == "incus_instance":
        return [
            ["incus", *project, "snapshot", "create", item.name, name],
            ["incus", *project, "export", item.name, export_path(item, stamp), "--instance-only"],
        ]
    return [
        ["incus", *project, "storage", "volume", "snapshot", "create", item.pool, item.name, name],
        [
            "incus",
            *project,
            "storage",
            "volume",
            "export",
            item.pool,
            item.name,
            export_path(item, stamp),
            "--volume-only",
        ],
    ]


@dataclass(frozen=True)
class Unattended:
    """No one to ask (GitOps): a plan that only creates and updates in place is applied;
    one that deletes or replaces anything is left for a person, who runs ``by_hand``."""

    by_hand: str


@dataclass(frozen=True)
class Applied:
    """How the OpenTofu step of one hypervisor ended."""

    halt: str | None = None  # why its guests are not switched; None: switch them
    held: str | None = None  # one line: a destructive apply was not made, and why
    removals: tuple[Removal, ...] = ()  # what the plan destroys, and what was kept of it


def build_images(
    runner: Runner, plan: Mapping[str, Any], host: str, *, flake: Path, progress: Progress
) -> str | None:
    """Build the Incus image of each of ``host``'s guests into images/<guest>; None when
    all built, else what failed (one line)."""
    instances: Mapping[str, Any] = plan["artifacts"]["incus"][host]["instances"]
    for guest in [g for g in plan["hosts"][host].get("guests", []) if g in instances]:
        progress(guest, f"build the Incus image .#incusImages.{guest} into {image_link(guest)}")
        built = runner.run(image_build_command(guest), check=False, cwd=flake)
        if built.returncode != 0:
            return f"the Incus image of {guest}: " + error_line(
                built.stderr, f"exit code {built.returncode}"
            )
    return None


def image_link(guest: str) -> str:
    return f"{IMAGE_DIR}/{guest}"


def image_build_command(guest: str) -> list[str]:
    return [*NIX, "build", f".#incusImages.{guest}", "--out-link", image_link(guest)]


def apply(  # noqa: PLR0911, PLR0912, PLR0915 - one return per way it stops
    ctx: Context,
    plan: Mapping[str, Any],
    host: Machine,
    *,
    flake: Path,
    confirm: Confirm,
    unattended: Unattended | None = None,
) -> Applied:
    """Export, plan, consent, final snapshots and exports of what the plan destroys,
    snapshots, apply for ``host`` (its images were built with the rest of the deploy)."""
    models = plan["artifacts"]["incus"][host.name]
    instances: Mapping[str, Any] = models["instances"]
    guests = [g for g in plan["hosts"][host.name].get("guests", []) if g in instances]
    remote = Remote(ctx.runner, ctx.ssh, host.target)
    saved = plan_file(ctx.stamp)

    def say(message: str) -> None:
        ctx.progress(host.name, message)

    def stop(why: str) -> Applied:
        return Applied(halt=f"not started: {why}")

    files = tofu_export.export(dict(plan), host.name)
    if ctx.options.dry_run:
        say(f"tofu export: would write {', '.join(f'{TOFU_DIR}/{f}' for f in sorted(files))}")
    else:
        written = tofu_export.write(files, flake / TOFU_DIR)
        say(f"tofu export: wrote {len(written)} files in {TOFU_DIR}")

    # What each guest runs before anything changes: its rollback target.
    try:
        for guest in guests:
            seen = remote.run(in_instance(guest, ["readlink", "-f", "/run/current-system"]))
            ctx.booted[guest] = seen.stdout.strip() if seen.returncode == 0 else ""
    except ConnectionLost as exc:
        return stop(f"{exc}; nothing was applied")

    for step, command in (
        ("init", tofu("init", "-input=false")),
        (
            "plan",
            tofu(
                "plan",
                "-input=false",
                "-detailed-exitcode",
                f"-var={tofu_export.IMAGE_DIR_VARIABLE}={flake.resolve() / IMAGE_DIR}",
                f"-out={saved}",
            ),
        ),
    ):
        say(f"tofu {step}")
        result = ctx.runner.run(command, check=False, cwd=flake)
        if step == "plan" and result.returncode in (0, PLAN_CHANGES):
            break
        if result.returncode != 0:
            why = error_line(result.stderr, f"exit code {result.returncode}")
            return stop(f"tofu {step} failed: {why}")
    for line in result.stdout.splitlines():  # the plan, shown before anything is applied
        say(f"plan: {line}")
    if result.returncode == 0 and not ctx.options.dry_run:
        say("tofu plan: no changes; nothing to apply")
        return Applied()

    # What the saved plan, exactly what will be applied, deletes or replaces.
    say("tofu show: what the saved plan deletes or replaces")
    shown = ctx.runner.run(tofu("show", "-json", saved), check=False, cwd=flake)
    if ctx.options.dry_run:
        say(
            "what the plan deletes or replaces is known only from it: a real run takes a "
            f"final snapshot of each such instance and volume and exports it to {REMOVED_DIR}/"
            " before the apply"
        )
        gone: list[Doomed] = []
    else:
        if shown.returncode != 0:
            return stop(
                f"tofu show -json {TOFU_DIR}/{saved} failed, so what the plan deletes is not "
                "known; nothing was applied: "
                + error_line(shown.stderr, f"exit code {shown.returncode}")
            )
        try:
            gone = doomed(shown.stdout)
        except ValueError as exc:
            return stop(
                f"cannot read what the plan deletes (tofu show -json {TOFU_DIR}/{saved}): "
                f"{exc}; nothing was applied"
            )
    for item in gone:
        kept = "; a final snapshot and an export are taken first" if item.snapshotted else ""
        say(f"plan: {item.what}{kept}")

    names = ", ".join(item.what for item in gone)
    replaced_instances = {i.name for i in gone if i.type == "incus_instance" and i.replaced}
    if unattended is not None:
        if gone:
            held = (
                f"{host.name}: the OpenTofu plan deletes or replaces {names}; unattended, "
                f"only plans that create or update in place are applied: run `{unattended.by_hand}`"
                f" on {host.name}"
            )
            say(held)
            return Applied(
                halt=f"not started: {held}",
                held=held,
                removals=not_applied(host, gone, "held for a person"),
            )
        say("the plan only creates and updates in place: applying it")
    else:
        question = f"apply this OpenTofu plan to {host.name}'s Incus?"
        if gone:
            question = (
                f"apply this OpenTofu plan to {host.name}'s Incus? It deletes or replaces "
                f"{names}; each instance and volume gets a final snapshot and an export to "
                f"{REMOVED_DIR}/ first"
            )
        if not (ctx.options.dry_run or ctx.options.yes or confirm(question)):
            say(
                "the plan was shown and not applied (run on a terminal to confirm, or use "
                f"--yes); saved as {TOFU_DIR}/{saved}"
            )
            return Applied(
                halt="not started: the OpenTofu plan was not applied (no --yes and no terminal)",
                removals=not_applied(host, gone, "not confirmed"),
            )

    try:
        kept_items: list[tuple[Doomed, str]] = []
        if any(item.snapshotted for item in gone):
            made = remote.run(["mkdir", "-p", "-m", "0700", REMOVED_DIR])
            if made.returncode != 0:
                return held_back(
                    host,
                    f"cannot make {REMOVED_DIR}: "
                    + error_line(made.stderr, f"exit code {made.returncode}"),
                    gone,
                )
        for item in [i for i in gone if i.snapshotted]:
            where = export_path(item, ctx.stamp)
            final = final_snapshot_name(ctx.stamp)
            say(f"{item.address}: final snapshot {final}, export to {where}")
            for command in keep_commands(item, ctx.stamp):
                result = remote.run(command, input="")
                if result.returncode != 0:
                    return held_back(
                        host,
                        f"`{shlex.join(command)}` failed: "
                        + error_line(result.stderr, f"exit code {result.returncode}"),
                        gone,
                    )
            kept_items.append((item, where))

        for guest in guests:
            if not instances[guest].get("volumes") or not remote.ok(["incus", "info", guest]):
                continue  # stateless, or created by this apply
            commands = snapshot_commands(instances[guest], ctx.stamp)
            replaced = guest in replaced_instances
            if replaced:  # its root disk goes with it: the final snapshot and export keep it
                commands = commands[1:]
            say(f"snapshot {guest} {snapshot_name(ctx.stamp)}" + (" (volumes)" if replaced else ""))
            for command in commands:
                result = remote.run(command, input="")
                if result.returncode != 0:
                    return stop(
                        f"snapshot of {guest} failed, nothing was applied: "
                        + error_line(result.stderr, shlex.join(command))
                    )
            if not replaced:
                ctx.snapshots.done.add(f"incus:{guest}")
    except ConnectionLost as exc:
        return stop(f"{exc}; nothing was applied")

    say("tofu apply")
    result = ctx.runner.run(tofu("apply", "-input=false", saved), check=False, cwd=flake)
    if not ctx.options.dry_run:
        (flake / TOFU_DIR / saved).unlink(missing_ok=True)
    applied = result.returncode == 0
    removals = tuple(
        Removal(
            item.name,
            host.name,
            applied,
            (
                f"{item.what} by tofu apply; "
                if applied
                else f"{item.what} in the plan, but tofu apply failed: it may still be there; "
            )
            + f"final snapshot {final_snapshot_name(ctx.stamp)}, export {where} on {host.name}",
        )
        for item, where in kept_items
    )
    for guest in replaced_instances:  # a new instance: the old one's system is not in it
        ctx.booted[guest] = ""
    if not applied:
        return Applied(
            halt="not started: tofu apply failed (the snapshots taken before it are kept): "
            + error_line(result.stderr, f"exit code {result.returncode}"),
            removals=removals,
        )
    return Applied(removals=removals)


def held_back(host: Machine, why: str, gone: Sequence[Doomed]) -> Applied:
    """A final snapshot or export of something the plan destroys failed: nothing is applied."""
    held = f"{host.name}: {why}; nothing was applied, so nothing was deleted"
    return Applied(
        halt=f"not started: {held}",
        held=held,
        removals=not_applied(host, gone, "a final snapshot or export failed"),
    )


def not_applied(host: Machine, gone: Sequence[Doomed], why: str) -> tuple[Removal, ...]:
    """The instances and volumes a plan that was not applied would have destroyed."""
    return tuple(
        Removal(i.name, host.name, False, f"{i.what} in the plan, not applied: {why}")
        for i in gone
        if i.snapshotted
    )


class GuestRun(Reporting):
    """Switches one guest's system inside its instance; always ends with a report."""

    def __init__(self, ctx: Context, machine: Machine, new: str) -> None:
        self.ctx = ctx
        self.m = machine
        self.instance = machine.name  # lib/render/incus.nix names the instance after the guest
        self.new = new
        self.remote = Remote(ctx.runner, ctx.ssh, machine.target)
        self.log = StepLog()
        self.previous = ctx.booted.get(machine.name) or None
        taken = f"incus:{self.instance}" in ctx.snapshots.done
        self.snapshot = snapshot_name(ctx.stamp) if taken else None

    def run(self) -> MachineReport:  # noqa: PLR0911 - one return per end state
        switched = False
        try:
            if not self.ctx.ssh.local:
                self.say(f"copy {self.new} to {self.m.target}")
                copied = self.ctx.runner.run(
                    copy_command(self.m.target, self.new),
                    check=False,
                    env={"NIX_SSHOPTS": self.ctx.ssh.nix_sshopts()},
                )
                if copied.returncode != 0:
                    raise StepFailed("copy: " + error_line(copied.stderr, "failed"))
            self.say(f"import {self.new} into instance {self.instance}")
            self.must("import", import_command(self.instance, self.new))
            now = self.must(
                "record what runs",
                in_instance(self.instance, ["readlink", "-f", "/run/current-system"]),
            )
            if now != self.new:
                switched = True
                self.say("switch inside the instance")
                for command in switch_commands(self.instance, self.new):
                    self.must("switch", command)
            failure = self.healthy()
            if failure is None:
                if not switched:
                    return self.report(Outcome.UNCHANGED, f"already runs {self.new}")
                self.say("switched, healthy")
                return self.report(
                    Outcome.SWITCHED, f"runs {self.new} (in instance {self.instance})"
                )
            if not switched:
                return self.report(
                    Outcome.FAILED,
                    f"runs {self.new} (unchanged) but is unhealthy",
                    f"{failure.check}: {failure.detail}",
                )
            return self.roll_back(f"health check failed: {failure.check}: {failure.detail}")
        except StepFailed as exc:
            if switched:
                return self.roll_back(str(exc))
            return self.report(
                Outcome.FAILED,
                f"not switched; still runs {self.previous or 'what it ran before'}",
                str(exc),
            )
        except ConnectionLost as exc:
            return self.report(
                Outcome.UNKNOWN,
                f"unknown: the connection was lost ({exc})" + self.snapshot_note(),
                str(exc),
            )

    def healthy(self) -> health.Failure | None:
        self.say("health checks")
        o = self.ctx.options
        steps = [
            (
                "instance's system running",
                in_instance(self.instance, health.system_running(o.system_timeout)),
            )
        ]
        steps += [(f"{h.describe()} answers", h.command()) for h in self.m.health]
        for name, command in steps:
            ok, detail = health.poll(
                self.remote, command, o.health_timeout, o.poll_interval, self.ctx.clock
            )
            if not ok:
                self.log.add("health", False, f"{name}: {detail}")
                return health.Failure(name, detail)
        self.log.add("health", True)
        return None

    def snapshot_note(self) -> str:
        if self.snapshot is None:
            return ""
        return (
            f"; its snapshot from before the apply: incus snapshot restore {self.instance}"
            f" {self.snapshot}"
        )

    def roll_back(self, reason: str) -> MachineReport:
        """The previous system generation, inside the instance (docs/incus.md says why not
        the snapshot)."""
        if self.previous is None:
            self.say(f"{reason}; there is no previous system in this instance to go back to")
            return self.report(
                Outcome.UNKNOWN,
                f"runs {self.new}, which is unhealthy, and the "
                "instance has no previous system (new this deploy)" + self.snapshot_note(),
                reason,
            )
        self.say(f"{reason} -> rolling back to {self.previous}")
        try:
            for command in switch_commands(self.instance, self.previous):
                result = self.remote.run(command)
                if result.returncode != 0:
                    self.log.add("rollback", False, shlex.join(command))
                    return self.report(
                        Outcome.UNKNOWN,
                        f"rollback failed ({command[-2]} exited"
                        f" with {result.returncode}); check it by hand" + self.snapshot_note(),
                        reason,
                    )
        except ConnectionLost as exc:
            return self.report(
                Outcome.UNKNOWN,
                f"may still run {self.new}: rollback could not"
                f" connect ({exc})" + self.snapshot_note(),
                reason,
            )
        self.log.add("rollback", True)
        return self.report(Outcome.ROLLED_BACK, f"rolled back: runs {self.previous} again", reason)
