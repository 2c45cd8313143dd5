"""Which machines a deploy touches and in which order.

The order is the plan's `deployOrder` (lib/ computes it from the guests' dependencies):
a list of waves, each a list of machine names that may switch in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from homestack.errors import UserError

STATE_DIR = "/var/lib/microvms"  # microvm.stateDir on every hypervisor


class Kind(Enum):
    """A physical (or cloud) machine, or a MicroVM guest on a hypervisor."""

    HOST = "host"
    GUEST = "guest"


@dataclass(frozen=True)
class HealthCheck:
    """One endpoint a guest's main service answers on, checked from its hypervisor."""

    service: str
    kind: str  # "http" | "tcp"
    address: str
    port: int
    path: str | None
    argv: tuple[str, ...] = ()  # the plan's probe (lib/plan.nix), when it gives one

    @classmethod
    def from_plan(cls, guest: Mapping[str, Any], entry: Mapping[str, Any]) -> HealthCheck:
        kind = str(entry["kind"])
        if kind not in ("http", "tcp"):
            raise UserError(f"plan: guests.{guest['name']}.health: unknown kind {kind!r}")
        return cls(
            service=str(entry.get("service", "")),
            kind=kind,
            address=str(guest["address"]),
            port=int(entry["port"]),
            path=str(entry.get("path") or "/") if kind == "http" else None,
            argv=tuple(str(a) for a in entry.get("argv", ())),
        )

    def describe(self) -> str:
        where = f"{self.address}:{self.port}"
        return f"{self.service} {self.kind}://{where}{self.path or ''}"

    def command(self) -> list[str]:
        """The command the hypervisor runs; exit status 0 means the service answers."""
        if self.argv:
            return list(self.argv)
        if self.kind == "http":
            url = f"http://{self.address}:{self.port}{self.path}"
            return [
                "curl",
                "--fail",
                "--silent",
                "--show-error",
                "--max-time",
                "5",
                "--output",
                "/dev/null",
                url,
            ]
        # bash's /dev/tcp: present on every NixOS system, no netcat flavour to guess.
        return ["timeout", "5", "bash", "-c", f"exec 3<>/dev/tcp/{self.address}/{self.port}"]


@dataclass(frozen=True)
class Machine:
    """What a deploy needs to know about one machine, taken from the plan."""

    name: str
    kind: Kind
    target: str  # ssh destination the commands run on (a guest's: its hypervisor's)
    hypervisor: str | None  # guests only
    guests: tuple[str, ...]  # hypervisors only: the guests it runs
    datasets: tuple[str, ...]  # ZFS datasets a switch of this machine can touch
    health: tuple[HealthCheck, ...]
    engine: str = "microvm"  # the hypervisor's (a guest's: its hypervisor's)

    @property
    def installable(self) -> str:
        """The flake attribute that is built for this machine (relative to the flake)."""
        if self.kind is Kind.HOST or self.engine == "incus":  # an Incus guest switches inside
            return f".#nixosConfigurations.{self.name}.config.system.build.toplevel"
        # A guest is deployed as its microvm.nix runner: the VM's whole system, booted
        # by the hypervisor's microvm@<guest> unit from /var/lib/microvms/<guest>/current.
        return f".#nixosConfigurations.{self.name}.config.microvm.declaredRunner"

    @property
    def current_link(self) -> str:
        """Guests: the runner microvm@<guest> boots next (the hypervisor's switch sets it)."""
        return f"{STATE_DIR}/{self.name}/current"

    @property
    def booted_link(self) -> str:
        """Guests: the runner the running VM was booted from (microvm-set-booted@ sets it)."""
        return f"{STATE_DIR}/{self.name}/booted"

    @property
    def unit(self) -> str:
        return f"microvm@{self.name}.service"

    @classmethod
    def from_plan(cls, plan: Mapping[str, Any], name: str) -> Machine:
        hosts: Mapping[str, Any] = plan.get("hosts", {})
        guests: Mapping[str, Any] = plan.get("guests", {})
        if name in hosts:
            host = hosts[name]
            mine = tuple(g for g in host.get("guests", []) if g in guests)
            ordered = [n for wave in plan.get("deployOrder", []) for n in wave if n in mine]
            datasets = tuple(d for g in mine if (d := _dataset(guests[g])))
            engine = str(host.get("engine") or "microvm")
            if engine == "incus":  # its guests are instances (homestack.deploy.incus)
                mine, datasets, ordered = (), (), []
            return cls(
                name=name,
                kind=Kind.HOST,
                target=str(host["target"]),
                hypervisor=None,
                guests=mine,
                datasets=datasets,
                # A hypervisor's generation carries its guests' runners: their probes
                # decide whether it becomes the boot default.
                health=tuple(
                    HealthCheck.from_plan(guests[g], h)
                    for g in ordered
                    for h in guests[g].get("health", [])
                ),
                engine=engine,
            )
        if name in guests:
            guest = guests[name]
            host_name = str(guest["host"])
            if host_name not in hosts:
                raise UserError(f"plan: guests.{name}.host: no host named {host_name!r}")
            engine = str(hosts[host_name].get("engine") or "microvm")
            # An Incus guest's state is a custom volume, snapshotted by Incus, not a dataset.
            dataset = _dataset(guest) if engine != "incus" else ""
            return cls(
                name=name,
                kind=Kind.GUEST,
                target=str(hosts[host_name]["target"]),
                hypervisor=host_name,
                guests=(),
                datasets=(dataset,) if dataset else (),
                health=tuple(HealthCheck.from_plan(guest, h) for h in guest.get("health", [])),
                engine=engine,
            )
        raise UserError(unknown_machine(plan, name))


def _dataset(guest: Mapping[str, Any]) -> str:
    state = guest.get("state")
    return str(state["dataset"]) if state and state.get("dataset") else ""


def unknown_machine(plan: Mapping[str, Any], name: str) -> str:
    known = sorted([*plan.get("hosts", {}), *plan.get("guests", {})])
    return f"inventory.toml: no host or guest named {name!r} (known: {', '.join(known)})"


def waves(plan: Mapping[str, Any], selected: Sequence[str] = ()) -> list[list[Machine]]:
    """The plan's deployOrder as Machines, keeping only ``selected`` (all when empty)."""
    order: list[list[str]] = [list(w) for w in plan.get("deployOrder", [])]
    everything = [*plan.get("hosts", {}), *plan.get("guests", {})]
    ordered = [n for wave in order for n in wave]
    missing = [n for n in everything if n not in ordered]
    if missing:
        raise UserError(f"plan: deployOrder does not place {', '.join(sorted(missing))}")
    for name in selected:
        if name not in everything:
            raise UserError(unknown_machine(plan, name))
    wanted = set(selected) if selected else set(everything)
    # A guest's runner is part of its hypervisor's system (microvm.vms declares it), so a
    # guest is never deployed without its hypervisor: else the next boot of the
    # hypervisor would put the old runner back.
    guests = plan.get("guests", {})
    wanted |= {str(guests[n]["host"]) for n in wanted if n in guests}
    result = []
    for wave in order:
        chosen = [Machine.from_plan(plan, n) for n in wave if n in wanted]
        if chosen:
            result.append(chosen)
    return result
