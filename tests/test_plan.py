"""lib/ evaluated through Nix (no nixpkgs): the golden plan of the example, every rendered
artifact checked by the real program that reads it, and the bad corpus rejected by Nix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from artifact_checks import caddy_adapt
from conftest import EXAMPLE, REPO, requires_nix

from homestack.errors import CheckFailed, UserError
from homestack.plan import load_plan

pytestmark = requires_nix
GOLDEN = REPO / "tests" / "golden" / "plan.json"


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(EXAMPLE)


def test_golden_plan(plan: dict[str, Any]) -> None:
    """The whole plan of the example; HOMESTACK_UPDATE_GOLDEN=1 rewrites the file."""
    rendered = json.dumps(plan, indent=2, sort_keys=True) + "\n"
    if os.environ.get("HOMESTACK_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text()


def test_addresses_macs_taps(plan: dict[str, Any]) -> None:
    guests = plan["guests"]
    assert {g["address"] for g in guests.values()} == {
        "192.168.100.10", "192.168.100.11", "192.168.100.2", "192.168.100.20",
    }  # fmt: skip
    macs = [g["mac"] for g in guests.values()]
    assert len(set(macs)) == len(macs)
    assert all(re.fullmatch(r"02(:[0-9a-f]{2}){5}", m) for m in macs)
    assert all(len(g["tap"]) <= 15 for g in guests.values())
    assert guests["db"]["gateway"] == "192.168.100.1" and guests["db"]["prefix"] == 24
    assert guests["db"]["state"]["dataset"] == "tank/microvms/db"


def test_allow_matrix(plan: dict[str, Any]) -> None:
    flows = {(f["from"], f["to"], f["port"], f["proto"]) for f in plan["allow"]}
    assert ("proxy", "auth", 1411, "tcp") in flows  # route
    assert ("auth", "db", 5432, "tcp") in flows  # database owner
    assert ("vpn", "db", 5432, "tcp") in flows
    assert ("lan", "vpn", 3478, "udp") in flows  # explicit allow
    assert ("homelab", "db", 22, "tcp") in flows  # admin ssh through the hypervisor
    assert not any(f[1] == "db" and f[0] == "proxy" for f in flows), "proxy must never reach db"
    assert not any(f[0] == f[1] for f in flows)


def test_deploy_order(plan: dict[str, Any]) -> None:
    """From the catalogue's needs: vpn needs PocketID through the proxy, DNS and its
    database; auth needs its database; Caddy and PostgreSQL need nothing."""
    assert plan["deployOrder"] == [["cloud-relay", "homelab"], ["db", "proxy"], ["auth"], ["vpn"]]
    assert plan["bootOrder"] == [["db", "proxy"], ["auth"], ["vpn"]]
    assert plan["guests"]["vpn"]["dependsOn"] == ["auth", "db", "proxy"]


def test_secret_files(plan: dict[str, Any]) -> None:
    secrets = plan["secrets"]
    alice = "age1x0dtwwdnzcdvdtkvp05nnmxf25y5qq6g5gxd2j9jxp8a0yzhaflqyxs40k"
    assert secrets["secrets/ca.yaml"]["recipients"] == [alice]
    assert secrets["secrets/host-keys/db.yaml"]["machines"] == ["homelab"]
    assert secrets["secrets/shared/pg-pocketid.yaml"]["machines"] == ["db", "auth"]
    assert "tls/key" in secrets["secrets/proxy.yaml"]["keys"]
    assert all(alice in f["recipients"] for f in secrets.values())


def test_relay(plan: dict[str, Any]) -> None:
    relay = plan["relay"]
    assert {(f["port"], f["proto"], f["guest"]) for f in relay["forwards"]} == {
        (80, "tcp", "proxy"), (443, "tcp", "proxy"), (3478, "udp", "vpn"),
    }  # fmt: skip
    home = plan["artifacts"]["wireguard"]["home"]
    assert home["peers"][0]["endpoint"] == "203.0.113.10:51820"
    assert home["peers"][0]["persistentKeepalive"] == 25
    assert "192.168.100.0/24" in plan["artifacts"]["wireguard"]["relay"]["peers"][0]["allowedIPs"]


def test_caddyfile(plan: dict[str, Any], tmp_path: Path) -> None:
    text = plan["artifacts"]["caddyfile"]
    assert '"id.home.arpa" {' in text
    assert 'reverse_proxy "192.168.100.10:1411"' in text
    assert 'reverse_proxy "h2c://192.168.100.11:10000"' in text
    assert 'bind "192.168.100.2"' in text
    if shutil.which("caddy") is None:
        pytest.skip("caddy not installed")
    config = caddy_adapt(text, tmp_path)
    servers = config["apps"]["http"]["servers"]
    hosts = {
        h
        for s in servers.values()
        for r in s["routes"]
        for m in r.get("match", [])
        for h in m.get("host", [])
    }
    assert {"id.home.arpa", "vpn.home.arpa"} <= hosts


def test_dnsmasq_config(plan: dict[str, Any], tmp_path: Path) -> None:
    text = plan["artifacts"]["dnsmasq"]
    assert "host-record=id.home.arpa,192.168.100.2" in text
    assert "host-record=db.home.arpa,192.168.100.20" in text
    assert "local=/home.arpa/" in text
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed")
    path = tmp_path / "dnsmasq.conf"
    path.write_text(text)
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={path}"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "syntax check OK" in out.stderr


def test_pg_hba(plan: dict[str, Any]) -> None:
    lines = [
        line.split()
        for line in plan["artifacts"]["pgHba"].splitlines()
        if line and not line.startswith("#")
    ]
    # Names are quoted: a quoted name is never a keyword (all, sameuser, …) in pg_hba.conf.
    assert ["host", '"pocketid"', '"pocketid"', "192.168.100.10/32", "scram-sha-256"] in lines
    assert ["host", '"netbird"', '"netbird"', "192.168.100.11/32", "scram-sha-256"] in lines
    assert lines[-1] == ["host", "all", "all", "0.0.0.0/0", "reject"]
    assert not any("192.168.100.2/32" in line for line in lines), "proxy must have no pg_hba line"


def _nft_check(text: str, tmp_path: Path) -> None:
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("nft as root is needed to check rule sets")
    path = tmp_path / "rules.nft"
    path.write_text(text)
    # A fresh network namespace: nothing is applied to this machine (-c only checks).
    out = subprocess.run(
        ["unshare", "-n", "nft", "-c", "-f", str(path)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def _elements(text: str, name: str) -> set[str]:
    """The elements of set ``name`` in a rendered rule set, without their comments."""
    block = text.split(f"\tset {name} {{\n", 1)[1].split("\n\t}", 1)[0]
    return {
        re.sub(r' comment ".*"', "", line.strip().rstrip(","))
        for line in block.split("elements = {", 1)[-1].splitlines()
        if line.startswith("\t\t\t")
    }


def test_guest_nftables(plan: dict[str, Any], tmp_path: Path) -> None:
    rules = plan["artifacts"]["nftables"]
    db = rules["db"]
    assert db.count("policy drop;") == 3, "input, forward and output all drop by default"
    assert _elements(db, "flows_in") == {
        "192.168.100.1 . tcp . 22", "192.168.100.1 . tcp . 5432",
        "192.168.100.10 . tcp . 5432", "192.168.100.11 . tcp . 5432",
    }  # fmt: skip
    assert _elements(db, "flows_out") == {
        "192.168.100.1 . udp . 123", "192.168.100.2 . tcp . 443", "192.168.100.2 . tcp . 80",
        "192.168.100.2 . udp . 53", "192.168.100.2 . tcp . 53",
    }  # fmt: skip
    assert _elements(db, "internet_out") == set() and _elements(db, "lan_out") == set()
    assert "ip saddr . meta l4proto . th dport @flows_in accept" in db
    vpn = rules["vpn"]
    assert _elements(vpn, "lan_in") == {"udp . 3478"}
    assert "ip saddr != { 192.168.100.0/24, 10.99.0.0/24 } meta l4proto . th dport @lan_in" in vpn
    assert "10.99.0.1 . udp . 3478" in _elements(vpn, "flows_in"), "the relay's forward"
    proxy = rules["proxy"]
    assert _elements(proxy, "internet_out") == {"udp . 53", "tcp . 53"}
    assert "192.168.100.10 . tcp . 1411" in _elements(proxy, "flows_out")
    assert "ip daddr != @not_internet meta l4proto . th dport @internet_out accept" in proxy
    for text in rules.values():
        _nft_check(text, tmp_path)


def test_bridge_and_host_nftables(plan: dict[str, Any], tmp_path: Path) -> None:
    bridge = plan["artifacts"]["bridgeNftables"]
    assert "table bridge homestack" in bridge
    db = plan["guests"]["db"]
    assert f'"vm-db" . {db["mac"]} . 192.168.100.20' in _elements(bridge, "guest_addresses")
    flows = _elements(bridge, "flows")
    assert "192.168.100.10 . 192.168.100.20 . tcp . 5432" in flows
    assert not any(f.startswith("192.168.100.2 . 192.168.100.20 ") for f in flows)
    assert "type filter hook prerouting priority filter; policy drop;" in bridge
    _nft_check(bridge, tmp_path)
    host = plan["artifacts"]["hostNftables"]["homelab"]
    assert host.count("policy drop;") == 2, "input and forward drop by default"
    assert _elements(host, "services") == {
        '"enp1s0" . tcp . 22', '"nb-homestack" . tcp . 22', '"enp1s0" . udp . 51821',
    }  # fmt: skip
    assert not any(".22" in e.replace(" ", "") for e in _elements(host, "guest_services"))
    assert _elements(host, "guest_flows") == flows, "the routed path allows what the bridge does"
    assert _elements(host, "tunnel_flows") == {
        "10.99.0.1 . 192.168.100.2 . tcp . 80", "10.99.0.1 . 192.168.100.2 . tcp . 443",
        "10.99.0.1 . 192.168.100.11 . udp . 3478",
    }  # fmt: skip
    assert _elements(host, "internet_egress") == {
        "192.168.100.2 . udp . 53",
        "192.168.100.2 . tcp . 53",
    }
    assert 'iifname "br-guests" oifname "br-guests" ip saddr . ip daddr' in host
    relay = plan["artifacts"]["hostNftables"]["cloud-relay"]
    assert _elements(relay, "services") == {"tcp . 22", "udp . 51820"}
    assert 'iifname != "wg-homestack" meta l4proto . th dport @services accept' in relay
    for text in plan["artifacts"]["hostNftables"].values():
        _nft_check(text, tmp_path)


def test_egress_and_input(plan: dict[str, Any]) -> None:
    egress = {(e["from"], e["to"], e["port"], e["proto"]) for e in plan["egress"]}
    ntp = {(g, "homelab", 123, "udp") for g in plan["guests"]}
    assert egress == ntp | {("proxy", "internet", 53, "udp"), ("proxy", "internet", 53, "tcp")}
    inputs = {(i["host"], i["from"], i["port"], i["proto"]) for i in plan["input"]}
    assert ("homelab", "lan", 22, "tcp") in inputs and ("homelab", "mesh", 22, "tcp") in inputs
    assert not any(
        i[0] == "homelab" and i[2] == 22 and i[1] not in {"lan", "mesh"} for i in inputs
    ), "no guest and not the tunnel reaches the hypervisor's SSH"
    assert ("cloud-relay", "internet", 51820, "udp") in inputs
    public = {(f["from"], f["to"], f["port"]) for f in plan["allow"] if f["fromKind"] == "relay"}
    assert public == {
        ("cloud-relay", "proxy", 80),
        ("cloud-relay", "proxy", 443),
        ("cloud-relay", "vpn", 3478),
    }


def _with(tmp_path: Path, extra: str, base: str | None = None) -> dict[str, Any]:
    path = tmp_path / "inventory.toml"
    path.write_text((base or EXAMPLE.read_text()) + extra)
    return load_plan(path)


def test_egress_key_and_acme_mode(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        'mode = "private-ca"', 'mode = "acme-dns01"\nacme_email = "a@example.org"'
    )
    # acme-dns01 needs a domain a public CA can issue for (home.arpa is a public suffix).
    text = text.replace('domain = "home.arpa"', 'domain = "home.example.org"')
    text = text.replace(
        'databases = [{ name = "pocketid", server = "db" }]',
        'databases = [{ name = "pocketid", server = "db" }]\n'
        'egress = [{ to = "internet", port = 587 }, '
        '{ to = "lan", port = 445, proto = "tcp" }]',
    )
    p = _with(tmp_path, "", text)
    egress = {(e["from"], e["to"], e["port"], e["proto"]) for e in p["egress"]}
    assert {
        ("auth", "internet", 587, "tcp"),
        ("auth", "lan", 445, "tcp"),
        ("proxy", "internet", 443, "tcp"),
    } <= egress
    auth = p["artifacts"]["nftables"]["auth"]
    assert _elements(auth, "internet_out") == {"tcp . 587"}
    assert _elements(auth, "lan_out") == {"tcp . 445"}
    host = p["artifacts"]["hostNftables"]["homelab"]
    assert "192.168.100.10 . tcp . 587" in _elements(host, "internet_egress")
    assert _elements(host, "lan_egress") == {"192.168.100.10 . tcp . 445"}


@pytest.mark.parametrize(("entry", "key"), [
    ('{ to = "moon", port = 443 }', "guests.auth.egress[0].to"),
    ('{ port = 443 }', "guests.auth.egress[0].to"),
    ('{ to = "internet", port = 0 }', "guests.auth.egress[0].port"),
    ('{ to = "internet", port = 443, via = "x" }', "guests.auth.egress[0].via"),
])  # fmt: skip
def test_bad_egress_is_rejected_by_nix(tmp_path: Path, entry: str, key: str) -> None:
    text = EXAMPLE.read_text().replace(
        'databases = [{ name = "pocketid", server = "db" }]',
        f'databases = [{{ name = "pocketid", server = "db" }}]\negress = [{entry}]',
    )
    with pytest.raises(CheckFailed) as exc:
        _with(tmp_path, "", text)
    assert any(f.startswith(f"inventory.toml: {key}: ") for f in exc.value.findings), str(
        exc.value.findings
    )


def _many_guests(n: int) -> str:
    """n app guests with the longest names the inventory allows (63 characters), each with
    a route, a database, a flow from every guest and egress: every comment at its longest."""
    out = []
    for i in range(n):
        name = f"app{i:03d}-" + "x" * 56
        out.append(
            f'\n[guests.{name}]\nhost = "homelab"\naddress = "192.168.100.{100 + i}"\n'
            f'vcpu = 1\nmemory = 256\nstate_size = 64\nservices = []\ntap = "vm-app{i}"\n'
            f'ports = [{{ port = 3000, proto = "tcp" }}]\n'
            f'routes = [{{ name = "{name}", port = 3000 }}]\n'
            f'databases = [{{ name = "app{i}", server = "db" }}]\n'
            f'allow = [{{ from = ["guests", "lan"], port = 3000, proto = "tcp" }}]\n'
            f'egress = [{{ to = "internet", port = 443 }}]\n'
        )
    return "".join(out)


def test_thirty_long_named_guests_render_valid_rule_sets(tmp_path: Path) -> None:
    """nft rejects a comment over 128 characters; every rule set of 34 guests with 63-character
    names passes `nft -c`, and no rule's length grows with the number of guests."""
    p = _with(tmp_path, _many_guests(30))
    art = p["artifacts"]
    texts = [*art["nftables"].values(), art["bridgeNftables"], *art["hostNftables"].values()]
    comments = [c for text in texts for c in re.findall(r'comment "([^"]*)"', text)]
    assert max(len(c) for c in comments) == 128
    assert any(c.endswith("...") for c in comments), "a name pair too long for one is cut"
    for text in texts:
        # Flows are set elements: no rule line names more than one address set inline.
        rules = [
            line
            for line in text.splitlines()
            if line.startswith("\t\t") and not line.startswith("\t\t\t") and "elements" not in line
        ]
        assert max(len(line) for line in rules) < 400
        _nft_check(text, tmp_path)
    assert len(_elements(art["nftables"]["db"], "flows_in")) == 2 + 1 + 1 + 30


def test_extra_guest_changes_everything_it_should(tmp_path: Path) -> None:
    """Nothing is wired to the four example guests: a fifth guest with a route and a database."""
    data = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text() + (
        '\n[guests.wiki]\nhost = "homelab"\naddress = "192.168.100.30"\nvcpu = 1\nmemory = 512\n'
        'state_size = 256\nservices = []\nports = [{ port = 3000, proto = "tcp" }]\n'
        'routes = [{ name = "wiki", port = 3000 }]\n'
        'databases = [{ name = "wiki", server = "db" }]\n'
    )
    assert "wiki" not in data["guests"]
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    p = load_plan(path)
    assert 'reverse_proxy "192.168.100.30:3000"' in p["artifacts"]["caddyfile"]
    assert "host-record=wiki.home.arpa,192.168.100.2" in p["artifacts"]["dnsmasq"]
    assert 'host    "wiki" "wiki" 192.168.100.30/32 scram-sha-256' in p["artifacts"]["pgHba"]
    assert "192.168.100.2 . 192.168.100.30 . tcp . 3000" in _elements(
        p["artifacts"]["bridgeNftables"], "flows"
    )
    assert "wiki" in p["deployOrder"][2] and p["guests"]["wiki"]["dependsOn"] == ["db"]


def test_every_nix_file_parses() -> None:
    files = [p for p in REPO.rglob("*.nix") if ".git" not in p.parts]
    assert files
    for path in files:
        out = subprocess.run(
            ["nix-instantiate", "--parse", str(path)], check=False, capture_output=True, text=True
        )
        assert out.returncode == 0, f"{path}: {out.stderr.strip()}"


def test_invalid_toml_names_the_file_not_nix(tmp_path: Path) -> None:
    broken = tmp_path / "inventory.toml"
    broken.write_text('domain = "home.arpa\n')
    with pytest.raises(UserError) as exc:
        load_plan(broken)
    assert str(exc.value).startswith(f"{broken}: not valid TOML: ")


def test_a_directory_is_not_an_inventory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory, not an inventory file"):
        load_plan(tmp_path)
