"""The Incus engine's half of a deploy: after its hypervisor switched, build the guests'
images, export and apply the OpenTofu configuration (plan shown, apply only with consent,
every stateful instance snapshotted first), then switch each guest's NixOS system inside
its instance, check it with the catalogue's probes, and roll back to its previous system.

OpenTofu runs where the deploy runs, in infra/incus/ of the checkout, against the Incus
daemon its provider block names (docs/incus.md); the instance commands run on the
hypervisor over ssh. The state passphrase never passes through here: tofu reads it from
TF_VAR_state_passphrase, which must be set.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from homestack import tofu as tofu_export
from homestack.deploy import health
from homestack.deploy.order import Kind, Machine
from homestack.deploy.remote import ConnectionLost, Remote
from homestack.deploy.report import MachineReport, Outcome, StepLog
from homestack.deploy.steps import NIX, PROFILE, Context, Reporting, StepFailed, copy_command
from homestack.errors import UserError
from homestack.process import error_line

PASSPHRASE_ENV = f"TF_VAR_{tofu_export.PASSPHRASE_VARIABLE}"
TOFU_DIR = "infra/incus"
IMAGE_DIR = "images"
PLAN_CHANGES = 2  # `tofu plan -detailed-exitcode`: 0 no changes, 1 error, 2 changes


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


def apply(  # noqa: PLR0911, PLR0912 - one return per way it stops
    ctx: Context, plan: Mapping[str, Any], host: Machine, *, flake: Path, confirm: Confirm
) -> str | None:
    """Images, export, plan, consent, snapshots, apply for ``host``; None when its guests
    may be switched, else why not (one line)."""
    models = plan["artifacts"]["incus"][host.name]
    instances: Mapping[str, Any] = models["instances"]
    guests = [g for g in plan["hosts"][host.name].get("guests", []) if g in instances]
    remote = Remote(ctx.runner, ctx.ssh, host.target)

    def say(message: str) -> None:
        ctx.progress(host.name, message)

    for guest in guests:
        say(f"build the Incus image of {guest}")
        built = ctx.runner.run(
            [*NIX, "build", f".#incusImages.{guest}", "--out-link", f"{IMAGE_DIR}/{guest}"],
            check=False,
            cwd=flake,
        )
        if built.returncode != 0:
            return f"not started: the Incus image of {guest} did not build: " + error_line(
                built.stderr, f"exit code {built.returncode}"
            )

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
        return f"not started: {exc}; nothing was applied"

    for step, command in (
        ("init", tofu("init", "-input=false")),
        (
            "plan",
            tofu(
                "plan",
                "-input=false",
                "-detailed-exitcode",
                f"-var={tofu_export.IMAGE_DIR_VARIABLE}={flake.resolve() / IMAGE_DIR}",
                f"-out={plan_file(ctx.stamp)}",
            ),
        ),
    ):
        say(f"tofu {step}")
        result = ctx.runner.run(command, check=False, cwd=flake)
        if step == "plan" and result.returncode in (0, PLAN_CHANGES):
            break
        if result.returncode != 0:
            return f"not started: tofu {step} failed: " + error_line(
                result.stderr, f"exit code {result.returncode}"
            )
    for line in result.stdout.splitlines():  # the plan, shown before anything is applied
        say(f"plan: {line}")
    if result.returncode == 0 and not ctx.options.dry_run:
        say("tofu plan: no changes; nothing to apply")
        return None
    question = f"apply this OpenTofu plan to {host.name}'s Incus?"
    if not (ctx.options.dry_run or ctx.options.yes or confirm(question)):
        say(
            f"the plan was shown and not applied (run on a terminal to confirm, or use --yes);"
            f" saved as {TOFU_DIR}/{plan_file(ctx.stamp)}"
        )
        return "not started: the OpenTofu plan was not applied (no --yes and no terminal)"

    try:
        for guest in guests:
            if not instances[guest].get("volumes") or not remote.ok(["incus", "info", guest]):
                continue  # stateless, or created by this apply
            say(f"snapshot {guest} {snapshot_name(ctx.stamp)}")
            for command in snapshot_commands(instances[guest], ctx.stamp):
                result = remote.run(command)
                if result.returncode != 0:
                    return (
                        f"not started: snapshot of {guest} failed, nothing was applied: "
                        + error_line(result.stderr, shlex.join(command))
                    )
            ctx.snapshots.done.add(f"incus:{guest}")
    except ConnectionLost as exc:
        return f"not started: {exc}; nothing was applied"

    say("tofu apply")
    result = ctx.runner.run(
        tofu("apply", "-input=false", plan_file(ctx.stamp)), check=False, cwd=flake
    )
    if not ctx.options.dry_run:
        (flake / TOFU_DIR / plan_file(ctx.stamp)).unlink(missing_ok=True)
    if result.returncode != 0:
        return (
            "not started: tofu apply failed (the snapshots taken before it are kept): "
            + error_line(result.stderr, f"exit code {result.returncode}")
        )
    return None


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

    def must(self, step: str, command: list[str]) -> str:
        result = self.remote.run(command)
        if result.returncode != 0:
            detail = error_line(result.stderr or result.stdout, f"exit code {result.returncode}")
            self.log.add(step, False, detail)
            raise StepFailed(f"{step}: {detail}")
        self.log.add(step, True)
        return result.stdout.strip()

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
