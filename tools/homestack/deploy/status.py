"""`tools deploy status`: what each machine runs now, and what its GitOps timer last did."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from homestack.deploy.order import Kind, Machine, waves
from homestack.deploy.remote import ConnectionLost, Remote, Ssh
from homestack.deploy.steps import PROFILE
from homestack.process import Runner

GITOPS_STATUS = "/var/lib/homestack/gitops/status.json"  # written by modules/gitops.nix


@dataclass(frozen=True)
class MachineStatus:
    name: str
    kind: str
    reachable: bool
    running: str  # "generation 42" (host) or the runner's store path (guest)
    active: str | None = None  # guests: state of microvm@<guest>
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


def _ask(machine: Machine, remote: Remote) -> MachineStatus:
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
        rows: dict[str, MachineStatus] = {}
        failed: ConnectionLost | None = None
        for machine in by_target[target]:
            if failed is None:
                progress(machine.name)
                try:
                    rows[machine.name] = _ask(machine, remote)
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
