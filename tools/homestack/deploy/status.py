"""`tools deploy status`: what each machine runs now, and what its GitOps timer last did."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homestack.deploy.order import Kind, waves
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
        return {"name": self.name, "kind": self.kind, "reachable": self.reachable,
                "running": self.running, "active": self.active, "gitops": self.gitops}

    def line(self) -> str:
        text = f"{self.name:<12} {self.running}"
        if self.active is not None:
            text += f" ({self.active})"
        if self.gitops:
            g = self.gitops
            text += (f"; gitops: {g.get('state', '?')} at {g.get('time', '?')}"
                     f" rev {str(g.get('rev', '?'))[:12]}")
            if g.get("message"):
                text += f" ({g['message']})"
        return text


def status(plan: Mapping[str, Any], runner: Runner, ssh: Ssh,
           selected: Sequence[str] = (),
           progress: Callable[[str], None] = lambda _: None) -> list[MachineStatus]:
    """Ask each machine (in deploy order) what it runs; ``progress`` hears each name first."""
    rows = []
    for machine in [m for wave in waves(plan, selected) for m in wave]:
        progress(machine.name)
        remote = Remote(runner, ssh, machine.target)
        try:
            if machine.kind is Kind.HOST:
                link = remote.run(["readlink", PROFILE]).stdout.strip()
                match = re.fullmatch(r"system-(\d+)-link", link)
                running = f"generation {match.group(1)}" if match else (link or "unknown")
                raw = remote.run(["cat", GITOPS_STATUS])
                gitops = _parse(raw.stdout) if raw.returncode == 0 else None
                rows.append(MachineStatus(machine.name, "host", True, running, gitops=gitops))
            else:
                runner_path = remote.run(["readlink", machine.current_link]).stdout.strip()
                active = remote.run(["systemctl", "is-active", machine.unit]).stdout.strip()
                rows.append(MachineStatus(machine.name, "guest", True,
                                          runner_path or "not installed", active=active))
        except ConnectionLost as exc:
            rows.append(MachineStatus(machine.name, machine.kind.value, False,
                                      f"unreachable: {exc}"))
    return rows


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"state": "unreadable status file"}
    return value if isinstance(value, dict) else None
