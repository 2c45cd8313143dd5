"""Loading and removing the rendered nftables rule sets, so `test` can check each layer alone.

A rule set is loaded as the rendered text behind one lab line pair (`add table`, `delete
table`) that makes loading idempotent; it is removed by deleting the tables it defines.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any

from homestack.lab.topology import Topology
from homestack.process import Runner

_TABLE = re.compile(r"^\s*table\s+(?P<family>[a-z0-9]+)\s+(?P<name>[A-Za-z0-9_.-]+)\s*\{", re.M)
_FILTER_HOOK = re.compile(r"type\s+filter\s+hook\s+(?P<hook>[a-z]+)")


class Mode(Enum):
    """Which filters are loaded: the guests' own, the hypervisor's (bridge filter and host
    tables; `BRIDGE` keeps its old name), or both."""

    GUEST = "guest"
    BRIDGE = "bridge"
    BOTH = "both"
    NONE = "none"

    @property
    def guests_on(self) -> bool:
        return self in {Mode.GUEST, Mode.BOTH}

    @property
    def bridge_on(self) -> bool:
        return self in {Mode.BRIDGE, Mode.BOTH}


@dataclass(frozen=True)
class Ruleset:
    netns: str
    text: str
    is_bridge: bool

    @property
    def tables(self) -> list[tuple[str, str]]:
        return [(m["family"], m["name"]) for m in _TABLE.finditer(self.text)]

    def filter_hooks(self) -> set[tuple[str, str]]:
        """(family, hook) of every filter chain, e.g. ("bridge", "forward")."""
        hooks = set()
        family = ""
        for line in self.text.splitlines():
            table = _TABLE.match(line)
            if table:
                family = table["family"]
            hook = _FILTER_HOOK.search(line)
            if hook:
                hooks.add((family, hook["hook"]))
        return hooks

    def removal(self) -> str:
        # `add` first so deleting a table that is not loaded is not an error.
        return "".join(f"add table {f} {n}\ndelete table {f} {n}\n" for f, n in self.tables)


def rulesets(plan: dict[str, Any], topo: Topology) -> list[Ruleset]:
    """Each guest's rule set, and the hypervisor's: its bridge filter and its host rules."""
    artifacts = plan["artifacts"]
    guest_rules: dict[str, str] = artifacts.get("nftables", {})
    out = [
        Ruleset(g.netns, guest_rules[g.name], False) for g in topo.guests if g.name in guest_rules
    ]
    hv = topo.hypervisor.name
    bridge = (artifacts.get("bridgeNftablesByHost") or {}).get(hv) or artifacts.get(
        "bridgeNftables"
    )
    host = (artifacts.get("hostNftables") or {}).get(hv)
    hv_text = "\n".join(str(t) for t in (bridge, host) if t)
    if hv_text:
        out.append(Ruleset(topo.hypervisor.netns, hv_text, True))
    return out


def apply_mode(runner: Runner, sets: list[Ruleset], mode: Mode) -> None:
    """Load or remove each rule set so that exactly ``mode``'s filters are active."""

    def one(rs: Ruleset) -> None:
        on = mode.bridge_on if rs.is_bridge else mode.guests_on
        script = rs.removal() + (rs.text if on else "")
        runner.run(["ip", "netns", "exec", rs.netns, "nft", "-f", "-"], check=True, input=script)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, sets))
