"""The lab's pure parts: overlays around rendered artifacts, topology, matrix, state."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, REPO, requires_nix

from homestack.errors import UserError
from homestack.lab import daemons, firewall, matrix, overlay
from homestack.lab.lifecycle import _standin_config, all_ports
from homestack.lab.state import LabPaths, LabState, Proc, load_state, save_state
from homestack.lab.topology import Topology
from homestack.plan import load_plan
from homestack.process import Result

CADDY = """# Rendered. Do not edit.

(homestack_tls) {
\ttls /etc/homestack/tls/wildcard.crt /run/secrets/tls/key
}

id.home.arpa {
\timport homestack_tls
\treverse_proxy 192.168.100.10:1411
}
"""


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(EXAMPLE)


def test_caddy_overlay_adds_a_global_block_and_keeps_the_rest(tmp_path: Path) -> None:
    out = overlay.caddyfile(
        CADDY,
        cert=tmp_path / "c.pem",
        key=tmp_path / "k.pem",
        storage=tmp_path / "s",
        rendered_cert="/etc/homestack/tls/wildcard.crt",
        rendered_key="/run/secrets/tls/key",
    )
    head, _, rest = out.partition("}\n\n")
    assert head.startswith("{\n") and "admin off" in head and "auto_https off" in head
    assert f"storage file_system {tmp_path / 's'}" in head
    expected = CADDY.replace(
        "/etc/homestack/tls/wildcard.crt /run/secrets/tls/key",
        f"{tmp_path / 'c.pem'} {tmp_path / 'k.pem'}",
    )
    assert rest == expected


def test_caddy_overlay_rewrites_only_the_plans_certificate_paths(tmp_path: Path) -> None:
    other = CADDY.replace("/run/secrets/tls/key", "/elsewhere/key")
    out = overlay.caddyfile(
        other,
        cert=tmp_path / "c.pem",
        key=tmp_path / "k.pem",
        storage=tmp_path,
        rendered_cert="/etc/homestack/tls/wildcard.crt",
        rendered_key="/run/secrets/tls/key",
    )
    assert "tls /etc/homestack/tls/wildcard.crt /elsewhere/key" in out


def test_caddy_overlay_joins_an_existing_global_block(tmp_path: Path) -> None:
    out = overlay.caddyfile(
        "{\n\temail a@b.c\n}\nx.home.arpa {\n}\n", cert=tmp_path, key=tmp_path, storage=tmp_path
    )
    assert out.count("{") == 2
    assert out.index("admin off") < out.index("email a@b.c")


def test_dnsmasq_overlay_includes_the_rendered_file_unchanged(tmp_path: Path) -> None:
    out = overlay.dnsmasq(tmp_path / "r.conf", pid_file=tmp_path / "p")
    assert f"conf-file={tmp_path / 'r.conf'}" in out.splitlines()
    assert "no-resolv" in out.splitlines()


def test_pg_hba_overlay_keeps_rendered_lines_in_order() -> None:
    rendered = "host a a 10.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 reject\n"
    out = overlay.pg_hba(rendered)
    assert out.endswith(rendered)
    assert next(ln for ln in out.splitlines() if not ln.startswith("#")) == (
        "local all postgres peer"
    )


def test_ruleset_tables_and_idempotent_removal() -> None:
    rs = firewall.Ruleset("ns", "# c\ntable inet homestack {\n}\ntable ip nat {\n}\n", False)
    assert rs.tables == [("inet", "homestack"), ("ip", "nat")]
    assert rs.removal() == (
        "add table inet homestack\ndelete table inet homestack\n"
        "add table ip nat\ndelete table ip nat\n"
    )


def test_filter_hooks_per_family() -> None:
    text = (
        "table bridge b {\n chain forward {\n  type filter hook forward priority 0;\n }\n}\n"
        "table ip n {\n chain p {\n  type nat hook postrouting priority 100;\n }\n}\n"
        "table inet f {\n chain o {\n  type filter hook output priority 0;\n }\n}\n"
    )
    assert firewall.Ruleset("ns", text, True).filter_hooks() == {
        ("bridge", "forward"),
        ("inet", "output"),
    }


def test_state_round_trip(tmp_path: Path) -> None:
    paths = LabPaths(root=tmp_path / "run", prefix="t-", cache=tmp_path / "c")
    assert load_state(paths) is None
    state = (
        LabState(prefix="t-")
        .with_namespaces(["t-a", "t-b"])
        .with_proc(Proc(12, 34, "caddy", "t-a", "x"))
    )
    save_state(paths, state)
    assert load_state(paths) == state
    paths.state_file.write_text("{")
    with pytest.raises(UserError, match="unreadable lab state"):
        load_state(paths)


@requires_nix
def test_topology_follows_the_plan(plan: dict[str, Any]) -> None:
    topo = Topology.from_plan(plan, "p-")
    assert sorted(g.name for g in topo.guests) == sorted(plan["guests"])
    assert topo.hypervisor.netns == "p-homelab"
    assert topo.hypervisor.address == plan["network"]["gateway"]
    assert {g.tap for g in topo.guests} == {g["tap"] for g in plan["guests"].values()}
    assert topo.client.address.startswith("172.31.254."), "a private LAN, as at home"
    assert topo.internet.address.startswith("198.51.100.")
    assert topo.relay is not None and topo.relay.name == "cloud-relay"
    assert topo.relay.address == "10.99.0.1" and topo.tunnel_gateway == "10.99.0.2"
    assert topo.tunnel_interface == plan["relay"]["interface"]
    assert topo.proxy is not None and topo.proxy.name == plan["proxy"]
    assert topo.dns_server == plan["dnsServers"][0]
    hv = topo.hypervisor
    assert topo.address_for(topo.machine("auth"), hv) == "192.168.100.1"
    assert topo.address_for(topo.client, hv) == topo.lan_gateway
    assert topo.address_for(topo.relay, hv) == "10.99.0.2"


@requires_nix
def test_lan_and_internet_subnets_avoid_the_plans_networks(plan: dict[str, Any]) -> None:
    moved = json.loads(json.dumps(plan))
    moved["network"]["cidr"] = "172.31.0.0/16"
    moved["tunnel"]["cidr"] = "198.51.100.0/24"
    topo = Topology.from_plan(moved, "p-")
    assert topo.lan_network == "10.254.254.0/24"
    assert topo.internet_network == "203.0.113.0/24"


@requires_nix
def test_matrix_covers_every_path_and_port(plan: dict[str, Any]) -> None:
    topo = Topology.from_plan(plan, "p-")
    ports = all_ports(plan)
    assert {"port": 123, "proto": "udp"} in ports and {"port": 51820, "proto": "udp"} in ports
    flows = matrix.all_flows(topo, ports)
    guests = len(topo.guests)
    into = (guests + 3) * guests - guests  # guests, hypervisor, LAN client, relay
    routed = guests * (guests - 1)
    around = guests * 4 + 2 + 3  # guests -> hv/lan/internet/relay; lan -> hv/relay; relay ->
    assert len(flows) == (into + routed + around) * len(ports)
    assert len(set(flows)) == len(flows)
    allowed = matrix.allowed_flows(plan, topo)
    assert allowed <= set(flows)
    Flow = matrix.Flow
    assert Flow("proxy", "db", 5432, "tcp") not in allowed
    assert Flow("auth", "db", 5432, "tcp") in allowed
    assert Flow("auth", "db", 5432, "tcp", matrix.ROUTED) in allowed
    assert Flow("proxy", "internet", 53, "udp") in allowed
    assert Flow("auth", "internet", 53, "udp") not in allowed
    assert Flow("auth", "homelab", 123, "udp") in allowed
    assert Flow("auth", "homelab", 22, "tcp") not in allowed
    assert Flow("lan", "homelab", 22, "tcp") in allowed
    assert Flow("cloud-relay", "proxy", 443, "tcp") in allowed
    assert Flow("cloud-relay", "proxy", 53, "tcp") not in allowed, "the tunnel is not the LAN"
    assert not any(f.dst in {"lan", "cloud-relay"} for f in allowed)
    assert not any(
        f.src == "cloud-relay" and f.dst in {"lan", "internet", "homelab"} for f in allowed
    )


def _grown(guests: int, tmp_path: Path) -> dict[str, Any]:
    """The plan of the example grown to `guests` guests (bench/lab.py's inventory)."""
    spec = importlib.util.spec_from_file_location("bench_lab", REPO / "bench" / "lab.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / f"inventory-{guests}.toml"
    path.write_text(bench.grown(guests))
    return load_plan(path)


@requires_nix
def test_matrix_grows_with_the_flows_not_the_pairs(plan: dict[str, Any], tmp_path: Path) -> None:
    """A small lab probes every pair of guests; a large one every allowed flow and every
    port of the pairs that have one, plus STRANGERS pairs per guest that have none."""
    topo = Topology.from_plan(plan, "p-")
    ports = all_ports(plan)
    allowed = matrix.allowed_flows(plan, topo)
    assert set(matrix.all_flows(topo, ports, allowed)) == set(matrix.all_flows(topo, ports))
    counts = {}
    for n in (10, 20, 30):
        big = _grown(n, tmp_path)
        topo = Topology.from_plan(big, "p-")
        ports = all_ports(big)
        allowed = matrix.allowed_flows(big, topo)
        probed = matrix.all_flows(topo, ports, allowed)
        assert allowed <= set(probed)
        assert len(set(probed)) == len(probed)
        pairs = {(f.src, f.dst, f.path) for f in probed}
        guests = {g.name for g in topo.guests}
        for g in guests:
            strangers = (
                {s for s, d, _ in pairs if d == g and s in guests}
                - {f.src for f in allowed if f.dst == g}
                - {f.dst for f in allowed if f.src == g}
            )
            assert len(strangers) <= matrix.STRANGERS, g
            assert strangers or g in {"proxy", "db"}, f"{g} is probed from no stranger"
        # app0 has flows with the proxy and the database only: it is probed from those
        # two, two strangers, and the machines outside the guest network.
        into_app0 = {s for s, d, path in pairs if d == "app0" and path == matrix.DIRECT}
        assert {"proxy", "db"} <= into_app0 and len(into_app0 & guests) == 4
        counts[n] = (len(allowed), len(pairs))
    # Pairs grow as the flows do: 10 more guests add the same number of both each time.
    (f10, p10), (f20, p20), (f30, p30) = counts[10], counts[20], counts[30]
    assert f30 - f20 == f20 - f10 and p30 - p20 == p20 - p10
    assert p30 < 30 * 29, "fewer pairs than every pair of guests"


@requires_nix
def test_standins_leave_real_daemon_ports_alone(plan: dict[str, Any]) -> None:
    topo = Topology.from_plan(plan, "p-")
    proxy = _standin_config(plan, topo.machine("proxy"))
    assert 443 not in proxy["tcp"] and 53 not in proxy["udp"]
    assert proxy["label"] == "port listener"
    auth = _standin_config(plan, topo.machine("auth"))
    assert auth["label"] == "PocketID stand-in" and 1411 in auth["tcp"]
    assert auth["issuer"] == "https://id.home.arpa"


def test_flow_result_gap_is_only_for_unguarded_blocked_flows() -> None:
    flow = matrix.Flow("lan", "homelab", 5432, "tcp")
    assert matrix.FlowResult(flow, False, "open", guarded=False).gap
    assert matrix.FlowResult(flow, False, "open", guarded=False).ok
    assert not matrix.FlowResult(flow, False, "open", guarded=True).ok
    assert not matrix.FlowResult(flow, True, "dropped", guarded=False).ok


@requires_nix
def test_guest_layer_is_responsible_only_for_flows_a_guest_takes_part_in(
    plan: dict[str, Any],
) -> None:
    topo = Topology.from_plan(plan, "p-")

    def guarded_in(mode: firewall.Mode, strict: bool = False) -> dict[matrix.Flow, bool]:
        guarded = matrix.responsible(topo, mode, strict=strict)
        flows = matrix.all_flows(topo, [{"port": 22, "proto": "tcp"}])
        return {f: guarded(f) for f in flows}

    guest = guarded_in(firewall.Mode.GUEST)
    assert guest[matrix.Flow("auth", "homelab", 22, "tcp")]
    assert guest[matrix.Flow("auth", "db", 22, "tcp", matrix.ROUTED)]
    assert not guest[matrix.Flow("lan", "homelab", 22, "tcp")]
    assert not guest[matrix.Flow("cloud-relay", "lan", 22, "tcp")]
    assert all(guarded_in(firewall.Mode.BRIDGE).values())
    assert all(guarded_in(firewall.Mode.GUEST, strict=True).values())


NFT_ERROR = """/dev/stdin:3:13-17: Error: Service out of range
  tcp dport 99999 drop
            ^^^^^
"""


def test_a_failed_program_shows_its_whole_message_under_its_own_name() -> None:
    args = ("ip", "netns", "exec", "hslab-proxy", "setpriv", "--reuid=0", "nft", "-f", "-")
    message = daemons.failure_message(Result(args, 1, "", NFT_ERROR))
    assert message == (
        "nft (in hslab-proxy): exit code 1:\n"
        "    /dev/stdin:3:13-17: Error: Service out of range\n"
        "      tcp dport 99999 drop\n"
        "                ^^^^^"
    )


def test_a_long_message_keeps_its_end_and_says_what_was_cut() -> None:
    err = "".join(f"line {i}\n" for i in range(30))
    message = daemons.failure_message(Result(("/usr/lib/postgresql/15/bin/initdb",), 1, "", err))
    lines = message.splitlines()
    assert lines[0] == "initdb: exit code 1:"
    assert lines[1] == "    (… 18 earlier lines)"
    assert lines[-1] == "    line 29" and len(lines) == 14


def test_a_silent_failure_names_the_program_and_its_exit_code() -> None:
    result = Result(("ip", "-n", "hslab-db", "-batch", "-"), 2, "", "")
    assert daemons.failure_message(result) == "ip: exit code 2"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="nft needs root")
def test_the_lab_runner_raises_nfts_own_message() -> None:
    bad = "table inet t {\n chain c {\n  tcp dport 99999 drop\n }\n}\n"
    with pytest.raises(UserError) as err:  # -c: checks the rule set, changes nothing
        daemons.runner.run(["nft", "-c", "-f", "-"], check=True, input=bad)
    lines = str(err.value).splitlines()
    assert lines[0] == "nft: exit code 1:"
    assert "Error: " in lines[1] and lines[2].strip() == "tcp dport 99999 drop"
    assert set(lines[3].strip()) == {"^"}
