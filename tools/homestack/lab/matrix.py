"""The allow matrix: what the plan says may connect, and what the lab actually lets through.

Every ordered pair (source machine, destination guest) is probed on every port of the plan.
Sources are the guests, the hypervisor and the LAN client; destinations are the guests,
because the plan's allow list governs traffic into guests (the hypervisor's own firewall
and the NAT towards the LAN are outside it).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from homestack.lab import probes
from homestack.lab.firewall import Mode, rulesets
from homestack.lab.topology import Machine, Topology

BLOCKED_TIMEOUT = 0.4
ALLOWED_RETRY_TIMEOUT = 2.0


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    port: int
    proto: str

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst} {self.port}/{self.proto}"


@dataclass(frozen=True)
class FlowResult:
    flow: Flow
    allowed: bool
    outcome: str  # probes.OPEN | REFUSED | DROPPED
    guarded: bool = True  # whether the active filters are meant to see this flow at all

    @property
    def ok(self) -> bool:
        return (self.outcome == probes.OPEN) == self.allowed or self.gap

    @property
    def gap(self) -> bool:
        """Not allowed, open, and outside what the active filter layer can see."""
        return not self.allowed and not self.guarded and self.outcome == probes.OPEN


def allowed_flows(plan: dict[str, Any]) -> set[Flow]:
    return {Flow(a["from"], a["to"], int(a["port"]), a["proto"]) for a in plan.get("allow", [])}


def all_flows(topo: Topology, ports: list[dict[str, Any]]) -> list[Flow]:
    return [
        Flow(src.name, dst.name, int(p["port"]), p["proto"])
        for src in topo.machines
        for dst in topo.guests
        if src.name != dst.name
        for p in ports
    ]


def probe(flow: Flow, src: Machine, dst: Machine, allowed: bool, guarded: bool) -> FlowResult:
    check = probes.tcp if flow.proto == "tcp" else probes.udp
    outcome = check(src.netns, dst.address, flow.port, BLOCKED_TIMEOUT)
    if allowed and outcome != probes.OPEN:
        # A loaded machine may be slow: an allowed flow gets a second, patient try.
        outcome = check(src.netns, dst.address, flow.port, ALLOWED_RETRY_TIMEOUT)
    return FlowResult(flow, allowed, outcome, guarded)


def submit_all(pool: ThreadPoolExecutor, topo: Topology, plan: dict[str, Any],
               ports: list[dict[str, Any]], mode: Mode, *,
               strict: bool = False) -> list[Future[FlowResult]]:
    """Probe every flow under ``mode``.

    A bridge `forward` chain sees only frames between guests. Flows from the hypervisor
    (leaving through its `output` hook) or from the LAN (routed through its `forward` hook)
    count as guarded by the hypervisor's rules alone only if those rules filter that hook
    for IP; otherwise, with ``strict`` off, an open one is reported as a gap, not failed.
    """
    allowed = allowed_flows(plan)
    by_name = {m.name: m for m in topo.machines}
    hooks = {hook for rs in rulesets(plan, topo) if rs.is_bridge
             for family, hook in rs.filter_hooks() if family in {"ip", "inet"}}
    sees = {"guest": True, "host": "output" in hooks, "lan": "forward" in hooks}

    def guarded(f: Flow) -> bool:
        return strict or mode is not Mode.BRIDGE or sees[by_name[f.src].kind]

    call: Callable[[Flow], FlowResult] = lambda f: probe(  # noqa: E731
        f, by_name[f.src], by_name[f.dst], f in allowed, guarded(f))
    return [pool.submit(call, f) for f in all_flows(topo, ports)]


def table(results: list[FlowResult], topo: Topology, ports: list[dict[str, Any]]) -> str:
    """Rows: source -> destination; columns: ports. `open`/`-` as expected, `LEAK`/`MISS` not."""
    cols = [f"{p['port']}/{p['proto'][0]}" for p in ports]
    index = {(r.flow.src, r.flow.dst, r.flow.port, r.flow.proto): r for r in results}
    width = max(7, *(len(c) + 1 for c in cols))
    rowlab = max(len(f"{s.name} -> {d.name}") for s in topo.machines for d in topo.guests) + 1
    lines = ["".ljust(rowlab) + "".join(c.rjust(width) for c in cols)]
    for s in topo.machines:
        for d in topo.guests:
            if s.name == d.name:
                continue
            cells = []
            for p in ports:
                r = index.get((s.name, d.name, int(p["port"]), p["proto"]))
                if r is None:
                    cells.append("?")
                elif r.gap:
                    cells.append("gap")
                elif r.ok:
                    cells.append("open" if r.allowed else "-")
                else:
                    cells.append("LEAK" if not r.allowed else "MISS")
            lines.append(f"{s.name} -> {d.name}".ljust(rowlab)
                         + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
