"""Regenerate tests/inventories/bad/: the example inventory with exactly one mistake each.

Each file starts with `# expect: <key>`: the key both the Python check and the Nix plan
must name. Run from anywhere: python3 tests/inventories/make_bad.py
"""

from __future__ import annotations

import copy
import hashlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example" / "inventory.toml"  # the frozen example, not the live file

Inv = dict[str, Any]


def mac_for(name: str) -> str:
    digest = hashlib.sha256(f"homestack-mac:{name}".encode()).hexdigest()
    return "02:" + ":".join(digest[2 * i : 2 * i + 2] for i in range(5))


def guest(inv: Inv, name: str) -> Inv:
    g: Inv = inv["guests"][name]
    return g


def new_guest(inv: Inv, name: str) -> None:
    inv["guests"][name] = {
        "host": "homelab", "address": "192.168.100.30", "vcpu": 1, "memory": 256,
        "services": ["postgresql"], "state_size": 256,
    }  # fmt: skip


CASES: dict[str, tuple[str, Callable[[Inv], None]]] = {
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
}


def main() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    out = HERE / "bad"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.toml"):
        old.unlink()
    for name, (key, mutate) in CASES.items():
        inv = copy.deepcopy(example)
        mutate(inv)
        text = f"# expect: {key}\n# {name}: the example inventory with one mistake.\n"
        (out / f"{name}.toml").write_text(text + tomli_w.dumps(inv))
    print(f"wrote {len(CASES)} inventories to {out}")


if __name__ == "__main__":
    main()
