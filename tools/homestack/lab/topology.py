"""The lab's machines and wiring, derived from the plan.

Every guest gets a namespace, the hypervisor gets one holding the bridge with the gateway
address, and a client namespace ("lan") plays a laptop on the LAN that routes to the guest
network through the hypervisor. It also plays the home router: behind it an "internet"
namespace stands for every public address, and the hypervisor's default route leads there.
When the plan has a relay, a namespace named after it sits at the far end of the tunnel
(a veth pair carrying the tunnel's interface name and addresses). Names: `<prefix><machine>`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from homestack.errors import UserError

LAN = "lan"
INTERNET = "internet"
# Candidate LAN subnets for the client, private (RFC 1918) as a home LAN is: the plan's
# rules tell the LAN from the internet by that. The first that overlaps no plan network is
# used. The internet stand-in takes a documentation range, which counts as public.
_LAN_CANDIDATES = ("172.31.254.0/24", "10.254.254.0/24", "192.168.254.0/24", "172.30.254.0/24")
_INTERNET_CANDIDATES = ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")
ACME_LINK = "198.51.100.0/24"


def _acme_mode(plan: dict[str, Any]) -> bool:
    return bool((plan.get("certificates") or {}).get("mode") == "acme-dns01")


@dataclass(frozen=True)
class Machine:
    """One namespace of the lab: a guest, the hypervisor, or the LAN client."""

    name: str
    kind: str  # "guest" | "host" | "lan" | "internet" | "relay"
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
    internet: Machine
    internet_network: str
    internet_gateway: str  # the LAN client's address towards the internet namespace
    relay: Machine | None = None
    tunnel_network: str | None = None
    tunnel_interface: str | None = None
    tunnel_gateway: str | None = None  # the hypervisor's tunnel address
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
        lan_net = _first_free(_LAN_CANDIDATES, taken)
        # acme-dns01: the ACME server and the Cloudflare stand-in sit on their own link from
        # the proxy (lab/acme.py, 198.51.100.0/24); the internet stand-in keeps clear of it.
        acme_link = [ipaddress.ip_network(ACME_LINK)] if _acme_mode(plan) else []
        internet_net = _first_free(_INTERNET_CANDIDATES, [*taken, lan_net, *acme_link])
        hosts_list = list(lan_net.hosts())
        internet_hosts = list(internet_net.hosts())
        relay = plan.get("relay")
        if relay and relay["peer"]["host"] != hv_name:
            relay = None
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
        names = {g.name for g in guests} | {hv_name} | ({relay["host"]} if relay else set())
        for taken_name in (LAN, INTERNET):
            if taken_name in names:
                raise UserError(
                    f"tools lab: a machine named {taken_name!r} clashes with the "
                    f"lab's {taken_name} namespace"
                )
        lan_iface = plan["hosts"][hv_name].get("lanInterface") or "lan0"
        return cls(
            prefix=prefix,
            domain=plan["domain"],
            bridge=network["bridge"],
            gateway=network["gateway"],
            network=str(net),
            prefixlen=net.prefixlen,
            hypervisor=Machine(
                name=hv_name, kind="host", netns=prefix + hv_name, address=network["gateway"]
            ),
            guests=guests,
            client=Machine(name=LAN, kind="lan", netns=prefix + LAN, address=str(hosts_list[99])),
            lan_network=str(lan_net),
            lan_gateway=str(hosts_list[0]),
            lan_interface=lan_iface,
            internet=Machine(
                name=INTERNET,
                kind="internet",
                netns=prefix + INTERNET,
                address=str(internet_hosts[99]),
            ),
            internet_network=str(internet_net),
            internet_gateway=str(internet_hosts[0]),
            relay=Machine(
                name=relay["host"],
                kind="relay",
                netns=prefix + relay["host"],
                address=relay["address"],
            )
            if relay
            else None,
            tunnel_network=plan["tunnel"]["cidr"] if relay else None,
            tunnel_interface=relay["interface"] if relay else None,
            tunnel_gateway=relay["peer"]["address"] if relay else None,
            proxy_name=plan.get("proxy"),
            dns_servers=tuple(plan.get("dnsServers") or ()),
        )

    @property
    def machines(self) -> tuple[Machine, ...]:
        """Every namespace's machine: the guests, the hypervisor, the LAN client, the
        internet stand-in and the relay (when the plan has one)."""
        return (
            *self.guests,
            self.hypervisor,
            self.client,
            self.internet,
            *((self.relay,) if self.relay else ()),
        )

    @property
    def outside(self) -> tuple[Machine, ...]:
        """The machines that are not guests."""
        return tuple(m for m in self.machines if m.kind != "guest")

    def address_for(self, src: Machine, dst: Machine) -> str:
        """The address ``src`` reaches ``dst`` at: the hypervisor by its address on the
        source's side (gateway, LAN or tunnel), everyone else by their own."""
        if dst.kind != "host":
            return dst.address
        if src.kind == "lan":
            return self.lan_gateway
        if src.kind == "relay" and self.tunnel_gateway:
            return self.tunnel_gateway
        return self.gateway

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


def _first_free(
    candidates: tuple[str, ...],
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network:
    return next(
        ipaddress.IPv4Network(c)
        for c in candidates
        if not any(ipaddress.ip_network(c).overlaps(t) for t in taken)
    )
