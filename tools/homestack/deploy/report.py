"""What a deploy did to each machine, for people (text) and for programs (JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(Enum):
    """Where a machine ended up. Every value says which configuration it runs now."""

    SWITCHED = "switched"  # runs the new configuration, healthy
    UNCHANGED = "unchanged"  # nothing was changed (already current, or stopped before the switch)
    ROLLED_BACK = "rolled-back"  # the new one failed; back on the previous one
    UNKNOWN = "unknown"  # the connection was lost and the previous one could not be confirmed
    BUILT = "built"  # --build-only
    NOT_STARTED = "not-started"  # an earlier failure stopped the deploy before this machine
    FAILED = "failed"  # nothing switched, but the machine is not healthy either

    @property
    def ok(self) -> bool:
        return self in (Outcome.SWITCHED, Outcome.UNCHANGED, Outcome.BUILT)


@dataclass(frozen=True)
class Step:
    """One step on one machine and how it went."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class MachineReport:
    name: str
    kind: str
    outcome: Outcome
    state: str  # one sentence: what the machine runs now
    new: str | None = None  # store path built for it
    previous: str | None = None  # generation / runner before the deploy
    snapshot: str | None = None
    error: str | None = None
    steps: tuple[Step, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "outcome": self.outcome.value,
            "ok": self.outcome.ok,
            "state": self.state,
            "new": self.new,
            "previous": self.previous,
            "snapshot": self.snapshot,
            "error": self.error,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in self.steps],
        }


@dataclass(frozen=True)
class Removal:
    """A guest found on a hypervisor but no longer in the inventory."""

    guest: str
    host: str
    removed: bool
    detail: str


@dataclass(frozen=True)
class RecordWrite:
    """Whether one host now keeps the record of this deploy (homestack.deploy.record)."""

    host: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DeployReport:
    machines: tuple[MachineReport, ...]
    removals: tuple[Removal, ...] = ()
    dry_run: bool = False
    error: str | None = None  # a failure before any machine was touched (validate, build)
    # a destructive OpenTofu apply that was not made: no one to confirm it, or its final
    # snapshot or export failed (homestack.deploy.incus); one line, and exit code 2
    held: str | None = None
    # the record of a complete deploy, written on each host after it succeeded; a host that
    # did not get it is said here and does not make the deploy a failure
    records: tuple[RecordWrite, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and self.held is None and all(m.outcome.ok for m in self.machines)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "error": self.error,
            "held": self.held,
            "machines": [m.to_json() for m in self.machines],
            "removedGuests": [
                {"guest": r.guest, "host": r.host, "removed": r.removed, "detail": r.detail}
                for r in self.removals
            ],
            "recorded": [{"host": r.host, "ok": r.ok, "detail": r.detail} for r in self.records],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def summary(self) -> str:
        """A table of machines and their final state, then the verdict."""
        if self.dry_run and self.error is None:
            n = len(self.machines)
            return f"# dry run: {n} machine{'' if n == 1 else 's'}; nothing was run or changed"
        names = [*(m.name for m in self.machines), *(r.guest for r in self.removals)]
        width = max((len(n) for n in names), default=4)
        lines = [f"{m.name:<{width}}  {m.outcome.value:<11}  {m.state}" for m in self.machines]
        lines += [
            f"{r.guest:<{width}}  {'removed' if r.removed else 'kept':<11}  {r.detail}"
            for r in self.removals
        ]
        lines += [
            f"{r.host:<{width}}  {'no record':<11}  {r.detail}" for r in self.records if not r.ok
        ]
        if self.held:
            lines.append(f"deploy stopped: {self.held}")
        elif self.error:
            lines.append(f"deploy failed: {self.error}")
        elif self.ok and any(not r.ok for r in self.records):
            bad = [r.host for r in self.records if not r.ok]
            lines.append(f"deploy succeeded; the deployed record is not on {', '.join(bad)}")
        elif self.ok:
            lines.append("deploy succeeded")
        else:
            bad = [m.name for m in self.machines if not m.outcome.ok]
            lines.append(f"deploy failed on {', '.join(bad)}")
        return "\n".join(lines)


@dataclass
class StepLog:
    """Steps as they happen on one machine (the mutable half of a MachineReport)."""

    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.steps.append(Step(name, ok, detail))
