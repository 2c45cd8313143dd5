"""Read, validate and edit inventory.toml.

The validation rules mirror lib/validate.nix (the plan refuses what this refuses, naming the
same key), so a mistake is caught before Nix runs and every problem is listed at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from homestack.errors import CheckFailed, UserError
from homestack.fsutil import atomic_write

SERVICE_PORTS: dict[str, list[tuple[int, str]]] = {
    "pocket-id": [(1411, "tcp")],
    "netbird-server": [
        (8080, "tcp"),
        (33073, "tcp"),
        (10000, "tcp"),
        (33080, "tcp"),
        (3478, "udp"),
    ],
    "caddy": [(80, "tcp"), (443, "tcp")],
    "dnsmasq": [(53, "udp"), (53, "tcp")],
    "postgresql": [(5432, "tcp")],
}

TOP_KEYS = ["domain", "certificates", "users", "networks", "hosts", "guests"]
CERT_KEYS = ["mode", "include_network", "acme_email"]
USER_KEYS = ["admin", "ssh_keys", "age_key"]
GUEST_NET_KEYS = ["cidr", "gateway", "bridge"]
HOST_KEYS = [
    "role", "system", "target", "host_key", "age_key", "lan_interface", "zfs", "wireguard",
    "public_address",
]  # fmt: skip
ZFS_KEYS = ["pool", "host_id"]
WG_KEYS = ["relay", "address", "public_key", "port"]
GUEST_KEYS = [
    "host", "address", "vcpu", "memory", "services", "state_size", "host_key", "age_key",
    "routes", "allow", "databases", "public", "ports", "mac", "tap", "hypervisor",
]  # fmt: skip
ROUTE_KEYS = ["name", "port", "path", "h2c"]
ALLOW_KEYS = ["from", "port", "proto"]
DB_KEYS = ["name", "server"]
PORT_KEYS = ["port", "proto"]
ROLES = ["hypervisor", "relay"]
SYSTEMS = ["x86_64-linux", "aarch64-linux"]
HYPERVISORS = ["cloud-hypervisor", "qemu", "crosvm"]  # with virtiofs, for the state share

_LABEL = r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
_OCTET = r"(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_CIDR = re.compile(r"([0-9.]+)/(0|[1-9]|[12][0-9]|3[0-2])")
_SSH_ED25519 = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+=* ?.*")
_SSH_ANY = re.compile(
    r"(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com)"
    r" [A-Za-z0-9+/]+=* ?.*"
)
_AGE = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_WG = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[a-zA-Z0-9_.-]{1,15}")


def _j(value: Any) -> str:
    """Render a value the way Nix's builtins.toJSON does, for identical messages."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= 65535


def _show_port(value: Any) -> str:
    return str(value) if _is_int(value) else _j(value)


def _full(pattern: re.Pattern[str] | str, value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def _ip(value: Any) -> int | None:
    if not _full(_IPV4, value):
        return None
    return int(ipaddress.IPv4Address(value))


def _cidr(value: Any) -> ipaddress.IPv4Network | None:
    if not isinstance(value, str):
        return None
    m = _CIDR.fullmatch(value)
    if m is None or _ip(m.group(1)) is None:
        return None
    return ipaddress.IPv4Network(value, strict=False)


def _type_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


def mac_for(name: str) -> str:
    """The stable locally administered MAC lib/util.nix derives from a guest name."""
    digest = hashlib.sha256(f"homestack-mac:{name}".encode()).hexdigest()
    return "02:" + ":".join(digest[2 * i : 2 * i + 2] for i in range(5))


def _duplicates(items: Sequence[str]) -> list[str]:
    counts = Counter(items)
    seen: list[str] = []
    for item in items:
        if counts[item] > 1 and item not in seen:
            seen.append(item)
    return seen


class _Checker:
    """Collects problems as "<key>: <what is wrong>", in the order lib/validate.nix finds them."""

    def __init__(self, inv: dict[str, Any]) -> None:
        self.inv = inv
        self.errors: list[str] = []
        hosts = inv.get("hosts")
        guests = inv.get("guests")
        users = inv.get("users")
        self.hosts: dict[str, Any] = hosts if isinstance(hosts, dict) else {}
        self.guests: dict[str, Any] = guests if isinstance(guests, dict) else {}
        self.users: dict[str, Any] = users if isinstance(users, dict) else {}
        networks = inv.get("networks")
        self.networks: dict[str, Any] = networks if isinstance(networks, dict) else {}
        guest_net = self.networks.get("guests")
        self.guest_net: dict[str, Any] = guest_net if isinstance(guest_net, dict) else {}
        self.cidr = _cidr(self.guest_net.get("cidr"))
        tunnel = self.networks.get("tunnel")
        self.tunnel: dict[str, Any] = tunnel if isinstance(tunnel, dict) else {}
        self.tunnel_cidr = _cidr(self.tunnel.get("cidr"))
        self.gateway = _ip(self.guest_net.get("gateway"))

    def add(self, message: str) -> None:
        self.errors.append(message)

    def unknown(self, prefix: str, allowed: list[str], table: dict[str, Any]) -> None:
        for key in sorted(table):
            if key not in allowed:
                self.add(f"{prefix}{key}: unknown key (expected one of: {', '.join(allowed)})")

    def required(self, prefix: str, table: dict[str, Any], keys: list[str]) -> None:
        for key in keys:
            if key not in table:
                self.add(f"{prefix}{key}: missing required key")

    def in_guest_net(self, ip: int) -> bool:
        return self.cidr is not None and ip in range(
            int(self.cidr.network_address), int(self.cidr.network_address) + self.cidr.num_addresses
        )

    def run(self) -> list[str]:
        self.check_top()
        self.check_certs()
        self.check_users()
        self.check_networks()
        host_errors_before = len(self.errors)
        self.check_hosts()
        host_errors = len(self.errors) - host_errors_before
        guest_errors_before = len(self.errors)
        for name in sorted(self.guests):
            self.check_guest(name)
        if host_errors == 0 and len(self.errors) == guest_errors_before:
            self.check_cross()
        return self.errors

    def check_top(self) -> None:
        inv = self.inv
        self.unknown("", TOP_KEYS, inv)
        self.required("", inv, ["domain", "users", "networks", "hosts", "guests"])
        for key in ("networks", "hosts", "guests"):
            if key in inv and not isinstance(inv[key], dict):
                self.add(f"{key}: must be a table, not {_type_of(inv[key])}")
        if "domain" in inv and not _full(rf"{_LABEL}(\.{_LABEL})*", inv["domain"]):
            self.add(f"domain: {_j(inv['domain'])} is not a lowercase DNS name")

    def check_certs(self) -> None:
        certs = self.inv.get("certificates", {})
        if not isinstance(certs, dict):
            self.add(f"certificates: must be a table, not {_type_of(certs)}")
            return
        self.unknown("certificates.", CERT_KEYS, certs)
        mode = certs.get("mode", "private-ca")
        if mode not in ("private-ca", "acme-dns01"):
            self.add(f"certificates.mode: {_j(mode)} is not one of private-ca, acme-dns01")
        if not isinstance(certs.get("include_network", False), bool):
            self.add("certificates.include_network: must be true or false")
        if mode == "acme-dns01" and not isinstance(certs.get("acme_email"), str):
            self.add(
                "certificates.acme_email: missing required key "
                "(acme-dns01 mode needs an e-mail for Let's Encrypt)"
            )

    def check_users(self) -> None:
        users = self.inv.get("users", {})
        if not isinstance(users, dict):
            self.add(f"users: must be a table, not {_type_of(users)}")
        for name in sorted(self.users):
            usr = self.users[name]
            p = f"users.{name}"
            if not isinstance(usr, dict):
                self.add(f"{p}: must be a table, not {_type_of(usr)}")
                continue
            if not _full(_LABEL, name):
                self.add(f"{p}: user name must be lowercase letters, digits and dashes")
            self.unknown(f"{p}.", USER_KEYS, usr)
            if not isinstance(usr.get("admin", False), bool):
                self.add(f"{p}.admin: must be true or false")
            keys = usr.get("ssh_keys", [])
            if not isinstance(keys, list):
                self.add(f"{p}.ssh_keys: must be a list of SSH public keys")
            else:
                for i, key in enumerate(keys):
                    if not _full(_SSH_ANY, key):
                        self.add(f"{p}.ssh_keys[{i}]: not an SSH public key")
            if "age_key" in usr and not _full(_AGE, usr["age_key"]):
                self.add(f"{p}.age_key: {_j(usr['age_key'])} is not an age recipient (age1…)")
        if isinstance(users, dict) and not any(
            isinstance(u, dict) and u.get("admin", False) is True for u in self.users.values()
        ):
            self.add("users: no user has admin = true (someone must be able to log in and decrypt)")

    def check_networks(self) -> None:  # noqa: PLR0912 - mirrors validate.nix
        if not isinstance(self.inv.get("networks"), dict):
            return
        self.unknown("networks.", ["guests", "tunnel"], self.networks)
        net = self.guest_net
        if "guests" not in self.networks:
            self.add("networks.guests: missing required key")
        else:
            self.unknown("networks.guests.", GUEST_NET_KEYS, net)
            self.required("networks.guests.", net, ["cidr", "gateway"])
            if "cidr" in net and self.cidr is None:
                self.add(
                    f"networks.guests.cidr: {_j(net['cidr'])} is not an IPv4 CIDR "
                    "like 192.168.100.0/24"
                )
            if self.cidr is not None:
                address = _ip(net["cidr"].split("/")[0])
                if address != int(self.cidr.network_address):
                    self.add(
                        f"networks.guests.cidr: {net['cidr']} has host bits set "
                        f"(did you mean {self.cidr}?)"
                    )
                if self.cidr.prefixlen > 30:
                    self.add(
                        f"networks.guests.cidr: /{self.cidr.prefixlen} leaves no room for guests"
                    )
            if "gateway" in net and self.gateway is None:
                self.add(f"networks.guests.gateway: {_j(net['gateway'])} is not an IPv4 address")
            if (
                self.gateway is not None
                and self.cidr is not None
                and not self.in_guest_net(self.gateway)
            ):
                self.add(
                    f"networks.guests.gateway: {net['gateway']} is outside "
                    f"networks.guests.cidr {net['cidr']}"
                )
            if "bridge" in net and not _full(_IFNAME, net["bridge"]):
                self.add(
                    f"networks.guests.bridge: {_j(net['bridge'])} is not an interface name "
                    "of at most 15 characters"
                )
        if "tunnel" in self.networks:
            self.unknown("networks.tunnel.", ["cidr"], self.tunnel)
            self.required("networks.tunnel.", self.tunnel, ["cidr"])
            if "cidr" in self.tunnel and self.tunnel_cidr is None:
                self.add(f"networks.tunnel.cidr: {_j(self.tunnel['cidr'])} is not an IPv4 CIDR")
            if (
                self.tunnel_cidr is not None
                and self.cidr is not None
                and self.tunnel_cidr.overlaps(self.cidr)
            ):
                self.add(
                    f"networks.tunnel.cidr: {self.tunnel['cidr']} overlaps "
                    f"networks.guests.cidr {net.get('cidr')}"
                )

    def check_hosts(self) -> None:
        for name in sorted(self.hosts):
            self.check_host(name)
        addresses = [
            h["wireguard"]["address"]
            for _, h in sorted(self.hosts.items())
            if isinstance(h, dict)
            and isinstance(h.get("wireguard"), dict)
            and isinstance(h["wireguard"].get("address"), str)
        ]
        for address in _duplicates(addresses):
            owner = next(
                n
                for n, h in sorted(self.hosts.items())
                if isinstance(h, dict)
                and isinstance(h.get("wireguard"), dict)
                and h["wireguard"].get("address") == address
            )
            self.add(f"hosts.{owner}.wireguard.address: {address} is used twice in networks.tunnel")

    def check_host(self, name: str) -> None:  # noqa: PLR0912 - mirrors validate.nix
        h = self.hosts[name]
        p = f"hosts.{name}"
        if not isinstance(h, dict):
            self.add(f"{p}: must be a table, not {_type_of(h)}")
            return
        role = h.get("role")
        if not _full(_LABEL, name):
            self.add(f"{p}: host name must be lowercase letters, digits and dashes")
        if name in self.guests:
            self.add(f"{p}: the name is also used by guests.{name}")
        self.unknown(f"{p}.", HOST_KEYS, h)
        self.required(f"{p}.", h, ["role", "system", "target"])
        if "role" in h and role not in ROLES:
            self.add(f"{p}.role: {_j(role)} is not one of {', '.join(ROLES)}")
        if "system" in h and h["system"] not in SYSTEMS:
            self.add(f"{p}.system: {_j(h['system'])} is not one of {', '.join(SYSTEMS)}")
        if "target" in h and not (isinstance(h["target"], str) and h["target"]):
            self.add(f"{p}.target: must be an SSH destination like root@host")
        if "host_key" in h and not _full(_SSH_ED25519, h["host_key"]):
            self.add(f"{p}.host_key: not an ssh-ed25519 public key")
        if "age_key" in h and not _full(_AGE, h["age_key"]):
            self.add(f"{p}.age_key: {_j(h['age_key'])} is not an age recipient (age1…)")
        if role == "hypervisor" and "lan_interface" not in h:
            self.add(
                f"{p}.lan_interface: missing required key "
                "(hypervisors NAT the guest network out of it)"
            )
        if "lan_interface" in h and not _full(_IFNAME, h["lan_interface"]):
            self.add(
                f"{p}.lan_interface: {_j(h['lan_interface'])} is not an interface name "
                "of at most 15 characters"
            )
        if role == "hypervisor" and "zfs" not in h:
            self.add(
                f"{p}.zfs: missing required key "
                "(hypervisors keep each guest's state on a ZFS dataset)"
            )
        if role == "relay" and "public_address" not in h:
            self.add(f"{p}.public_address: missing required key (the relay's public IPv4 address)")
        if "public_address" in h and _ip(h["public_address"]) is None:
            self.add(f"{p}.public_address: {_j(h['public_address'])} is not an IPv4 address")
        if "zfs" in h:
            self.check_zfs(p, h["zfs"])
        if "wireguard" in h:
            self.check_wireguard(p, role, h["wireguard"])

    def check_zfs(self, p: str, zfs: Any) -> None:
        if not isinstance(zfs, dict):
            self.add(f"{p}.zfs: must be a table")
            return
        self.unknown(f"{p}.zfs.", ZFS_KEYS, zfs)
        self.required(f"{p}.zfs.", zfs, ["pool", "host_id"])
        if "host_id" in zfs and not _full(r"[0-9a-f]{8}", zfs["host_id"]):
            self.add(
                f"{p}.zfs.host_id: {_j(zfs['host_id'])} must be 8 lowercase hex digits "
                "(head -c4 /dev/urandom | od -An -tx4)"
            )
        if "pool" in zfs and not _full(r"[A-Za-z][A-Za-z0-9_.:-]*", zfs["pool"]):
            self.add(f"{p}.zfs.pool: {_j(zfs['pool'])} is not a ZFS pool name")

    def check_wireguard(self, p: str, role: Any, wg: Any) -> None:
        if not isinstance(wg, dict):
            self.add(f"{p}.wireguard: must be a table")
            return
        self.unknown(f"{p}.wireguard.", WG_KEYS, wg)
        self.required(f"{p}.wireguard.", wg, ["address", "public_key"])
        if "tunnel" not in self.networks:
            self.add(f"{p}.wireguard: needs networks.tunnel.cidr")
        address = _ip(wg.get("address"))
        if "address" in wg and address is None:
            self.add(f"{p}.wireguard.address: {_j(wg['address'])} is not an IPv4 address")
        if (
            address is not None
            and self.tunnel_cidr is not None
            and ipaddress.IPv4Address(address) not in self.tunnel_cidr
        ):
            self.add(
                f"{p}.wireguard.address: {wg['address']} is outside networks.tunnel.cidr "
                f"{self.tunnel['cidr']}"
            )
        if "public_key" in wg and not _full(_WG, wg["public_key"]):
            self.add(
                f"{p}.wireguard.public_key: not a WireGuard public key (44 characters of base64)"
            )
        if "port" in wg and not _is_port(wg["port"]):
            self.add(f"{p}.wireguard.port: {_show_port(wg['port'])} is not a port (1-65535)")
        if role == "relay" and "port" not in wg:
            self.add(f"{p}.wireguard.port: missing required key (the relay listens on it)")
        if "relay" in wg:
            target = self.hosts.get(wg["relay"]) if isinstance(wg["relay"], str) else None
            if not (isinstance(target, dict) and target.get("role") == "relay"):
                self.add(
                    f'{p}.wireguard.relay: {_j(wg["relay"])} is not a host with role = "relay"'
                )
        if role == "hypervisor" and "relay" not in wg:
            self.add(
                f"{p}.wireguard.relay: missing required key (the relay host this hypervisor dials)"
            )

    def ports_of(self, g: dict[str, Any]) -> list[str]:
        services = g.get("services") if isinstance(g.get("services"), list) else []
        ports = [
            f"{port}/{proto}"
            for s in services or []
            if isinstance(s, str)
            for port, proto in SERVICE_PORTS.get(s, [])
        ]
        extra = g.get("ports") if isinstance(g.get("ports"), list) else []
        ports += [
            f"{e.get('port', 0)}/{e.get('proto', 'tcp')}"
            for e in extra or []
            if isinstance(e, dict)
        ]
        return ports

    def known_services(self, g: Any) -> bool:
        """Whether every service of ``g`` is known; port and server checks skip the others,
        so one misspelt service is reported once (as lib/validate.nix does)."""
        return (
            isinstance(g, dict)
            and isinstance(g.get("services"), list)
            and all(isinstance(s, str) and s in SERVICE_PORTS for s in g["services"])
        )

    def pg_or_unknown(self) -> list[str]:
        return [
            n
            for n, g in sorted(self.guests.items())
            if not self.known_services(g) or "postgresql" in g["services"]
        ]

    def pg_servers(self) -> list[str]:
        return [
            n
            for n, g in sorted(self.guests.items())
            if isinstance(g, dict)
            and isinstance(g.get("services"), list)
            and "postgresql" in g["services"]
        ]

    def port_entry(self, q: str, entry: Any, need_proto: bool) -> bool:
        if not isinstance(entry, dict):
            self.add(f'{q}: must be a table like {{ port = 443, proto = "tcp" }}')
            return False
        if "port" not in entry:
            self.add(f"{q}.port: missing required key")
        if "port" in entry and not _is_port(entry["port"]):
            self.add(f"{q}.port: {_show_port(entry['port'])} is not a port (1-65535)")
        if need_proto and "proto" not in entry:
            self.add(f"{q}.proto: missing required key")
        if "proto" in entry and entry["proto"] not in ("tcp", "udp"):
            self.add(f"{q}.proto: {_j(entry['proto'])} is not tcp or udp")
        return True

    def each(self, p: str, value: Any, fn: Callable[[str, Any], None]) -> None:
        if not isinstance(value, list):
            self.add(f"{p}: must be a list")
            return
        for i, entry in enumerate(value):
            fn(f"{p}[{i}]", entry)

    def check_guest(self, name: str) -> None:  # noqa: PLR0912, PLR0915 - mirrors validate.nix
        g = self.guests[name]
        p = f"guests.{name}"
        if not isinstance(g, dict):
            self.add(f"{p}: must be a table, not {_type_of(g)}")
            return
        ip = _ip(g.get("address"))
        host = g.get("host")
        tap = g.get("tap", f"vm-{name}")
        ports = self.ports_of(g)
        known = self.known_services(g)
        shown = ", ".join(ports)
        if not _full(_LABEL, name):
            self.add(f"{p}: guest name must be lowercase letters, digits and dashes")
        self.unknown(f"{p}.", GUEST_KEYS, g)
        self.required(f"{p}.", g, ["host", "address", "vcpu", "memory", "services", "state_size"])
        if "host" in g and not (isinstance(host, str) and host in self.hosts):
            self.add(
                f"{p}.host: {_j(host)} is not a host in the inventory "
                f"(hosts: {', '.join(sorted(self.hosts))})"
            )
        elif isinstance(host, str) and isinstance(self.hosts.get(host), dict):
            role = self.hosts[host].get("role")
            if role != "hypervisor":
                self.add(f"{p}.host: {host} is not a hypervisor (role = {_j(role)})")
        if "address" in g and ip is None:
            self.add(f"{p}.address: {_j(g['address'])} is not an IPv4 address")
        if ip is not None and self.cidr is not None:
            if not self.in_guest_net(ip):
                self.add(
                    f"{p}.address: {g['address']} is outside networks.guests.cidr "
                    f"{self.guest_net['cidr']}"
                )
            elif ip in (int(self.cidr.network_address), int(self.cidr.broadcast_address)):
                self.add(
                    f"{p}.address: {g['address']} is the network or broadcast address of "
                    f"{self.guest_net['cidr']}"
                )
        if ip is not None and ip == self.gateway:
            self.add(f"{p}.address: {g['address']} is the gateway's address")
        if "vcpu" in g and not (_is_int(g["vcpu"]) and 1 <= g["vcpu"] <= 64):
            self.add(f"{p}.vcpu: {_j(g['vcpu'])} must be a whole number from 1 to 64")
        if "memory" in g and not (_is_int(g["memory"]) and g["memory"] >= 128):
            self.add(f"{p}.memory: {_j(g['memory'])} must be a whole number of MiB, at least 128")
        if "state_size" in g and not (_is_int(g["state_size"]) and g["state_size"] >= 16):
            self.add(
                f"{p}.state_size: {_j(g['state_size'])} must be a whole number of MiB, "
                "at least 16 (the guest's SSH host key lives there)"
            )
        if "host_key" in g and not _full(_SSH_ED25519, g["host_key"]):
            self.add(f"{p}.host_key: not an ssh-ed25519 public key")
        if "age_key" in g and not _full(_AGE, g["age_key"]):
            self.add(f"{p}.age_key: {_j(g['age_key'])} is not an age recipient (age1…)")
        if "hypervisor" in g and g["hypervisor"] not in HYPERVISORS:
            self.add(
                f"{p}.hypervisor: {_j(g['hypervisor'])} is not one of {', '.join(HYPERVISORS)}"
            )
        if "mac" in g and not _full(_MAC, g["mac"]):
            self.add(
                f"{p}.mac: {_j(g['mac'])} is not a lowercase MAC address like 02:00:00:00:00:01"
            )
        if "mac" in g and _full(_MAC, g["mac"]) and not _full(r"[0-9a-f][26ae]:.*", g["mac"]):
            self.add(
                f"{p}.mac: {g['mac']} is not a locally administered unicast address "
                "(second hex digit 2, 6, a or e)"
            )
        if not _full(r"[a-zA-Z0-9_.-]+", tap):
            self.add(f"{p}.tap: {_j(tap)} is not an interface name")
        if isinstance(tap, str) and len(tap) > 15:
            self.add(
                f"{p}.tap: {_j(tap)} is longer than 15 characters "
                f"(shorten the guest name or set guests.{name}.tap)"
            )
        services = g.get("services", [])
        if not isinstance(services, list):
            self.add(f"{p}.services: must be a list of service names")
        else:
            for i, s in enumerate(services):
                if not (isinstance(s, str) and s in SERVICE_PORTS):
                    self.add(
                        f"{p}.services[{i}]: {_j(s)} is not a known service "
                        f"({', '.join(sorted(SERVICE_PORTS))})"
                    )

        def port_list(q: str, e: Any) -> None:
            if self.port_entry(q, e, True):
                self.unknown(f"{q}.", PORT_KEYS, e)

        def served(q: str, port: Any, proto: Any) -> None:
            """A route, allow or public entry must name a port this guest's services use."""
            spec = f"{port}/{proto}"
            if known and _is_port(port) and spec not in ports:
                self.add(f"{q}.port: {spec} is not a port of this guest's services ({shown})")

        def public(q: str, e: Any) -> None:
            if self.port_entry(q, e, True):
                self.unknown(f"{q}.", PORT_KEYS, e)
                served(q, e.get("port"), e.get("proto", "tcp"))

        def route(q: str, r: Any) -> None:
            if not isinstance(r, dict):
                self.add(f'{q}: must be a table like {{ name = "id", port = 1411 }}')
                return
            self.unknown(f"{q}.", ROUTE_KEYS, r)
            self.required(f"{q}.", r, ["name", "port"])
            if "name" in r and not _full(_LABEL, r["name"]):
                self.add(f"{q}.name: {_j(r['name'])} is not a DNS label")
            if "port" in r and not _is_port(r["port"]):
                self.add(f"{q}.port: {_show_port(r['port'])} is not a port (1-65535)")
            served(q, r.get("port"), "tcp")
            if "path" in r and not (isinstance(r["path"], str) and r["path"].startswith("/")):
                self.add(f"{q}.path: must start with /")
            if "h2c" in r and not isinstance(r["h2c"], bool):
                self.add(f"{q}.h2c: must be true or false")
            rn = r.get("name")
            if _full(_LABEL, rn) and rn in self.guests and rn != name:
                self.add(f"{q}.name: {rn} clashes with guest {rn} (its DNS name)")

        sources = ["lan", "guests", *self.guests, *self.hosts]

        def allow(q: str, a: Any) -> None:
            if not isinstance(a, dict):
                self.add(
                    f'{q}: must be a table like {{ from = ["lan"], port = 443, proto = "tcp" }}'
                )
                return
            self.unknown(f"{q}.", ALLOW_KEYS, a)
            self.port_entry(q, a, False)
            self.required(f"{q}.", a, ["from"])
            if "from" in a and not isinstance(a["from"], list):
                self.add(f"{q}.from: must be a list of sources")
            elif "from" in a:
                for i, s in enumerate(a["from"]):
                    if not (isinstance(s, str) and s in sources):
                        self.add(
                            f'{q}.from[{i}]: {_j(s)} is not a guest, a host, "guests" or "lan"'
                        )
            served(q, a.get("port"), a.get("proto", "tcp"))

        def database(q: str, d: Any) -> None:
            if not isinstance(d, dict):
                self.add(f'{q}: must be a table like {{ name = "app", server = "db" }}')
                return
            self.unknown(f"{q}.", DB_KEYS, d)
            self.required(f"{q}.", d, ["name", "server"])
            if "name" in d and not _full(r"[a-z_][a-z0-9_]{0,62}", d["name"]):
                self.add(
                    f"{q}.name: {_j(d['name'])} is not a PostgreSQL identifier "
                    "(lowercase letters, digits, _)"
                )
            servers = self.pg_servers()
            if "server" in d and d["server"] not in self.pg_or_unknown():
                self.add(
                    f"{q}.server: {_j(d['server'])} is not a guest running postgresql "
                    f"({', '.join(servers)})"
                )
            if d.get("server") == name:
                self.add(f"{q}.server: a guest cannot own a database on itself through the network")

        if "ports" in g:
            self.each(f"{p}.ports", g["ports"], port_list)
        if "public" in g:
            self.each(f"{p}.public", g["public"], public)
        if "routes" in g:
            self.each(f"{p}.routes", g["routes"], route)
        if "allow" in g:
            self.each(f"{p}.allow", g["allow"], allow)
        if "databases" in g:
            self.each(f"{p}.databases", g["databases"], database)

    def check_cross(self) -> None:
        guests = sorted(self.guests)
        addresses = [(n, self.guests[n]["address"]) for n in guests]
        for address in _duplicates([a for _, a in addresses]):
            owners = [n for n, a in addresses if a == address]
            self.add(
                f"guests.{owners[1]}.address: {address} is also the address of guests.{owners[0]}"
            )
        macs = [(n, self.guests[n].get("mac", mac_for(n))) for n in guests]
        for mac in _duplicates([m for _, m in macs]):
            owners = [n for n, m in macs if m == mac]
            self.add(f"guests.{owners[1]}.mac: {mac} is also the MAC of guests.{owners[0]}")
        taps = [(n, self.guests[n].get("tap", f"vm-{n}")) for n in guests]
        for tap in _duplicates([t for _, t in taps]):
            owners = [n for n, t in taps if t == tap]
            self.add(f"guests.{owners[1]}.tap: {tap} is also the tap of guests.{owners[0]}")
        routes: dict[str, list[tuple[str, str]]] = {}
        for n in guests:
            for r in self.guests[n].get("routes", []):
                routes.setdefault(r["name"], []).append((n, r.get("path", "/")))
        for rn in sorted(routes):
            owners = list(dict.fromkeys(g for g, _ in routes[rn]))
            if len(owners) > 1:
                self.add(
                    f"guests.{owners[1]}.routes: route name {rn} is already served by "
                    f"guests.{owners[0]}"
                )
            for path in _duplicates([pa for _, pa in routes[rn]]) if len(owners) == 1 else []:
                self.add(f"guests.{owners[0]}.routes: route {rn} path {path} is listed twice")
        dbs = [(n, d["name"]) for n in guests for d in self.guests[n].get("databases", [])]
        for db in _duplicates([d for _, d in dbs]):
            owners = [n for n, d in dbs if d == db]
            self.add(
                f"guests.{owners[1]}.databases: database {db} is also owned by guests.{owners[0]}"
            )


def validate(inv: dict[str, Any]) -> list[str]:
    """Every problem in a parsed inventory, each "<key>: <what is wrong>"; [] if valid."""
    return _Checker(inv).run()


def find_inventory(path: Path | None = None) -> Path:
    """The inventory to use: ``path``, $HOMESTACK_INVENTORY, or inventory.toml here or above."""
    if path is not None:
        return Path(path)
    env = os.environ.get("HOMESTACK_INVENTORY")
    if env:
        return Path(env)
    here = Path.cwd()
    for directory in (here, *here.parents):
        candidate = directory / "inventory.toml"
        if candidate.is_file():
            return candidate
    return here / "inventory.toml"


def read_inventory(path: Path) -> dict[str, Any]:
    """Parse the TOML, with a one-line error naming the file on failure."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such inventory file") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise UserError(f"{path}: cannot read the inventory: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc


def check_inventory(path: Path) -> list[str]:
    """Problems of the inventory at ``path``, each "<file>: <key>: <what is wrong>"."""
    inv = read_inventory(path)
    return [f"{Path(path).name}: {e}" for e in validate(inv)]


def load_inventory(path: Path) -> dict[str, Any]:
    """The parsed inventory; raises CheckFailed listing every problem."""
    inv = read_inventory(path)
    errors = validate(inv)
    if errors:
        raise CheckFailed(
            f"{path}: {len(errors)} problem(s)", [f"{Path(path).name}: {e}" for e in errors]
        )
    return inv


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _set_in_text(text: str, keys: Sequence[str], value: Any) -> str | None:
    """Edit ``text`` in place, keeping comments: replace ``key = …`` in the right table,
    or add it at the end of that table. None when the layout is not one we can edit."""
    *table, leaf = keys
    header = "[" + ".".join(table) + "]" if table else None
    lines = text.splitlines(keepends=True)
    start = 0
    if header is not None:
        for i, line in enumerate(lines):
            if line.strip() == header:
                start = i + 1
                break
        else:
            return None
    end = len(lines)
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith("["):
            end = i
            break
    line_re = re.compile(rf"^(\s*){re.escape(leaf)}\s*=\s*")
    rendered = f"{leaf} = {_toml_value(value)}\n"
    for i in range(start, end):
        if line_re.match(lines[i]):
            old = lines[i]
            # Only single-line values are replaced; a comment after the value is kept.
            comment = ""
            try:
                tomllib.loads(old)
            except tomllib.TOMLDecodeError:
                return None
            m = re.search(r"\s#[^\"']*$", old.rstrip("\n"))
            if m:
                comment = m.group(0)
            lines[i] = f"{leaf} = {_toml_value(value)}{comment}\n"
            return "".join(lines)
    insert = end
    # Before the blank lines and comments that introduce the next table.
    while insert > start and (
        not lines[insert - 1].strip() or lines[insert - 1].lstrip().startswith("#")
    ):
        insert -= 1
    lines.insert(insert, rendered)
    return "".join(lines)


def set_inventory_value(path: Path, keys: Sequence[str], value: Any) -> None:
    """Set ``keys`` (e.g. ["hosts", "homelab", "host_key"]) to ``value``, atomically.

    Comments and layout are kept when the key's table is written as a ``[table]`` header;
    otherwise the file is rewritten with tomli-w (valid TOML, comments lost)."""
    path = Path(path)
    text = path.read_text()
    data = tomllib.loads(text)
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"{path}: {'.'.join(keys)}: {key} is not a table")
    node[keys[-1]] = value
    edited = _set_in_text(text, keys, value)
    if edited is not None:
        try:
            if tomllib.loads(edited) == data:
                atomic_write(path, edited.encode(), mode=path.stat().st_mode & 0o777)
                return
        except tomllib.TOMLDecodeError:
            pass
    atomic_write(path, tomli_w.dumps(data).encode(), mode=path.stat().st_mode & 0o777)
