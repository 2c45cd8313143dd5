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
import re
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


def add_host(inv: Inv, name: str, **fields: Any) -> None:
    inv["hosts"][name] = fields


def without_relay(inv: Inv) -> None:
    del inv["hosts"]["cloud-relay"]
    del host(inv, "homelab")["wireguard"]


Case = tuple[str, Callable[[Inv], Any] | Text]  # the key lib must blame, and the mistake


def editing(blame: str, old: str, new: str) -> Case:
    """The example's text with ``old`` (which must be there) replaced by ``new``: a mistake
    only the TOML text can make. lib must blame ``blame``."""

    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return (blame, Text(edit))


def _steps(path: str) -> list[str | int]:
    """`guests.auth.routes[0].port` -> ["guests", "auth", "routes", 0, "port"]."""
    return [int(s[1:-1]) if s.startswith("[") else s for s in re.findall(r"[^.\[]+|\[\d+\]", path)]


def _parent(inv: Inv, path: str) -> tuple[Any, str | int]:
    *parents, last = _steps(path)
    node: Any = inv
    for step in parents:
        node = node[step]
    return node, last


def setting(path: str, value: Any, *, blame: str | None = None, also: Inv | None = None) -> Case:
    """The example with ``value`` at ``path`` (and the keys of ``also`` beside it); lib must
    blame ``blame``, or ``path`` itself."""

    def mutate(inv: Inv) -> None:
        node, last = _parent(inv, path)
        node[last] = value
        node.update(also or {})

    return (blame or path, mutate)


def removing(path: str, *, blame: str | None = None) -> Case:
    """The example without the key at ``path``; lib must blame ``blame``, or ``path``."""

    def mutate(inv: Inv) -> None:
        node, last = _parent(inv, path)
        del node[last]

    return (blame or path, mutate)


def adding_guest(name: str, services: list[str] | None = None, *, blame: str) -> Case:
    """The example and one more small guest, ``name``, running ``services``."""

    def mutate(inv: Inv) -> None:
        inv["guests"][name] = {
            "host": "homelab", "address": "192.168.100.30", "vcpu": 1, "memory": 256,
            "services": services or [], "state_size": 256,
        }  # fmt: skip

    return (blame, mutate)


def forwarding(name: str, port: int, proto: str, *, blame: str) -> Case:
    """Guest ``name`` serving ``port`` alone, and the relay forwarding it there as well."""

    def mutate(inv: Inv) -> None:
        served = {"port": port, "proto": proto}
        guest(inv, name).update(ports=[served], public=[*guest(inv, name)["public"], served])

    return (blame, mutate)


CASES: dict[str, Case] = {
    "address-not-ip": setting("guests.db.address", "192.168.100.300"),
    "address-outside-subnet": setting("guests.db.address", "192.168.101.5"),
    "address-duplicate": setting("guests.vpn.address", "192.168.100.10"),
    "address-is-gateway": setting("guests.proxy.address", "192.168.100.1"),
    "address-is-broadcast": setting("guests.db.address", "192.168.100.255"),
    "mac-duplicate": setting("guests.vpn.mac", mac_for("auth")),
    "mac-not-local": setting("guests.db.mac", "00:11:22:33:44:55"),
    "mac-malformed": setting("guests.db.mac", "02:11:22:33:44"),
    "host-unknown": setting("guests.db.host", "homelab2"),
    "host-not-hypervisor": setting("guests.db.host", "cloud-relay"),
    "route-name-clash": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn")["routes"].append({"name": "id", "port": 8080}),
    ),
    "route-name-is-guest": setting("guests.auth.routes[0].name", "db"),
    "route-path-twice": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn")["routes"].append(
            {"name": "vpn", "path": "/api/*", "port": 33073}
        ),
    ),
    "route-port-range": setting("guests.auth.routes[0].port", 70000),
    "route-port-not-served": setting("guests.auth.routes[0].port", 8080),
    "route-path-relative": setting("guests.vpn.routes[1].path", "api"),
    "tap-too-long": setting("guests.auth.tap", "vm-authentication"),
    "tap-too-long-from-name": adding_guest("authentication-x", blame="guests.authentication-x.tap"),
    "tap-duplicate": setting("guests.vpn.tap", "vm-auth"),
    "allow-port-zero": setting("guests.proxy.allow[0].port", 0),
    "allow-proto-icmp": setting("guests.proxy.allow[0].proto", "icmp"),
    "allow-unknown-source": setting(
        "guests.proxy.allow[0].from", ["dbx"], blame="guests.proxy.allow[0].from[0]"
    ),
    "allow-port-not-served": setting("guests.proxy.allow[0].port", 8443),
    "public-port-not-served": setting("guests.proxy.public[0].port", 8443),
    "missing-memory": removing("guests.db.memory"),
    "missing-state-size": removing("guests.db.state_size"),
    "state-size-zero": setting("guests.db.state_size", 0),
    "hypervisor-without-zfs": removing("hosts.homelab.zfs"),
    "missing-domain": removing("domain"),
    "missing-gateway": removing("networks.guests.gateway"),
    "gateway-outside": setting("networks.guests.gateway", "10.0.0.1"),
    "cidr-prefix-33": setting("networks.guests.cidr", "192.168.100.0/33"),
    "cidr-host-bits": setting("networks.guests.cidr", "192.168.100.7/24"),
    "bridge-name-long": setting("networks.guests.bridge", "br-guests-network"),
    "tunnel-overlap": setting("networks.tunnel.cidr", "192.168.100.128/25"),
    "unknown-guest-key": setting("guests.db.adress", "192.168.100.21"),
    "unknown-top-key": setting("gusts", {}),
    "unknown-service": setting("guests.db.services", ["postgres"], blame="guests.db.services[0]"),
    "database-server-not-postgres": setting("guests.auth.databases[0].server", "proxy"),
    "database-duplicate": setting(
        "guests.vpn.databases[0].name", "pocketid", blame="guests.vpn.databases"
    ),
    "database-bad-name": setting("guests.auth.databases[0].name", "Pocket-ID"),
    "vcpu-zero": setting("guests.db.vcpu", 0),
    "memory-string": setting("guests.db.memory", "2G"),
    "user-bad-age-key": setting("users.alice.age_key", "age1xyz"),
    "user-bad-ssh-key": setting(
        "users.alice.ssh_keys", ["ssh-ed25519"], blame="users.alice.ssh_keys[0]"
    ),
    "no-admin": setting("users.alice.admin", False, blame="users"),
    "host-bad-role": setting("hosts.homelab.role", "server"),
    "host-bad-system": setting("hosts.homelab.system", "x86_64-darwin"),
    "host-bad-host-id": setting("hosts.homelab.zfs.host_id", "xyz"),
    "host-missing-lan-interface": removing("hosts.homelab.lan_interface"),
    "relay-missing-public-address": removing("hosts.cloud-relay.public_address"),
    "wireguard-relay-not-relay": setting("hosts.homelab.wireguard.relay", "homelab"),
    "wireguard-address-outside": setting("hosts.homelab.wireguard.address", "10.98.0.2"),
    "wireguard-port-range": setting("hosts.cloud-relay.wireguard.port", 99999),
    "wireguard-bad-key": setting("hosts.cloud-relay.wireguard.public_key", "not-a-key"),
    "cert-mode-unknown": setting("certificates.mode", "letsencrypt"),
    "acme-without-email": setting(
        "certificates.mode", "acme-dns01", blame="certificates.acme_email"
    ),
    "domain-uppercase": setting("domain", "Home.Arpa"),
    "guests-not-table": setting("guests", "auth,db"),
    # --- Strings that reach a rendered file or a command line: whitelists ---------------
    "db-name-postgres": setting("guests.auth.databases[0].name", "postgres"),
    "db-name-all": setting("guests.auth.databases[0].name", "all"),
    "db-name-sameuser": setting("guests.auth.databases[0].name", "sameuser"),
    "db-name-pg-prefix": setting("guests.auth.databases[0].name", "pg_auth"),
    "db-name-quote": setting("guests.auth.databases[0].name", 'a"b'),
    "route-path-newline": setting("guests.vpn.routes[1].path", "/api/*\n}\nevil.example {"),
    "route-path-space": setting("guests.vpn.routes[1].path", "/api/* respond 200"),
    "route-path-brace": setting("guests.vpn.routes[1].path", "/api/}"),
    "route-path-quote": setting("guests.vpn.routes[1].path", '/api/"x'),
    "route-name-dot": setting("guests.auth.routes[0].name", "id.evil"),
    "acme-email-newline": setting(
        "certificates.acme_email", "a@b.example\nx", also={"mode": "acme-dns01"}
    ),
    "acme-under-public-suffix": setting(
        "certificates.mode", "acme-dns01", also={"acme_email": "admin@example.com"}
    ),
    "acme-email-not-email": setting(
        "certificates.acme_email", "admin", also={"mode": "acme-dns01"}
    ),
    "ssh-key-two-lines": setting(
        "users.alice.ssh_keys", ["KEY a\nKEY b"], blame="users.alice.ssh_keys[0]"
    ),
    "host-key-newline": setting("hosts.homelab.host_key", "KEY root@homelab\nKEY evil"),
    "host-key-rsa": setting("guests.db.host_key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 db"),
    "target-option": setting("hosts.homelab.target", "-oProxyCommand=touch /tmp/pwned"),
    "target-shell": setting("hosts.cloud-relay.target", "root@203.0.113.10; rm -rf /"),
    "lan-interface-dotdot": setting("hosts.homelab.lan_interface", ".."),
    "bridge-dot": setting("networks.guests.bridge", "."),
    "bridge-lo": setting("networks.guests.bridge", "lo"),
    "tap-is-bridge": setting("guests.db.tap", "br-guests"),
    "tap-is-lan": setting("guests.db.tap", "enp1s0"),
    "tap-all": setting("guests.db.tap", "all"),
    "lan-interface-is-bridge": setting("hosts.homelab.lan_interface", "br-guests"),
    "zfs-pool-shell": setting("hosts.homelab.zfs.pool", "tank; zfs destroy -r tank"),
    "zfs-pool-reserved": setting("hosts.homelab.zfs.pool", "mirror"),
    "domain-newline": setting("domain", "home.arpa\nlocal=/evil/"),
    "allow-source-newline": setting(
        "guests.proxy.allow[0].from", ["lan\nx"], blame="guests.proxy.allow[0].from[0]"
    ),
    "egress-to-moon": setting(
        "guests.auth.egress", [{"to": "moon", "port": 443}], blame="guests.auth.egress[0].to"
    ),
    "egress-without-port": setting(
        "guests.auth.egress", [{"to": "internet"}], blame="guests.auth.egress[0].port"
    ),
    # --- Reserved words -----------------------------------------------------------------
    "guest-named-lan": ("guests.lan", lambda i: i["guests"].update(lan=i["guests"].pop("db"))),
    "guest-named-guests": adding_guest("guests", blame="guests.guests"),
    "guest-named-internet": adding_guest("internet", blame="guests.internet"),
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
    "user-named-root": setting("users.root", {"admin": False, "ssh_keys": ["KEY"]}),
    "user-named-postgres": setting("users.postgres", {"ssh_keys": ["KEY"]}),
    "user-systemd-prefix": setting("users.systemd-network", {"ssh_keys": ["KEY"]}),
    "route-name-is-host": setting("guests.auth.routes[0].name", "homelab"),
    "guest-name-too-long": adding_guest("a" * 64, blame="guests." + "a" * 64),
    "admin-without-ssh-key": setting("users.alice.ssh_keys", [], blame="users"),
    # --- Addresses ----------------------------------------------------------------------
    "gateway-is-network": setting("networks.guests.gateway", "192.168.100.0"),
    "gateway-is-broadcast": setting("networks.guests.gateway", "192.168.100.255"),
    "cidr-everything": setting("networks.guests.cidr", "0.0.0.0/0"),
    "cidr-loopback": setting("networks.guests.cidr", "127.0.0.0/24", also={"gateway": "127.0.0.1"}),
    "cidr-multicast": setting(
        "networks.guests.cidr", "224.1.0.0/24", also={"gateway": "224.1.0.1"}
    ),
    "cidr-link-local": setting(
        "networks.guests.cidr", "169.254.7.0/24", also={"gateway": "169.254.7.1"}
    ),
    "tunnel-cidr-host-bits": setting("networks.tunnel.cidr", "10.99.0.5/24"),
    "tunnel-cidr-31": setting("networks.tunnel.cidr", "10.99.0.0/31"),
    "tunnel-address-is-network": setting("hosts.homelab.wireguard.address", "10.99.0.0"),
    "tunnel-address-is-broadcast": setting("hosts.cloud-relay.wireguard.address", "10.99.0.255"),
    "tunnel-address-duplicate": setting("hosts.homelab.wireguard.address", "10.99.0.1"),
    "tunnel-same-key": (
        "hosts.homelab.wireguard.public_key",
        lambda i: host(i, "homelab")["wireguard"].update(
            public_key=host(i, "cloud-relay")["wireguard"]["public_key"]
        ),
    ),
    "relay-public-zero": setting("hosts.cloud-relay.public_address", "0.0.0.0"),  # noqa: S104
    "relay-public-loopback": setting("hosts.cloud-relay.public_address", "127.0.0.1"),
    "relay-public-broadcast": setting("hosts.cloud-relay.public_address", "255.255.255.255"),
    "relay-public-in-guest-net": setting("hosts.cloud-relay.public_address", "192.168.100.77"),
    "relay-public-in-tunnel": setting("hosts.cloud-relay.public_address", "10.99.0.9"),
    # --- Topology the plan does not support ---------------------------------------------
    "two-relays": (
        "hosts.relay-two.role",
        lambda i: add_host(i, "relay-two", **copy.deepcopy(host(i, "cloud-relay"))),
    ),
    "relay-without-wireguard": removing("hosts.cloud-relay.wireguard"),
    "public-without-relay": (
        "guests.proxy.public[0]",
        without_relay,
    ),
    "hypervisor-without-tunnel": removing("hosts.homelab.wireguard", blame="hosts.cloud-relay"),
    "public-port-relay-ssh": forwarding("proxy", 22, "tcp", blame="guests.proxy.public[2].port"),
    "public-port-relay-wireguard": forwarding(
        "vpn", 51820, "udp", blame="guests.vpn.public[1].port"
    ),
    "public-port-twice": forwarding("vpn", 443, "tcp", blame="guests.vpn.public"),
    "two-postgresql": adding_guest("db2", ["postgresql"], blame="guests.db2.services"),
    "two-proxies": adding_guest("proxy2", ["caddy"], blame="guests.proxy2.services"),
    "caddy-and-traefik": adding_guest("proxy2", ["traefik"], blame="guests.proxy2.services"),
    "two-mesh-servers": adding_guest("vpn2", ["headscale"], blame="guests.vpn2.services"),
    "headscale-route-named-mesh": (
        "guests.vpn.routes",
        lambda i: guest(i, "vpn").update(
            services=["headscale"], routes=[{"name": "mesh", "port": 8080}], databases=[]
        ),
    ),
    "two-dns-servers": setting(
        "guests.db.services", ["postgresql", "dnsmasq"], blame="guests.proxy.services"
    ),
    "two-hypervisors": (
        "hosts.homelab2.role",
        lambda i: add_host(i, "homelab2", **copy.deepcopy(host(i, "homelab"))),
    ),
    "routes-without-proxy": setting(
        "guests.proxy.services", ["dnsmasq"], blame="guests.proxy.public[0].port"
    ),
    "relay-dials-relay": setting("hosts.cloud-relay.wireguard.relay", "cloud-relay"),
    "hypervisor-wireguard-port": setting("hosts.homelab.wireguard.port", 51820),
    "relay-wireguard-port-22": setting("hosts.cloud-relay.wireguard.port", 22),
    "host-runs-a-service": setting("hosts.homelab.services", ["caddy"]),
    "relay-with-zfs": setting("hosts.cloud-relay.zfs", {"pool": "tank", "host_id": "01020304"}),
    "services-twice": setting("guests.db.services", ["postgresql", "postgresql"]),
    # --- Value types and bounds ---------------------------------------------------------
    "memory-huge": setting("guests.db.memory", 2**63 - 1),
    "memory-float": setting("guests.db.memory", 2048.0),
    "vcpu-negative": setting("guests.db.vcpu", -4),
    "state-size-huge": setting("guests.db.state_size", 2**40),
    "services-not-list": setting("guests.db.services", "postgresql"),
    "ssh-keys-not-list": setting("users.alice.ssh_keys", "KEY"),
    "admin-as-string": setting("users.alice.admin", "yes"),
    "include-network-string": setting("certificates.include_network", "no"),
    "allow-from-not-list": setting("guests.proxy.allow[0].from", "lan"),
    "unknown-certificates-key": setting("certificates.email", "a@b.example"),
    "datetime-value": editing(
        "guests.vpn.memory", "memory = 2048\n", "memory = 2024-01-01T00:00:00Z\n"
    ),
    "local-time-value": editing("guests.vpn.vcpu", "vcpu = 2\n", "vcpu = 07:30:00\n"),
    "nul-in-guest-key": editing("guests.db.host_key", "+8EA0nN root@db", "+8EA0nN root@db\\u0000"),
    "nul-in-target": editing(
        "hosts.homelab.target", 'target = "root@homelab.lan"', 'target = "root@homelab\\u0000.lan"'
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
