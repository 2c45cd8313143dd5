"""lib/ evaluated through Nix (no nixpkgs): the golden plan of the example, every rendered
artifact checked by the real program that reads it, and the bad corpus rejected by Nix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from artifact_checks import caddy_adapt, dnsmasq_test, nft_check, require_programs
from conftest import BAD, EXAMPLE, REPO, expected_key, requires_nix

from homestack.errors import UserError
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


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_inventory_is_rejected_by_nix(path: Path) -> None:
    key = expected_key(path)
    with pytest.raises(UserError) as exc:
        load_plan(path)
    assert str(exc.value).startswith(f"{path.name}: {key}: "), str(exc.value)


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
    assert plan["deployOrder"] == [["cloud-relay", "homelab"], ["db"], ["auth", "vpn"], ["proxy"]]


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
    assert "id.home.arpa {" in text
    assert "reverse_proxy 192.168.100.10:1411" in text
    assert "reverse_proxy h2c://192.168.100.11:10000" in text
    assert "bind 192.168.100.2" in text
    require_programs()
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
    require_programs()
    dnsmasq_test(text, tmp_path)


def test_pg_hba(plan: dict[str, Any]) -> None:
    lines = [
        line.split()
        for line in plan["artifacts"]["pgHba"].splitlines()
        if line and not line.startswith("#")
    ]
    assert ["host", "pocketid", "pocketid", "192.168.100.10/32", "scram-sha-256"] in lines
    assert ["host", "netbird", "netbird", "192.168.100.11/32", "scram-sha-256"] in lines
    assert lines[-1] == ["host", "all", "all", "0.0.0.0/0", "reject"]
    assert not any("192.168.100.2/32" in line for line in lines), "proxy must have no pg_hba line"


def test_guest_nftables(plan: dict[str, Any], tmp_path: Path) -> None:
    rules = plan["artifacts"]["nftables"]
    db = rules["db"]
    assert "policy drop;" in db
    assert "ip saddr { 192.168.100.1, 192.168.100.10, 192.168.100.11 } tcp dport 5432 accept" in db
    assert "192.168.100.2 " not in db.replace("192.168.100.2\n", "")
    assert 'ip saddr != 192.168.100.0/24 udp dport 3478 accept comment "from lan"' in rules["vpn"]
    require_programs()
    for text in rules.values():
        nft_check(text, tmp_path)


def test_bridge_and_host_nftables(plan: dict[str, Any], tmp_path: Path) -> None:
    bridge = plan["artifacts"]["bridgeNftables"]
    assert "table bridge homestack" in bridge
    assert 'iifname "vm-db" ether type ip ip saddr != 192.168.100.20 drop' in bridge
    assert "ip saddr 192.168.100.10 ip daddr 192.168.100.20 tcp dport 5432 accept" in bridge
    assert "ip saddr 192.168.100.2 ip daddr 192.168.100.20 tcp dport" not in bridge
    require_programs()
    nft_check(bridge, tmp_path)
    for text in plan["artifacts"]["hostNftables"].values():
        nft_check(text, tmp_path)


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
    assert "reverse_proxy 192.168.100.30:3000" in p["artifacts"]["caddyfile"]
    assert "host-record=wiki.home.arpa,192.168.100.2" in p["artifacts"]["dnsmasq"]
    assert "host    wiki wiki 192.168.100.30/32 scram-sha-256" in p["artifacts"]["pgHba"]
    assert (
        "ip saddr 192.168.100.2 ip daddr 192.168.100.30 tcp dport 3000 accept"
        in p["artifacts"]["bridgeNftables"]
    )
    assert p["deployOrder"][-1] == ["proxy"] and "wiki" in p["deployOrder"][2]


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
    with pytest.raises(UserError, match="cannot read the inventory"):
        load_plan(tmp_path)
