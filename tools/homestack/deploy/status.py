"""`tools deploy status`: what each machine runs now, and what its GitOps timer last did.
A microvm guest is its runner and unit on the hypervisor; an Incus guest is its instance's
status and the system running inside it, both asked of its hypervisor's Incus."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from homestack.deploy import incus
from homestack.deploy.order import Kind, Machine, waves
from homestack.deploy.remote import ConnectionLost, Remote, Ssh
from homestack.deploy.steps import PROFILE
from homestack.process import Runner, error_line

GITOPS_STATUS = "/var/lib/homestack/gitops/status.json"  # written by modules/gitops.nix


@dataclass(frozen=True)
class MachineStatus:
    name: str
    kind: str
    reachable: bool
    running: str  # "generation 42" (host), the runner's (microvm) or system's (Incus) path
    active: str | None = None  # guests: state of microvm@<guest>, or Incus's instance status
    gitops: Mapping[str, Any] | None = None  # the host's last GitOps run, if it pulls

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "reachable": self.reachable,
            "running": self.running,
            "active": self.active,
            "gitops": self.gitops,
        }

    def line(self) -> str:
        text = f"{self.name:<12} {self.running}"
        if self.active is not None:
            text += f" ({self.active})"
        if self.gitops:
            g = self.gitops
            text += (
                f"; gitops: {g.get('state', '?')} at {g.get('time', '?')}"
                f" rev {str(g.get('rev', '?'))[:12]}"
            )
            if g.get("message"):
                text += f" ({g['message']})"
        return text


class _Incus:
    """What one Incus hypervisor says of its instances: `incus list --format json` (a list
    of Incus's api.InstanceFull: `name`, `status` such as "Running" or "Stopped"), asked
    once for all its guests."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.listed: dict[str, str] | str | None = None  # name -> status, or why not known

    def status(self, guest: str) -> str | None:
        """The instance's status; None if there is no such instance. Raises _Unknown."""
        if self.listed is None:
            self.listed = self._list()
        if isinstance(self.listed, str):
            raise _Unknown(self.listed)
        return self.listed.get(guest)

    def _list(self) -> dict[str, str] | str:
        result = self.remote.run(LIST)
        if result.returncode != 0:
            return f"{shlex.join(LIST)} failed: " + error_line(
                result.stderr, f"exit code {result.returncode}"
            )
        try:
            listed = json.loads(result.stdout)
        except json.JSONDecodeError:
            return f"{shlex.join(LIST)} printed no JSON"
        if not isinstance(listed, list):
            return f"{shlex.join(LIST)} printed no list"
        return {
            str(i["name"]): str(i.get("status") or "unknown")
            for i in listed
            if isinstance(i, dict) and "name" in i
        }


class _Unknown(Exception):  # an answer, not a bug: no -Error suffix
    """What an Incus guest runs cannot be known (its hypervisor's Incus did not say)."""


LIST = ["incus", "list", "--format", "json"]


def _ask_incus(machine: Machine, remote: Remote, hypervisor: _Incus) -> MachineStatus:
    """An Incus guest: its instance's status from the hypervisor, and the system it runs
    read inside it the way the deploy reads it (homestack.deploy.incus)."""
    try:
        state = hypervisor.status(machine.name)
    except _Unknown as exc:
        return MachineStatus(machine.name, "guest", True, f"unknown: {exc}")
    if state is None:
        return MachineStatus(machine.name, "guest", True, "no instance", active="not created")
    if state != "Running":
        return MachineStatus(machine.name, "guest", True, "not running", active=state)
    seen = remote.run(incus.in_instance(machine.name, ["readlink", "-f", "/run/current-system"]))
    running = seen.stdout.strip() if seen.returncode == 0 else ""
    if not running:
        running = "unknown: " + error_line(seen.stderr, f"readlink exited {seen.returncode}")
    return MachineStatus(machine.name, "guest", True, running, active=state)


def _ask(machine: Machine, remote: Remote, hypervisor: _Incus) -> MachineStatus:
    if machine.kind is Kind.GUEST and machine.engine == "incus":
        return _ask_incus(machine, remote, hypervisor)
    if machine.kind is Kind.HOST:
        link = remote.run(["readlink", PROFILE]).stdout.strip()
        match = re.fullmatch(r"system-(\d+)-link", link)
        running = f"generation {match.group(1)}" if match else (link or "unknown")
        raw = remote.run(["cat", GITOPS_STATUS])
        gitops = _parse(raw.stdout) if raw.returncode == 0 else None
        return MachineStatus(machine.name, "host", True, running, gitops=gitops)
    runner_path = remote.run(["readlink", machine.current_link]).stdout.strip()
    active = remote.run(["systemctl", "is-active", machine.unit]).stdout.strip()
    return MachineStatus(machine.name, "guest", True, runner_path or "not installed", active=active)


def status(
    plan: Mapping[str, Any],
    runner: Runner,
    ssh: Ssh,
    selected: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[MachineStatus]:
    """Ask each machine what it runs; ``progress`` hears each name first. Rows come back in
    deploy order.

    Machines reached through different ssh targets are asked in parallel; those sharing a
    target (a hypervisor and its guests) one after another, and once that target could
    not be reached the rest of its machines are reported unknown without trying again, so
    a dead host costs one connection timeout, not one per guest."""
    machines = [m for wave in waves(plan, selected) for m in wave]
    by_target: dict[str, list[Machine]] = {}
    for machine in machines:
        by_target.setdefault(machine.target, []).append(machine)

    def one_target(target: str) -> dict[str, MachineStatus]:
        remote = Remote(runner, ssh, target)
        hypervisor = _Incus(remote)  # asked only if an Incus guest is reached through it
        rows: dict[str, MachineStatus] = {}
        failed: ConnectionLost | None = None
        for machine in by_target[target]:
            if failed is None:
                progress(machine.name)
                try:
                    rows[machine.name] = _ask(machine, remote, hypervisor)
                    continue
                except ConnectionLost as exc:
                    failed = exc
            rows[machine.name] = MachineStatus(
                machine.name, machine.kind.value, False, f"unknown: {failed}"
            )
        return rows

    found: dict[str, MachineStatus] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(by_target))) as pool:
        for rows in pool.map(one_target, list(by_target)):
            found.update(rows)
    return [found[m.name] for m in machines]


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"state": "unreadable status file"}
    return value if isinstance(value, dict) else None
