"""The lab's machines and wiring, derived from the plan.

Every guest gets a namespace, the hypervisor gets one holding the bridge with the gateway
address, and a client namespace ("lan") plays a laptop on the LAN that routes to the guest
network through the hypervisor. Names: `<prefix><machine>`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from homestack.errors import UserError

LAN = "lan"
# Candidate LAN subnets for the client; the first that overlaps no plan network is used.
_LAN_CANDIDATES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "172.31.254.0/24")


@dataclass(frozen=True)
class Machine:
    """One namespace of the lab: a guest, the hypervisor, or the LAN client."""

    name: str
    kind: str  # "guest" | "host" | "lan"
    netns: str
    address: str
    interface: str = "eth0"
    mac: str | None = None
    tap: str | None = None
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """The lab's namespaces, addresses and links."""

    prefix: str
    domain: str
    bridge: str
    gateway: str
    network: str
    prefixlen: int
    hypervisor: Machine
    guests: tuple[Machine, ...]
    client: Machine
    lan_network: str
    lan_gateway: str
    lan_interface: str
    proxy_name: str | None = None
    dns_servers: tuple[str, ...] = ()

    @classmethod
    def from_plan(cls, plan: dict[str, Any], prefix: str) -> Topology:
        network = plan["network"]
        hypervisors = sorted(
            name
            for name, host in plan["hosts"].items()
            if host.get("role") == "hypervisor" and host.get("guests")
        )
        if len(hypervisors) != 1:
            raise UserError(
                "tools lab: the lab models one hypervisor with guests; the plan has "
                f"{len(hypervisors)} ({', '.join(hypervisors) or 'none'})"
            )
        hv_name = hypervisors[0]
        net = ipaddress.ip_network(network["cidr"], strict=False)
        taken = [net]
        if plan.get("tunnel"):
            taken.append(ipaddress.ip_network(plan["tunnel"]["cidr"], strict=False))
        lan_net = next(
            ipaddress.ip_network(c)
            for c in _LAN_CANDIDATES
            if not any(ipaddress.ip_network(c).overlaps(t) for t in taken)
        )
        hosts_list = list(lan_net.hosts())
        guests = tuple(
            Machine(
                name=name,
                kind="guest",
                netns=prefix + name,
                address=guest["address"],
                mac=guest["mac"],
                tap=guest["tap"],
                services=tuple(guest.get("services", ())),
            )
            for name, guest in sorted(plan["guests"].items())
            if guest["host"] == hv_name
        )
        if LAN in {g.name for g in guests} or hv_name == LAN:
            raise UserError(f"tools lab: a machine named {LAN!r} clashes with the LAN client")
        lan_iface = plan["hosts"][hv_name].get("lanInterface") or "lan0"
        return cls(
            prefix=prefix,
            domain=plan["domain"],
            bridge=network["bridge"],
            gateway=network["gateway"],
            network=str(net),
            prefixlen=net.prefixlen,
            hypervisor=Machine(name=hv_name, kind="host", netns=prefix + hv_name,
                               address=network["gateway"]),
            guests=guests,
            client=Machine(name=LAN, kind="lan", netns=prefix + LAN, address=str(hosts_list[99])),
            lan_network=str(lan_net),
            lan_gateway=str(hosts_list[0]),
            lan_interface=lan_iface,
            proxy_name=plan.get("proxy"),
            dns_servers=tuple(plan.get("dnsServers") or ()),
        )

    @property
    def machines(self) -> tuple[Machine, ...]:
        """Every probe source: the guests, the hypervisor and the LAN client."""
        return (*self.guests, self.hypervisor, self.client)

    @property
    def namespaces(self) -> list[str]:
        return [m.netns for m in self.machines]

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(name)

    def guest_with(self, service: str) -> Machine | None:
        return next((g for g in self.guests if service in g.services), None)

    @property
    def proxy(self) -> Machine | None:
        """The guest running Caddy: the plan's `proxy`, else the guest with the service."""
        named = next((g for g in self.guests if g.name == self.proxy_name), None)
        return named or self.guest_with("caddy")

    @property
    def dns_server(self) -> str | None:
        """The address LAN clients ask: the plan's first DNS server, else dnsmasq's guest."""
        if self.dns_servers:
            return self.dns_servers[0]
        guest = self.guest_with("dnsmasq")
        return guest.address if guest else None
