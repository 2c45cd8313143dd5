"""Regenerate tests/inventories/bad/: the example inventory with one mistake each.

Each case names a key lib must blame; `expected.json` records lib's whole list of
problems for every file, which the tests compare line for line with `tools inventory check`
and with the Nix plan. Review the printed lists before committing a regenerated corpus.
Run from anywhere: python3 tests/inventories/make_bad.py
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

HERE = Path(__file__).resolve().parent
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN2yUVpUvg2k0jgI1KbBGzSo+Di7dxRZhOgxblmzCL8b"
REPO = HERE.parent.parent
EXAMPLE = HERE.parent / "example" / "inventory.toml"  # the frozen example, not the live file

Inv = dict[str, Any]


@dataclass(frozen=True)
class Text:
    """A mistake made in the file's text, where TOML itself is the problem."""

    edit: Callable[[str], str]


def mac_for(name: str) -> str:
    digest = hashlib.sha256(f"homestack-mac:{name}".encode()).hexdigest()
    return "02:" + ":".join(digest[2 * i : 2 * i + 2] for i in range(5))


def guest(inv: Inv, name: str) -> Inv:
    g: Inv = inv["guests"][name]
    return g


def host(inv: Inv, name: str) -> Inv:
    h: Inv = inv["hosts"][name]
    return h


def new_guest(inv: Inv, name: str, services: list[str] | None = None) -> None:
    inv["guests"][name] = {
        "host": "homelab", "address": "192.168.100.30", "vcpu": 1, "memory": 256,
        "services": services or [], "state_size": 256,
    }  # fmt: skip


def add_host(inv: Inv, name: str, **fields: Any) -> None:
    inv["hosts"][name] = fields


def drop(d: Inv, key: str) -> None:
    del d[key]


def without_relay(inv: Inv) -> None:
    drop(inv["hosts"], "cloud-relay")
    drop(host(inv, "homelab"), "wireguard")


def replace_line(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


CASES: dict[str, tuple[str, Callable[[Inv], Any] | Text]] = {
    "address-not-ip": (
        "guests.db.address",
        lambda i: guest(i, "db").update(address="192.168.100.300"),
    ),
    "address-outside-subnet": (
        "guests.db.address",
        lambda i: guest(i, "db").update(address="192.168.101.5"),
    ),
    "address-duplicate": (
        "guests.vpn.address",
        lambda i: guest(i, "vpn").update(address="192.168.100.10"),
    ),
    "address-is-gateway": (
        "guests.proxy.address",
        lambda i: guest(i, "proxy").update(address="192.168.100.1"),
    ),
    "address-is-broadcast": (
        "guests.db.address",
        lambda i: guest(i, "db").update(address="192.168.100.255"),
    ),
    "mac-duplicate": ("guests.vpn.mac", lambda i: guest(i, "vpn").update(mac=mac_for("auth"))),
    "mac-not-local": ("guests.db.mac", lambda i: guest(i, "db").update(mac="00:11:22:33:44:55")),
    "mac-malformed": ("guests.db.mac", lambda i: guest(i, "db").update(mac="02:11:22:33:44")),
    "host-unknown": ("guests.db.host", lambda i: guest(i, "db").update(host="homelab2")),
    "host-not-hypervisor": ("guests.db.host", lambda i: guest(i, "db").update(host="cloud-relay")),
    "route-name-clash": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn")["routes"].append({"name": "id", "port": 8080}),
    ),
    "route-name-is-guest": (
        "guests.auth.routes[0].name",
        lambda i: guest(i, "auth")["routes"][0].update(name="db"),
    ),
    "route-path-twice": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn")["routes"].append(
            {"name": "vpn", "path": "/api/*", "port": 33073}
        ),
    ),
    "route-port-range": (
        "guests.auth.routes[0].port",
        lambda i: guest(i, "auth")["routes"][0].update(port=70000),
    ),
    "route-port-not-served": (
        "guests.auth.routes[0].port",
        lambda i: guest(i, "auth")["routes"][0].update(port=8080),
    ),
    "route-path-relative": (
        "guests.vpn.routes[1].path",
        lambda i: guest(i, "vpn")["routes"][1].update(path="api"),
    ),
    "tap-too-long": ("guests.auth.tap", lambda i: guest(i, "auth").update(tap="vm-authentication")),
    "tap-too-long-from-name": (
        "guests.authentication-x.tap",
        lambda i: new_guest(i, "authentication-x"),
    ),
    "tap-duplicate": ("guests.vpn.tap", lambda i: guest(i, "vpn").update(tap="vm-auth")),
    "allow-port-zero": (
        "guests.proxy.allow[0].port",
        lambda i: guest(i, "proxy")["allow"][0].update(port=0),
    ),
    "allow-proto-icmp": (
        "guests.proxy.allow[0].proto",
        lambda i: guest(i, "proxy")["allow"][0].update(proto="icmp"),
    ),
    "allow-unknown-source": (
        "guests.proxy.allow[0].from[0]",
        lambda i: guest(i, "proxy")["allow"][0].update({"from": ["dbx"]}),
    ),
    "allow-port-not-served": (
        "guests.proxy.allow[0].port",
        lambda i: guest(i, "proxy")["allow"][0].update(port=8443),
    ),
    "public-port-not-served": (
        "guests.proxy.public[0].port",
        lambda i: guest(i, "proxy")["public"][0].update(port=8443),
    ),
    "missing-memory": ("guests.db.memory", lambda i: guest(i, "db").pop("memory")),
    "missing-state-size": ("guests.db.state_size", lambda i: guest(i, "db").pop("state_size")),
    "state-size-zero": ("guests.db.state_size", lambda i: guest(i, "db").update(state_size=0)),
    "hypervisor-without-zfs": ("hosts.homelab.zfs", lambda i: i["hosts"]["homelab"].pop("zfs")),
    "missing-domain": ("domain", lambda i: i.pop("domain")),
    "missing-gateway": (
        "networks.guests.gateway",
        lambda i: i["networks"]["guests"].pop("gateway"),
    ),
    "gateway-outside": (
        "networks.guests.gateway",
        lambda i: i["networks"]["guests"].update(gateway="10.0.0.1"),
    ),
    "cidr-prefix-33": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="192.168.100.0/33"),
    ),
    "cidr-host-bits": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="192.168.100.7/24"),
    ),
    "bridge-name-long": (
        "networks.guests.bridge",
        lambda i: i["networks"]["guests"].update(bridge="br-guests-network"),
    ),
    "tunnel-overlap": (
        "networks.tunnel.cidr",
        lambda i: i["networks"]["tunnel"].update(cidr="192.168.100.128/25"),
    ),
    "unknown-guest-key": (
        "guests.db.adress",
        lambda i: guest(i, "db").update(adress="192.168.100.21"),
    ),
    "unknown-top-key": ("gusts", lambda i: i.update(gusts={})),
    "unknown-service": (
        "guests.db.services[0]",
        lambda i: guest(i, "db").update(services=["postgres"]),
    ),
    "database-server-not-postgres": (
        "guests.auth.databases[0].server",
        lambda i: guest(i, "auth")["databases"][0].update(server="proxy"),
    ),
    "database-duplicate": (
        "guests.vpn.databases",
        lambda i: guest(i, "vpn")["databases"][0].update(name="pocketid"),
    ),
    "database-bad-name": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth")["databases"][0].update(name="Pocket-ID"),
    ),
    "vcpu-zero": ("guests.db.vcpu", lambda i: guest(i, "db").update(vcpu=0)),
    "memory-string": ("guests.db.memory", lambda i: guest(i, "db").update(memory="2G")),
    "user-bad-age-key": (
        "users.alice.age_key",
        lambda i: i["users"]["alice"].update(age_key="age1xyz"),
    ),
    "user-bad-ssh-key": (
        "users.alice.ssh_keys[0]",
        lambda i: i["users"]["alice"].update(ssh_keys=["ssh-ed25519"]),
    ),
    "no-admin": ("users", lambda i: i["users"]["alice"].update(admin=False)),
    "host-bad-role": ("hosts.homelab.role", lambda i: i["hosts"]["homelab"].update(role="server")),
    "host-bad-system": (
        "hosts.homelab.system",
        lambda i: i["hosts"]["homelab"].update(system="x86_64-darwin"),
    ),
    "host-bad-host-id": (
        "hosts.homelab.zfs.host_id",
        lambda i: i["hosts"]["homelab"]["zfs"].update(host_id="xyz"),
    ),
    "host-missing-lan-interface": (
        "hosts.homelab.lan_interface",
        lambda i: i["hosts"]["homelab"].pop("lan_interface"),
    ),
    "relay-missing-public-address": (
        "hosts.cloud-relay.public_address",
        lambda i: i["hosts"]["cloud-relay"].pop("public_address"),
    ),
    "wireguard-relay-not-relay": (
        "hosts.homelab.wireguard.relay",
        lambda i: i["hosts"]["homelab"]["wireguard"].update(relay="homelab"),
    ),
    "wireguard-address-outside": (
        "hosts.homelab.wireguard.address",
        lambda i: i["hosts"]["homelab"]["wireguard"].update(address="10.98.0.2"),
    ),
    "wireguard-port-range": (
        "hosts.cloud-relay.wireguard.port",
        lambda i: i["hosts"]["cloud-relay"]["wireguard"].update(port=99999),
    ),
    "wireguard-bad-key": (
        "hosts.cloud-relay.wireguard.public_key",
        lambda i: i["hosts"]["cloud-relay"]["wireguard"].update(public_key="not-a-key"),
    ),
    "cert-mode-unknown": (
        "certificates.mode",
        lambda i: i["certificates"].update(mode="letsencrypt"),
    ),
    "acme-without-email": (
        "certificates.acme_email",
        lambda i: i["certificates"].update(mode="acme-dns01"),
    ),
    "domain-uppercase": ("domain", lambda i: i.update(domain="Home.Arpa")),
    "guests-not-table": ("guests", lambda i: i.update(guests="auth,db")),
    # --- Strings that reach a rendered file or a command line: whitelists ---------------
    "db-name-postgres": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth").update(databases=[{"name": "postgres", "server": "db"}]),
    ),
    "db-name-all": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth").update(databases=[{"name": "all", "server": "db"}]),
    ),
    "db-name-sameuser": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth").update(databases=[{"name": "sameuser", "server": "db"}]),
    ),
    "db-name-pg-prefix": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth").update(databases=[{"name": "pg_auth", "server": "db"}]),
    ),
    "db-name-quote": (
        "guests.auth.databases[0].name",
        lambda i: guest(i, "auth").update(databases=[{"name": 'a"b', "server": "db"}]),
    ),
    "route-path-newline": (
        "guests.vpn.routes[1].path",
        lambda i: guest(i, "vpn")["routes"][1].update(path="/api/*\n}\nevil.example {"),
    ),
    "route-path-space": (
        "guests.vpn.routes[1].path",
        lambda i: guest(i, "vpn")["routes"][1].update(path="/api/* respond 200"),
    ),
    "route-path-brace": (
        "guests.vpn.routes[1].path",
        lambda i: guest(i, "vpn")["routes"][1].update(path="/api/}"),
    ),
    "route-path-quote": (
        "guests.vpn.routes[1].path",
        lambda i: guest(i, "vpn")["routes"][1].update(path='/api/"x'),
    ),
    "route-name-dot": (
        "guests.auth.routes[0].name",
        lambda i: guest(i, "auth")["routes"][0].update(name="id.evil"),
    ),
    "acme-email-newline": (
        "certificates.acme_email",
        lambda i: i["certificates"].update(mode="acme-dns01", acme_email="a@b.example\nx"),
    ),
    "acme-under-public-suffix": (
        "certificates.mode",
        lambda i: i["certificates"].update(mode="acme-dns01", acme_email="admin@example.com"),
    ),
    "acme-email-not-email": (
        "certificates.acme_email",
        lambda i: i["certificates"].update(mode="acme-dns01", acme_email="admin"),
    ),
    "ssh-key-two-lines": (
        "users.alice.ssh_keys[0]",
        lambda i: i["users"]["alice"].update(ssh_keys=["KEY a\nKEY b"]),
    ),
    "host-key-newline": (
        "hosts.homelab.host_key",
        lambda i: host(i, "homelab").update(host_key="KEY root@homelab\nKEY evil"),
    ),
    "host-key-rsa": (
        "guests.db.host_key",
        lambda i: guest(i, "db").update(host_key="ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 db"),
    ),
    "target-option": (
        "hosts.homelab.target",
        lambda i: host(i, "homelab").update(target="-oProxyCommand=touch /tmp/pwned"),
    ),
    "target-shell": (
        "hosts.cloud-relay.target",
        lambda i: host(i, "cloud-relay").update(target="root@203.0.113.10; rm -rf /"),
    ),
    "lan-interface-dotdot": (
        "hosts.homelab.lan_interface",
        lambda i: host(i, "homelab").update(lan_interface=".."),
    ),
    "bridge-dot": ("networks.guests.bridge", lambda i: i["networks"]["guests"].update(bridge=".")),
    "bridge-lo": ("networks.guests.bridge", lambda i: i["networks"]["guests"].update(bridge="lo")),
    "tap-is-bridge": ("guests.db.tap", lambda i: guest(i, "db").update(tap="br-guests")),
    "tap-is-lan": ("guests.db.tap", lambda i: guest(i, "db").update(tap="enp1s0")),
    "tap-all": ("guests.db.tap", lambda i: guest(i, "db").update(tap="all")),
    "lan-interface-is-bridge": (
        "hosts.homelab.lan_interface",
        lambda i: host(i, "homelab").update(lan_interface="br-guests"),
    ),
    "zfs-pool-shell": (
        "hosts.homelab.zfs.pool",
        lambda i: host(i, "homelab")["zfs"].update(pool="tank; zfs destroy -r tank"),
    ),
    "zfs-pool-reserved": (
        "hosts.homelab.zfs.pool",
        lambda i: host(i, "homelab")["zfs"].update(pool="mirror"),
    ),
    "domain-newline": ("domain", lambda i: i.update(domain="home.arpa\nlocal=/evil/")),
    "allow-source-newline": (
        "guests.proxy.allow[0].from[0]",
        lambda i: guest(i, "proxy")["allow"][0].update(**{"from": ["lan\nx"]}),
    ),
    "egress-to-moon": (
        "guests.auth.egress[0].to",
        lambda i: guest(i, "auth").update(egress=[{"to": "moon", "port": 443}]),
    ),
    "egress-without-port": (
        "guests.auth.egress[0].port",
        lambda i: guest(i, "auth").update(egress=[{"to": "internet"}]),
    ),
    # --- Reserved words -----------------------------------------------------------------
    "guest-named-lan": ("guests.lan", lambda i: i["guests"].update(lan=i["guests"].pop("db"))),
    "guest-named-guests": (
        "guests.guests",
        lambda i: new_guest(i, "guests"),
    ),
    "guest-named-internet": ("guests.internet", lambda i: new_guest(i, "internet")),
    "host-named-lan": (
        "hosts.lan",
        lambda i: add_host(
            i,
            "lan",
            role="hypervisor",
            system="x86_64-linux",
            target="root@lan",
            lan_interface="eth0",
            zfs={"pool": "tank", "host_id": "01020304"},
        ),
    ),
    "user-named-root": (
        "users.root",
        lambda i: i["users"].update(root={"admin": False, "ssh_keys": ["KEY"]}),
    ),
    "user-named-postgres": (
        "users.postgres",
        lambda i: i["users"].update(postgres={"ssh_keys": ["KEY"]}),
    ),
    "user-systemd-prefix": (
        "users.systemd-network",
        lambda i: i["users"].update(**{"systemd-network": {"ssh_keys": ["KEY"]}}),
    ),
    "route-name-is-host": (
        "guests.auth.routes[0].name",
        lambda i: guest(i, "auth")["routes"][0].update(name="homelab"),
    ),
    "guest-name-too-long": ("guests." + "a" * 64, lambda i: new_guest(i, "a" * 64)),
    "admin-without-ssh-key": (
        "users",
        lambda i: i["users"]["alice"].update(ssh_keys=[]),
    ),
    # --- Addresses ----------------------------------------------------------------------
    "gateway-is-network": (
        "networks.guests.gateway",
        lambda i: i["networks"]["guests"].update(gateway="192.168.100.0"),
    ),
    "gateway-is-broadcast": (
        "networks.guests.gateway",
        lambda i: i["networks"]["guests"].update(gateway="192.168.100.255"),
    ),
    "cidr-everything": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="0.0.0.0/0"),
    ),
    "cidr-loopback": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="127.0.0.0/24", gateway="127.0.0.1"),
    ),
    "cidr-multicast": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="224.1.0.0/24", gateway="224.1.0.1"),
    ),
    "cidr-link-local": (
        "networks.guests.cidr",
        lambda i: i["networks"]["guests"].update(cidr="169.254.7.0/24", gateway="169.254.7.1"),
    ),
    "tunnel-cidr-host-bits": (
        "networks.tunnel.cidr",
        lambda i: i["networks"]["tunnel"].update(cidr="10.99.0.5/24"),
    ),
    "tunnel-cidr-31": (
        "networks.tunnel.cidr",
        lambda i: i["networks"]["tunnel"].update(cidr="10.99.0.0/31"),
    ),
    "tunnel-address-is-network": (
        "hosts.homelab.wireguard.address",
        lambda i: host(i, "homelab")["wireguard"].update(address="10.99.0.0"),
    ),
    "tunnel-address-is-broadcast": (
        "hosts.cloud-relay.wireguard.address",
        lambda i: host(i, "cloud-relay")["wireguard"].update(address="10.99.0.255"),
    ),
    "tunnel-address-duplicate": (
        "hosts.homelab.wireguard.address",
        lambda i: host(i, "homelab")["wireguard"].update(address="10.99.0.1"),
    ),
    "tunnel-same-key": (
        "hosts.homelab.wireguard.public_key",
        lambda i: host(i, "homelab")["wireguard"].update(
            public_key=host(i, "cloud-relay")["wireguard"]["public_key"]
        ),
    ),
    "relay-public-zero": (
        "hosts.cloud-relay.public_address",
        lambda i: host(i, "cloud-relay").update(public_address="0.0.0.0"),  # noqa: S104
    ),
    "relay-public-loopback": (
        "hosts.cloud-relay.public_address",
        lambda i: host(i, "cloud-relay").update(public_address="127.0.0.1"),
    ),
    "relay-public-broadcast": (
        "hosts.cloud-relay.public_address",
        lambda i: host(i, "cloud-relay").update(public_address="255.255.255.255"),
    ),
    "relay-public-in-guest-net": (
        "hosts.cloud-relay.public_address",
        lambda i: host(i, "cloud-relay").update(public_address="192.168.100.77"),
    ),
    "relay-public-in-tunnel": (
        "hosts.cloud-relay.public_address",
        lambda i: host(i, "cloud-relay").update(public_address="10.99.0.9"),
    ),
    # --- Topology the plan does not support ---------------------------------------------
    "two-relays": (
        "hosts.relay-two.role",
        lambda i: add_host(i, "relay-two", **copy.deepcopy(host(i, "cloud-relay"))),
    ),
    "relay-without-wireguard": (
        "hosts.cloud-relay.wireguard",
        lambda i: drop(host(i, "cloud-relay"), "wireguard"),
    ),
    "public-without-relay": (
        "guests.proxy.public[0]",
        without_relay,
    ),
    "hypervisor-without-tunnel": (
        "hosts.cloud-relay",
        lambda i: drop(host(i, "homelab"), "wireguard"),
    ),
    "public-port-relay-ssh": (
        "guests.proxy.public[2].port",
        lambda i: guest(i, "proxy").update(
            ports=[{"port": 22, "proto": "tcp"}],
            public=[*guest(i, "proxy")["public"], {"port": 22, "proto": "tcp"}],
        ),
    ),
    "public-port-relay-wireguard": (
        "guests.vpn.public[1].port",
        lambda i: guest(i, "vpn").update(
            ports=[{"port": 51820, "proto": "udp"}],
            public=[*guest(i, "vpn")["public"], {"port": 51820, "proto": "udp"}],
        ),
    ),
    "public-port-twice": (
        "guests.vpn.public",
        lambda i: guest(i, "vpn").update(
            ports=[{"port": 443, "proto": "tcp"}],
            public=[*guest(i, "vpn")["public"], {"port": 443, "proto": "tcp"}],
        ),
    ),
    "two-postgresql": (
        "guests.db2.services",
        lambda i: new_guest(i, "db2", ["postgresql"]),
    ),
    "two-proxies": (
        "guests.proxy2.services",
        lambda i: new_guest(i, "proxy2", ["caddy"]),
    ),
    "caddy-and-traefik": (
        "guests.proxy2.services",
        lambda i: new_guest(i, "proxy2", ["traefik"]),
    ),
    "two-mesh-servers": (
        "guests.vpn2.services",
        lambda i: new_guest(i, "vpn2", ["headscale"]),
    ),
    "headscale-route-named-mesh": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn").update(
            services=["headscale"], routes=[{"name": "mesh", "port": 8080}], databases=[]
        ),
    ),
    "two-dns-servers": (
        "guests.proxy.services",
        lambda i: guest(i, "db").update(services=["postgresql", "dnsmasq"]),
    ),
    "two-hypervisors": (
        "hosts.homelab2.role",
        lambda i: add_host(i, "homelab2", **copy.deepcopy(host(i, "homelab"))),
    ),
    "routes-without-proxy": (
        "guests.proxy.public[0].port",
        lambda i: guest(i, "proxy").update(services=["dnsmasq"]),
    ),
    "relay-dials-relay": (
        "hosts.cloud-relay.wireguard.relay",
        lambda i: host(i, "cloud-relay")["wireguard"].update(relay="cloud-relay"),
    ),
    "hypervisor-wireguard-port": (
        "hosts.homelab.wireguard.port",
        lambda i: host(i, "homelab")["wireguard"].update(port=51820),
    ),
    "relay-wireguard-port-22": (
        "hosts.cloud-relay.wireguard.port",
        lambda i: host(i, "cloud-relay")["wireguard"].update(port=22),
    ),
    "host-runs-a-service": (
        "hosts.homelab.services",
        lambda i: host(i, "homelab").update(services=["caddy"]),
    ),
    "relay-with-zfs": (
        "hosts.cloud-relay.zfs",
        lambda i: host(i, "cloud-relay").update(zfs={"pool": "tank", "host_id": "01020304"}),
    ),
    "services-twice": (
        "guests.db.services",
        lambda i: guest(i, "db").update(services=["postgresql", "postgresql"]),
    ),
    # --- Value types and bounds ---------------------------------------------------------
    "memory-huge": ("guests.db.memory", lambda i: guest(i, "db").update(memory=2**63 - 1)),
    "memory-float": ("guests.db.memory", lambda i: guest(i, "db").update(memory=2048.0)),
    "vcpu-negative": ("guests.db.vcpu", lambda i: guest(i, "db").update(vcpu=-4)),
    "state-size-huge": ("guests.db.state_size", lambda i: guest(i, "db").update(state_size=2**40)),
    "services-not-list": (
        "guests.db.services",
        lambda i: guest(i, "db").update(services="postgresql"),
    ),
    "ssh-keys-not-list": (
        "users.alice.ssh_keys",
        lambda i: i["users"]["alice"].update(ssh_keys="KEY"),
    ),
    "admin-as-string": ("users.alice.admin", lambda i: i["users"]["alice"].update(admin="yes")),
    "include-network-string": (
        "certificates.include_network",
        lambda i: i["certificates"].update(include_network="no"),
    ),
    "allow-from-not-list": (
        "guests.proxy.allow[0].from",
        lambda i: guest(i, "proxy")["allow"][0].update(**{"from": "lan"}),
    ),
    "unknown-certificates-key": (
        "certificates.email",
        lambda i: i["certificates"].update(email="a@b.example"),
    ),
    "datetime-value": (
        "guests.vpn.memory",
        Text(replace_line("memory = 2048\n", "memory = 2024-01-01T00:00:00Z\n")),
    ),
    "local-time-value": (
        "guests.vpn.vcpu",
        Text(replace_line("vcpu = 2\n", "vcpu = 07:30:00\n")),
    ),
    "nul-in-guest-key": (
        "guests.db.host_key",
        Text(replace_line("+8EA0nN root@db", "+8EA0nN root@db\\u0000")),
    ),
    "nul-in-target": (
        "hosts.homelab.target",
        Text(replace_line('target = "root@homelab.lan"', 'target = "root@homelab\\u0000.lan"')),
    ),
    "byte-order-mark": ("inventory", Text(lambda t: "\ufeff" + t)),
}


def lib_errors(path: Path) -> list[str]:
    """lib's list of problems for ``path`` (one nix-instantiate call, as `tools` makes)."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(REPO / "lib" / "eval.nix"),
         "--argstr", "inventory", str(path), "--arg", "plan", "false"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    errors: list[str] = json.loads(out.stdout)["errors"]
    return errors


def main() -> None:
    source = EXAMPLE.read_text()
    example = tomllib.loads(source)
    out = HERE / "bad"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.toml"):
        old.unlink()
    expected: dict[str, list[str]] = {}
    for name, (key, mutate) in CASES.items():
        path = out / f"{name}.toml"
        if isinstance(mutate, Text):
            text = mutate.edit(source)
        else:
            inv = copy.deepcopy(example)
            mutate(inv)
            text = f"# {name}: the example inventory with one mistake.\n" + tomli_w.dumps(inv)
        path.write_text(text.replace("KEY", KEY))
        errors = lib_errors(path)
        assert errors, f"{name}: accepted"
        assert any(e.startswith(f"{key}: ") for e in errors), f"{name}: {key} not in {errors}"
        expected[path.name] = errors
        print(f"{name}:" + "".join(f"\n    {e}" for e in errors))
    (out / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(CASES)} inventories and expected.json to {out}")


if __name__ == "__main__":
    main()
