"""The allow matrix: what the plan says may connect, and what the lab actually lets through.

Every port of the plan is probed on three kinds of path:

- into guests: from every guest (across the bridge), the hypervisor, the LAN client and the
  relay (through the tunnel) to every guest;
- guest to guest through the gateway: the same pairs of guests, but each packet sent to the
  hypervisor's MAC and routed by it, as a compromised guest could;
- around the guest network: from every guest to the hypervisor, the LAN, the internet and
  the relay, and from the LAN and the relay to the hypervisor and beyond.

What is allowed comes from the plan alone: `allow` (into guests), `egress` (out of guests)
and `input` (to the hypervisor's own services).

Between two guests, every pair would make the matrix grow with the square of the guests
(a lab of 30 guests: 130,000 probes, most waiting out a drop). A guest is probed from the
guests it has an allowed flow with (either way) and from up to STRANGERS guests it has
none with, in the topology's order: every allowed flow and every port next to it is still
probed, a small lab still gets every pair, and the matrix grows with the flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homestack.lab import probes, sweep
from homestack.lab.firewall import Mode
from homestack.lab.topology import Machine, Topology

BLOCKED_TIMEOUT = 0.4
STRANGERS = 2
ALLOWED_RETRY_TIMEOUT = 2.0
DIRECT, ROUTED = "direct", "routed"
SECTIONS = (
    ("into guests", lambda f, kinds: f.path == DIRECT and kinds[f.dst] == "guest"),
    ("guest to guest through the gateway", lambda f, kinds: f.path == ROUTED),
    (
        "out of guests, and around the guest network",
        lambda f, kinds: f.path == DIRECT and kinds[f.dst] != "guest",
    ),
)


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    port: int
    proto: str
    path: str = DIRECT  # DIRECT, or ROUTED: guest -> gateway -> guest

    @property
    def label(self) -> str:
        via = " via the gateway" if self.path == ROUTED else ""
        return f"{self.src} -> {self.dst}{via} {self.port}/{self.proto}"


@dataclass(frozen=True)
class FlowResult:
    flow: Flow
    allowed: bool
    outcome: str  # probes.OPEN | REFUSED | DROPPED
    guarded: bool = True  # whether the active filters are responsible for this flow

    @property
    def ok(self) -> bool:
        return (self.outcome == probes.OPEN) == self.allowed or self.gap

    @property
    def gap(self) -> bool:
        """Not allowed, open, and outside what the active filter layer is responsible for."""
        return not self.allowed and not self.guarded and self.outcome == probes.OPEN


def allowed_flows(plan: dict[str, Any], topo: Topology) -> set[Flow]:
    """Every flow the plan allows between the lab's machines, on every path it may take."""
    names = {m.name for m in topo.machines}
    guests = {g.name for g in topo.guests}
    hv = topo.hypervisor.name
    out: set[Flow] = set()
    for a in plan.get("allow", []):
        f = Flow(a["from"], a["to"], int(a["port"]), a["proto"])
        if f.src in names and f.dst in names:
            out.add(f)
            if f.src in guests:
                out.add(Flow(f.src, f.dst, f.port, f.proto, ROUTED))
    for e in plan.get("egress", []):
        if e["from"] in names and e["to"] in names:
            out.add(Flow(e["from"], e["to"], int(e["port"]), e["proto"]))
    for i in plan.get("input", []):
        if i["host"] == hv and i["from"] in names:
            out.add(Flow(i["from"], hv, int(i["port"]), i["proto"]))
    return out


def _guest_sources(topo: Topology, allowed: set[Flow] | None) -> dict[str, list[Machine]]:
    """For each guest, the guests it is probed from (see the module's docstring); every
    other guest when ``allowed`` is None."""
    guests = topo.guests
    if allowed is None:
        return {d.name: [s for s in guests if s.name != d.name] for d in guests}
    partners: dict[str, set[str]] = {g.name: set() for g in guests}
    for f in allowed:
        if f.src in partners and f.dst in partners:
            partners[f.dst].add(f.src)
            partners[f.src].add(f.dst)
    out: dict[str, list[Machine]] = {}
    for d in guests:
        strangers = [s for s in guests if s.name != d.name and s.name not in partners[d.name]]
        keep = partners[d.name] | {s.name for s in strangers[:STRANGERS]}
        out[d.name] = [s for s in guests if s.name in keep]
    return out


def _pairs(topo: Topology, allowed: set[Flow] | None) -> list[tuple[Machine, Machine, str]]:
    guests = topo.guests
    hv, lan, internet, relay = topo.hypervisor, topo.client, topo.internet, topo.relay
    sources = {d: {s.name for s in ss} for d, ss in _guest_sources(topo, allowed).items()}
    into = [
        (s, d, DIRECT)
        for s in (*guests, hv, lan, *((relay,) if relay else ()))
        for d in guests
        if s.name in sources[d.name] or s.kind != "guest"
    ]
    routed = [(s, d, ROUTED) for s in guests for d in guests if s.name in sources[d.name]]
    beyond = [hv, lan, internet, *((relay,) if relay else ())]
    around = [(s, d, DIRECT) for s in guests for d in beyond]
    around += [(lan, hv, DIRECT), *(((lan, relay, DIRECT),) if relay else ())]
    if relay:
        around += [(relay, d, DIRECT) for d in (hv, lan, internet)]
    return into + routed + around


def all_flows(
    topo: Topology, ports: list[dict[str, Any]], allowed: set[Flow] | None = None
) -> list[Flow]:
    """The flows the matrix probes: every path and port between the pairs `_pairs` picks
    (every pair of guests when ``allowed`` is None)."""
    return [
        Flow(s.name, d.name, int(p["port"]), p["proto"], path)
        for s, d, path in _pairs(topo, allowed)
        for p in ports
    ]


def responsible(topo: Topology, mode: Mode, *, strict: bool = False) -> Callable[[Flow], bool]:
    """Whether the filters active in ``mode`` are responsible for a flow.

    The hypervisor's rule sets are responsible for every flow (they see everything that
    crosses the bridge or the host). A guest's own rule set is responsible only for what
    goes into or out of that guest: with the guest firewalls alone, a flow between two
    machines outside the guest network (the LAN or the tunnel to the hypervisor) that is
    open is a `gap`, not a failure, unless ``strict``.
    """
    kinds = {m.name: m.kind for m in topo.machines}

    def guarded(f: Flow) -> bool:
        if strict or mode is not Mode.GUEST:
            return True
        return "guest" in {kinds[f.src], kinds[f.dst]}

    return guarded


@dataclass
class ModeResult:
    results: list[FlowResult]
    sweeps: list[sweep.Sweep]
    seconds: float = 0.0

    @property
    def cpu(self) -> float:
        """Seconds of CPU the probing thread used, every sweep."""
        return sum(s.cpu for s in self.sweeps)

    @property
    def again(self) -> int:
        """Allowed flows that needed the second, patient try."""
        return sum(len(s.outcomes) for s in self.sweeps[1:])

    @property
    def lost(self) -> dict[str, int]:
        """Packets the kernel itself dropped during the last run of a sweep (see sweep)."""
        out: dict[str, int] = {}
        for s in self.sweeps:
            for k, v in s.lost.items():
                out[k] = out.get(k, 0) + v
        return out


def check_mode(
    topo: Topology,
    plan: dict[str, Any],
    ports: list[dict[str, Any]],
    mode: Mode,
    *,
    strict: bool = False,
) -> ModeResult:
    """Probe every flow of the matrix under ``mode``, all at once (see sweep). A flow the
    plan allows that does not answer within BLOCKED_TIMEOUT gets a second, patient try:
    a loaded machine may be slow."""
    started = time.monotonic()
    allowed = allowed_flows(plan, topo)
    by_name = {m.name: m for m in topo.machines}
    flows = all_flows(topo, ports, allowed)
    batch = [
        sweep.Probe(
            by_name[f.src].netns,
            topo.address_for(by_name[f.src], by_name[f.dst]),
            f.port,
            f.proto,
            f.path == ROUTED,
            f in allowed,
        )
        for f in flows
    ]
    watch = topo.namespaces
    first = sweep.run(batch, BLOCKED_TIMEOUT, watch=watch)
    outcomes = list(first.outcomes)
    sweeps = [first]
    again = [i for i, f in enumerate(flows) if f in allowed and outcomes[i] != probes.OPEN]
    if again:
        patient = sweep.run([batch[i] for i in again], ALLOWED_RETRY_TIMEOUT, watch=watch)
        sweeps.append(patient)
        for i, outcome in zip(again, patient.outcomes, strict=True):
            outcomes[i] = outcome
    guarded = responsible(topo, mode, strict=strict)
    results = [
        FlowResult(f, f in allowed, o, guarded(f)) for f, o in zip(flows, outcomes, strict=True)
    ]
    return ModeResult(results, sweeps, time.monotonic() - started)


def table(results: list[FlowResult], topo: Topology, ports: list[dict[str, Any]]) -> str:
    """One block per kind of path. Rows: source -> destination; columns: ports.
    `open`/`-` as expected, `LEAK`/`MISS` not, `gap` outside the active layer's remit."""
    cols = [f"{p['port']}/{p['proto'][0]}" for p in ports]
    kinds = {m.name: m.kind for m in topo.machines}
    index = {r.flow: r for r in results}
    rows: dict[tuple[str, str, str], None] = {}
    for r in results:
        rows.setdefault((r.flow.src, r.flow.dst, r.flow.path), None)
    width = max(7, *(len(c) + 1 for c in cols))

    def cell(r: FlowResult | None) -> str:
        if r is None:
            return "?"
        if r.gap:
            return "gap"
        if r.ok:
            return "open" if r.allowed else "-"
        return "LEAK" if not r.allowed else "MISS"

    lines: list[str] = []
    rowlab = max((len(f"{s} -> {d}") for s, d, _ in rows), default=0) + 1
    for title, wanted in SECTIONS:
        keys = [k for k in rows if wanted(Flow(k[0], k[1], 0, "", k[2]), kinds)]
        if not keys:
            continue
        lines.append(f"-- {title}")
        lines.append("".ljust(rowlab) + "".join(c.rjust(width) for c in cols))
        for src, dst, path in keys:
            cells = [
                cell(index.get(Flow(src, dst, int(p["port"]), p["proto"], path))) for p in ports
            ]
            lines.append(f"{src} -> {dst}".ljust(rowlab) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
