"""The service catalogue (lib/services/) and the run-time contract lib checks on the plan
(lib/contracts.nix), evaluated through Nix without nixpkgs; and the NixOS modules that
follow it, evaluated with the stand-ins of tests/nixos/option-paths/ (their values, not
only their option paths).

Each run-time defect the catalogue was made for has a test here that fails on the old
code: the relay's metrics port, cold-boot order and back-off, refquota on every start, and
the unit a rotated WireGuard key restarts."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import EXAMPLE, REPO, nix_eval, requires_nix

from homestack.errors import CheckFailed
from homestack.plan import load_plan

pytestmark = requires_nix


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    return nix_eval("import ./lib/services.nix")


def plan_errors(inventory: dict[str, Any], lib: Path = REPO / "lib") -> list[str]:
    """lib's errors for an inventory (validation, then the run-time contract)."""
    text = tomli_w.dumps(inventory)
    return nix_eval(f"(import {lib}).errorsOf (builtins.fromTOML {json.dumps(text)})")


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


# --- the catalogue ---------------------------------------------------------------------


def test_every_entry_is_complete_and_has_its_module(catalogue: dict[str, Any]) -> None:
    assert set(catalogue) == {
        "caddy", "dnsmasq", "headscale", "netbird-server", "pocket-id", "postgresql", "traefik",
    }  # fmt: skip
    for name, entry in catalogue.items():
        assert (REPO / "modules" / "services" / entry["module"]).is_file(), name
        assert entry["units"] and all(u.endswith(".service") for u in entry["units"]), name
        for port in entry["ports"]:
            assert set(port) == {"name", "port", "proto", "scope"}, (name, port)
            assert port["proto"] in ("tcp", "udp") and port["scope"] in ("any", "loopback")
        for secret in entry["secrets"].values():
            assert {"name", "format", "generator"} <= set(secret), name
        # every port a probe checks is a port the service binds
        bound = {p["port"] for p in entry["ports"]}
        assert all(h["port"] in bound for h in entry["health"]), name
        for need in entry["needs"]:
            assert need["service"] in catalogue, (name, need)
            assert need["port"] in {p["name"] for p in catalogue[need["service"]]["ports"]}


def test_built_in_defaults_are_listed(catalogue: dict[str, Any]) -> None:
    """The ports the binaries bind without being asked (see the sources cited in each file)."""
    netbird = {p["name"]: p["port"] for p in catalogue["netbird-server"]["ports"]}
    assert netbird["management-metrics"] == 9090
    assert netbird["relay-metrics"] == 9092  # not the binary's 9090: management has it
    assert netbird["relay-health"] == 9000
    assert netbird["signal-metrics"] == 9091
    assert netbird["signal-pprof"] == 6060
    caddy = {p["name"]: p for p in catalogue["caddy"]["ports"]}
    assert caddy["admin"]["port"] == 2019 and caddy["admin"]["scope"] == "loopback"


def test_modules_do_not_repeat_the_catalogue(catalogue: dict[str, Any]) -> None:
    """A module takes its ports and secret names from the catalogue (through the plan)."""
    for name, entry in catalogue.items():
        text = (REPO / "modules" / "services" / entry["module"]).read_text()
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        for secret in entry["secrets"].values():
            assert f'"{secret["name"]}"' not in code, (name, secret["name"])
        for port in entry["ports"]:
            assert not re.search(rf"(?<![\d.:/]){port['port']}(?![\d])", code), (name, port)


def test_guest_directories_add_to_the_services() -> None:
    """guests/<g>/ no longer picks service modules; machines.nix adds them from the plan."""
    for guest in (REPO / "guests").iterdir():
        assert "services/" not in (guest / "default.nix").read_text(), guest
    machines = (REPO / "modules" / "machines.nix").read_text()
    assert "map (s: homestackModules.${s}) g.services\n        ++ own" in machines


# --- the plan derived from it ------------------------------------------------------------


def test_plan_lists_every_listening_port_with_its_owner(example_plan: dict[str, Any]) -> None:
    vpn = {(p["port"], p["proto"]): (p["service"], p["name"])
           for p in example_plan["guests"]["vpn"]["listening"]}  # fmt: skip
    assert vpn[(9090, "tcp")] == ("netbird-server", "management-metrics")
    assert vpn[(9092, "tcp")] == ("netbird-server", "relay-metrics")
    assert vpn[(3478, "udp")] == ("netbird-server", "stun")
    proxy = {(p["port"], p["proto"]) for p in example_plan["guests"]["proxy"]["listening"]}
    assert {(53, "udp"), (53, "tcp"), (443, "tcp"), (2019, "tcp")} <= proxy


def test_boot_order_and_dependencies_come_from_the_needs(example_plan: dict[str, Any]) -> None:
    assert example_plan["bootOrder"] == [["db", "proxy"], ["auth"], ["vpn"]]
    needs = {n["need"]: n for n in example_plan["guests"]["vpn"]["needs"]}
    assert needs["pocket-id"]["via"] == ["proxy"] and needs["pocket-id"]["providers"] == ["auth"]
    assert needs["dnsmasq"]["port"] == 53 and needs["dnsmasq"]["proto"] == "udp"
    assert example_plan["guests"]["proxy"]["dependsOn"] == []


def test_health_probes_are_argv(example_plan: dict[str, Any]) -> None:
    auth = example_plan["guests"]["auth"]["health"]
    assert auth == [{
        "kind": "http", "port": 1411, "path": "/.well-known/openid-configuration",
        "service": "pocket-id",
        "argv": ["curl", "--fail", "--silent", "--show-error", "--max-time", "5",
                 "--output", "/dev/null",
                 "http://192.168.100.10:1411/.well-known/openid-configuration"],
    }]  # fmt: skip


def test_secret_formats_are_in_the_plan(example_plan: dict[str, Any]) -> None:
    formats = example_plan["secrets"]["secrets/vpn.yaml"]["formats"]
    assert formats["netbird/datastore-key"] == {"format": "base64:32", "generator": "random"}
    homelab = example_plan["secrets"]["secrets/homelab.yaml"]["formats"]
    assert homelab["netbird/setup-key"]["format"] == "uuid"
    assert homelab["wireguard/private-key"]["generator"] == "wireguard"


# --- the contract ------------------------------------------------------------------------


def test_the_example_keeps_the_contract() -> None:
    assert plan_errors(example()) == []


def test_two_owners_of_one_port_are_named(tmp_path: Path) -> None:
    inv = example()
    inv["guests"]["vpn"]["ports"] = [{"port": 9092, "proto": "tcp"}]
    assert plan_errors(inv) == [
        "guests.vpn.services: port 9092/tcp is bound by both netbird-server (relay-metrics) "
        "and guests.vpn.ports on vpn"
    ]
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    with pytest.raises(CheckFailed) as failed:
        load_plan(path)
    assert failed.value.findings == [
        "inventory.toml: guests.vpn.services: port 9092/tcp is bound by both netbird-server "
        "(relay-metrics) and guests.vpn.ports on vpn"
    ]


def test_the_relay_metrics_clash_is_caught(tmp_path: Path) -> None:
    """The defect the catalogue fixed: the relay keeping its built-in metrics port 9090."""
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "lib", lib)
    entry = lib / "services" / "netbird-server.nix"
    text = entry.read_text()
    assert 'name = "relay-metrics"; port = 9092;' in text
    entry.write_text(
        text.replace('name = "relay-metrics"; port = 9092;', 'name = "relay-metrics"; port = 9090;')
    )
    assert plan_errors(example(), lib) == [
        "guests.vpn.services: port 9090/tcp is bound by both netbird-server "
        "(management-metrics) and netbird-server (relay-metrics) on vpn"
    ]


def test_a_need_without_provider_is_named() -> None:
    inv = example()
    inv["guests"]["proxy"]["services"] = ["caddy"]
    inv["guests"]["proxy"]["allow"] = [
        a for a in inv["guests"]["proxy"]["allow"] if a["port"] != 53
    ]
    assert plan_errors(inv) == [
        "guests.vpn.services: netbird-server on vpn needs dnsmasq (resolves the issuer's name), "
        "but no guest of the inventory runs dnsmasq"
    ]


def test_a_need_the_allow_matrix_blocks_is_named() -> None:
    inv = example()
    proxy = inv["guests"]["proxy"]
    proxy["allow"] = [a for a in proxy["allow"] if not (a["port"] == 53 and a["proto"] == "udp")]
    proxy["allow"].append({"from": ["lan", "auth"], "port": 53, "proto": "udp"})
    assert plan_errors(inv) == [
        "guests.proxy.allow: netbird-server on vpn needs dnsmasq (resolves the issuer's name) "
        "on proxy at 53/udp, but the allow matrix does not let vpn reach proxy:53/udp"
    ]


def test_a_need_through_the_proxy_needs_a_route_to_the_provider() -> None:
    inv = example()
    del inv["guests"]["auth"]["routes"]
    errors = plan_errors(inv)
    assert errors == [
        "guests.auth.routes: netbird-server on vpn needs pocket-id (OIDC discovery at start) "
        "through ingress on proxy, but no route of auth reaches pocket-id's port 1411/tcp"
    ]


# --- adding a service is one catalogue file plus one module ------------------------------

TOY_ENTRY = """\
# A toy service for the test: one HTTP port, one secret, state, and a database.
{
  description = "Toy";
  module = "toy.nix";
  ports = [ { name = "http"; port = 7000; proto = "tcp"; } ];
  health = [ { kind = "http"; port = 7000; path = "/healthz"; } ];
  secrets.token = { name = "toy/token"; format = "hex:16"; generator = "random"; };
  persist = [ "/var/lib/toy" ];
  needs = [ { service = "postgresql"; port = "postgresql"; ifDatabases = true; } ];
}
"""

TOY_MODULE = """\
{ config, ... }:
let entry = (import ../../lib/services.nix).toy;
in { sops.secrets.${entry.secrets.token.name} = { }; }
"""


def test_a_toy_service_is_one_catalogue_file_and_one_module(tmp_path: Path) -> None:
    shutil.copytree(REPO / "lib", tmp_path / "lib")
    shutil.copytree(REPO / "modules", tmp_path / "modules")
    (tmp_path / "lib" / "services" / "toy.nix").write_text(TOY_ENTRY)
    (tmp_path / "modules" / "services" / "toy.nix").write_text(TOY_MODULE)
    inv = example()
    inv["guests"]["toy"] = {
        "host": "homelab", "address": "192.168.100.40", "vcpu": 1, "memory": 256,
        "state_size": 64, "services": ["toy"], "routes": [{"name": "toy", "port": 7000}],
        "databases": [{"name": "toy", "server": "db"}],
    }  # fmt: skip
    text = json.dumps(tomli_w.dumps(inv))
    plan = nix_eval(f"(import ./lib).mkPlanFromAttrs (builtins.fromTOML {text})", tmp_path)
    toy = plan["guests"]["toy"]
    assert toy["listening"] == [
        {"name": "http", "port": 7000, "proto": "tcp", "scope": "any", "service": "toy"}
    ]
    assert toy["health"][0]["argv"][-1] == "http://192.168.100.40:7000/healthz"
    assert toy["persist"] == ["/var/lib/toy"] and toy["units"] == ["toy.service"]
    assert toy["dependsOn"] == ["db"] and "toy" in plan["bootOrder"][1]
    assert plan["secrets"]["secrets/toy.yaml"]["formats"] == {
        "toy/token": {"format": "hex:16", "generator": "random"}
    }
    module = nix_eval("toString (import ./modules).toy", tmp_path)
    assert module == str(tmp_path / "modules" / "services" / "toy.nix")


def test_a_toy_service_on_a_taken_port_is_rejected_naming_both(tmp_path: Path) -> None:
    shutil.copytree(REPO / "lib", tmp_path / "lib")
    (tmp_path / "lib" / "services" / "toy.nix").write_text(
        TOY_ENTRY.replace("port = 7000;", "port = 5432;")
    )
    inv = example()
    inv["guests"]["db"]["services"] = ["postgresql", "toy"]
    assert (
        "guests.db.services: port 5432/tcp is bound by both postgresql (postgresql) "
        "and toy (http) on db" in plan_errors(inv, tmp_path / "lib")
    )


# --- the NixOS modules, evaluated with stand-ins -----------------------------------------

STANDINS = """
let
  lib = import ./tests/nixos/option-paths/lib.nix;
  plan = (import ./lib).plan;
  si = import ./tests/nixos/option-paths/stand-ins.nix {{ inherit lib plan; }};
  base = si.configFor "{machine}";
  config = base // {overrides};
in
"""


def module_value(machine: str, module: str, path: str, overrides: str = "{ }") -> Any:
    args = "{ inherit config lib; inherit (si) pkgs; options = { }; }"
    expr = STANDINS.format(machine=machine, overrides=overrides)
    expr += f"(import ./modules/{module} {args}).{path}"
    return nix_eval(expr)


HYPERVISOR = """{ homestack = base.homestack // { guestConfigurations = lib.genAttrs
  plan.hosts.homelab.guests (g: { config.homestack.persist = [ "/var/lib/x" ]; }); }; }"""


def test_hypervisor_applies_refquota_on_every_start() -> None:
    units = module_value(
        "homelab", "hypervisor.nix", "config.systemd.services.contents", HYPERVISOR
    )[1]
    script = units["homestack-state-db"]["script"]
    lines = [line.strip() for line in script.splitlines()]
    assert any(line.endswith("zfs set refquota=8192M tank/microvms/db") for line in lines)
    # outside the `if ! zfs list` block: it runs on every start, not only at creation
    fi = lines.index("fi")
    assert any(i > fi and "set refquota=" in line for i, line in enumerate(lines))
    assert not any("-o quota=" in line for line in lines)
    assert any(line.endswith("zfs set quota=none tank/microvms/db") for line in lines)


def test_hypervisor_starts_guests_in_boot_order() -> None:
    units = module_value(
        "homelab", "hypervisor.nix", "config.systemd.services.contents", HYPERVISOR
    )[0]
    assert units["microvm@vpn"]["after"] == [
        "microvm@auth.service",
        "microvm@db.service",
        "microvm@proxy.service",
    ]
    assert units["microvm@auth"]["after"] == ["microvm@db.service"]
    assert units["microvm@vpn"]["overrideStrategy"] == "asDropin"
    assert "microvm@db" not in units and "microvm@proxy" not in units


def test_waiting_services_back_off_and_never_give_up() -> None:
    services = module_value("vpn", "guest.nix", "systemd.services")
    assert set(services) == {"netbird-management", "netbird-signal", "netbird-relay"}
    unit = services["netbird-management"]
    assert unit["startLimitIntervalSec"] == 0
    assert unit["serviceConfig"]["RestartSteps"]["content"] > 0
    assert unit["serviceConfig"]["RestartMaxDelaySec"]["content"] == "1min"
    assert set(module_value("auth", "guest.nix", "systemd.services")) == {"pocket-id"}
    assert module_value("db", "guest.nix", "systemd.services") == {}


@pytest.mark.parametrize(("networkd", "unit"), [
    ("false", "wireguard-wg-homestack.service"),
    ("true", "systemd-networkd.service"),
])  # fmt: skip
def test_a_rotated_wireguard_key_restarts_what_reads_it(networkd: str, unit: str) -> None:
    overrides = f"{{ networking = base.networking // {{ wireguard.useNetworkd = {networkd}; }}; }}"
    secret = module_value(
        "homelab", "wireguard.nix", 'content.sops.secrets."wireguard/private-key"', overrides
    )
    assert secret["restartUnits"] == [unit]


def test_the_relay_unit_binds_the_catalogue_ports() -> None:
    env = module_value(
        "vpn", "services/netbird-server.nix", "config.systemd.services.netbird-relay.environment"
    )
    assert env["NB_METRICS_PORT"] == "9092"
    assert env["NB_HEALTH_LISTEN_ADDRESS"] == ":9000"
    assert env["NB_LISTEN_ADDRESS"] == ":33080"


def test_mesh_udp_replies_leave_through_the_tunnel() -> None:
    """STUN forwarded by the relay: the home side routes the guest's replies (by source
    address and port) through the tunnel, so the relay need not rewrite the peer's address."""
    home = module_value(
        "homelab", "wireguard.nix", 'content.networking.wireguard.interfaces."wg-homestack"'
    )
    assert home["table"] == "51820"
    rule = "from 192.168.100.11 ipproto udp sport 3478 lookup 51820 priority 1000"
    assert any(f"rule add {rule}" in line for line in home["postSetup"])
    assert any(f"rule del {rule}" in line for line in home["postShutdown"])
    assert home["peers"][0]["allowedIPs"] == ["10.99.0.1/32", "0.0.0.0/0"]
    relay = module_value(
        "cloud-relay", "wireguard.nix", 'content.networking.wireguard.interfaces."wg-homestack"'
    )
    assert "table" not in relay
    assert relay["peers"][0]["allowedIPs"] == ["10.99.0.2/32", "192.168.100.0/24"]


def test_netbird_and_the_proxy_cannot_share_a_guest() -> None:
    """Both run a Caddy: their admin APIs (localhost:2019) clash, which the plan says."""
    inv = example()
    inv["guests"]["proxy"]["services"] = ["caddy", "dnsmasq", "netbird-server"]
    del inv["guests"]["vpn"]  # the stack has one mesh server
    errors = plan_errors(inv)
    assert (
        "guests.proxy.services: port 2019/tcp is bound by both caddy (admin) and "
        "netbird-server (dashboard-admin) on proxy" in errors
    )


def test_deploy_runs_the_plans_probe(example_plan: dict[str, Any]) -> None:
    """One probe for deploy (which GitOps runs too) and the VM tests: the plan's argv."""
    from homestack.deploy.order import Machine

    vpn = Machine.from_plan(example_plan, "vpn")
    assert [h.command() for h in vpn.health] == [
        h["argv"] for h in example_plan["guests"]["vpn"]["health"]
    ]
    # GitOps has no probes of its own: it runs the deploy engine (`tools gitops`)
    gitops = (REPO / "modules" / "gitops.nix").read_text()
    assert '"gitops"' in gitops
    assert "h.argv" not in gitops and "plan.guests" not in gitops
