"""The Incus engine in lib/: the inventory keys `engine` and `kind`, the rules between
them (lib/validate.nix) and the rendered preseed and resource models (lib/render/incus.nix),
on the example switched to Incus (tests/inventories/incus/inventory.toml)."""

from __future__ import annotations

import ipaddress
import itertools
import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import EXAMPLE, REPO, requires_nix

from homestack.plan import check_inventory, load_plan

INCUS = REPO / "tests" / "inventories" / "incus" / "inventory.toml"

pytestmark = requires_nix


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(INCUS)


@pytest.fixture(scope="module")
def incus(plan: dict[str, Any]) -> dict[str, Any]:
    model: dict[str, Any] = plan["artifacts"]["incus"]["homelab"]
    return model


def test_fixture_is_the_example_with_one_key_more() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    fixture = tomllib.loads(INCUS.read_text())
    assert fixture["hosts"]["homelab"].pop("engine") == "incus"
    assert fixture == example


def test_microvm_is_the_default(example_plan: dict[str, Any]) -> None:
    assert example_plan["hosts"]["homelab"]["engine"] == "microvm"
    assert example_plan["hosts"]["cloud-relay"]["engine"] is None
    assert example_plan["artifacts"]["incus"] == {}
    assert {g["kind"] for g in example_plan["guests"].values()} == {None}


def test_guests_default_to_containers(plan: dict[str, Any]) -> None:
    assert plan["hosts"]["homelab"]["engine"] == "incus"
    assert {g["kind"] for g in plan["guests"].values()} == {"container"}


def _variant(tmp_path: Path, edit: Any) -> list[str]:
    inv = tomllib.loads(INCUS.read_text())
    edit(inv)
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    return check_inventory(path)


def test_vm_kind_is_accepted_on_incus(tmp_path: Path) -> None:
    assert _variant(tmp_path, lambda inv: inv["guests"]["db"].update(kind="vm")) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda inv: (
                inv["hosts"]["homelab"].pop("engine"),
                inv["guests"]["db"].update(kind="vm"),
            ),
            "guests.db.kind: hosts.homelab runs microvm.nix guests (every one a VM);"
            ' kind needs engine = "incus" there',
        ),
        (
            lambda inv: inv["guests"]["db"].update(hypervisor="qemu"),
            'guests.db.hypervisor: hosts.homelab has engine = "incus",'
            " which runs its own QEMU; remove it",
        ),
        (
            lambda inv: inv["hosts"]["cloud-relay"].update(engine="incus"),
            "hosts.cloud-relay.engine: only a hypervisor runs guests; remove it",
        ),
        (
            lambda inv: inv["guests"]["db"].update(kind="lxc"),
            'guests.db.kind: "lxc" is not one of container, vm',
        ),
        (
            lambda inv: inv["hosts"]["homelab"].update(engine="docker"),
            'hosts.homelab.engine: "docker" is not one of microvm, incus',
        ),
    ],
)
def test_engine_rules(tmp_path: Path, edit: Any, expected: str) -> None:
    assert _variant(tmp_path, edit) == [f"inventory.toml: {expected}"]


def test_preseed(incus: dict[str, Any], plan: dict[str, Any]) -> None:
    preseed = incus["preseed"]
    (pool,) = preseed["storage_pools"]
    assert pool == {
        "name": "homestack",
        "driver": "zfs",
        "description": "Homestack guests (tank/incus)",
        "config": {"source": "tank/incus"},
    }
    (bridge,) = preseed["networks"]
    assert bridge["name"] == plan["network"]["bridge"] == "br-guests"
    assert bridge["config"]["ipv4.address"] == "192.168.100.1/24"
    # The hypervisor's own nftables and the proxy's dnsmasq do this; Incus must not.
    for key in ("ipv4.nat", "ipv4.dhcp", "ipv4.firewall"):
        assert bridge["config"][key] == "false"
    assert bridge["config"]["dns.mode"] == "none"
    assert [p["name"] for p in preseed["profiles"]] == ["default"]
    assert [p["name"] for p in incus["profiles"]] == ["homestack"]


def test_instance_model(incus: dict[str, Any], plan: dict[str, Any]) -> None:
    assert sorted(incus["instances"]) == sorted(plan["guests"])
    for name, inst in incus["instances"].items():
        g = plan["guests"][name]
        devices = {d["name"]: d for d in inst["devices"]}
        nic = devices["eth0"]["properties"]
        assert nic["hwaddr"] == g["mac"]
        assert nic["host_name"] == g["tap"]
        assert nic["ipv4.address"] == g["address"]
        assert nic["network"] == "br-guests"
        assert nic["security.acls"] == inst["acl"]["name"] == f"homestack-{name}"
        assert nic["security.acls.default.ingress.action"] == "drop"
        assert nic["security.acls.default.egress.action"] == "drop"
        assert inst["config"]["limits.cpu"] == str(g["vcpu"])
        assert inst["config"]["limits.memory"] == f"{g['memory']}MiB"
        assert inst["type"] == "container"
        (volume,) = inst["volumes"]
        assert volume["config"]["size"] == f"{g['state']['size']}MiB"
        assert devices["state"]["properties"]["source"] == volume["name"]
        assert devices["state"]["properties"]["path"] == "/persist"
        assert devices["host-key"]["properties"]["readonly"] == "true"


def test_vm_kind_renders_a_virtual_machine(tmp_path: Path) -> None:
    inv = tomllib.loads(INCUS.read_text())
    inv["guests"]["db"]["kind"] = "vm"
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    instances = load_plan(path)["artifacts"]["incus"]["homelab"]["instances"]
    assert instances["db"]["type"] == "virtual-machine"
    assert instances["auth"]["type"] == "container"


def test_boot_priority_follows_boot_waves(incus: dict[str, Any], plan: dict[str, Any]) -> None:
    prio = {n: int(i["config"]["boot.autostart.priority"]) for n, i in incus["instances"].items()}
    waves = plan["bootOrder"]
    for earlier, later in itertools.pairwise(waves):
        assert min(prio[g] for g in earlier) > max(prio[g] for g in later)


def _covers(spec: str, address: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            if ipaddress.IPv4Address(lo) <= ip <= ipaddress.IPv4Address(hi):
                return True
        elif ip in ipaddress.IPv4Network(part):
            return True
    return False


def test_acls_are_the_allow_matrix(incus: dict[str, Any], plan: dict[str, Any]) -> None:
    """Every allowed flow is one ingress rule at its target and, between guests, one egress
    rule at its source; nothing else is allowed."""
    rules = 0
    for flow in plan["allow"]:
        acl = incus["instances"][flow["to"]]["acl"]
        match = [
            r
            for r in acl["ingress"]
            if r["destination_port"] == str(flow["port"]) and r["protocol"] == flow["proto"]
            and (flow["fromAddress"] is None or r["source"] == f"{flow['fromAddress']}/32")
        ]  # fmt: skip
        assert match, flow
        if flow["fromKind"] == "guest":
            out = incus["instances"][flow["from"]]["acl"]["egress"]
            assert any(
                r["destination"] == f"{flow['toAddress']}/32"
                and r["destination_port"] == str(flow["port"])
                for r in out
            )
    for inst in incus["instances"].values():
        rules += len(inst["acl"]["ingress"])
        assert all(r["action"] == "allow" for r in inst["acl"]["ingress"] + inst["acl"]["egress"])
    assert rules == len(plan["allow"])


def test_lan_source_is_everything_outside_the_guest_and_tunnel_networks(
    incus: dict[str, Any],
) -> None:
    lan = next(
        r
        for r in incus["instances"]["vpn"]["acl"]["ingress"]
        if r["description"] == "guests.vpn.allow"
    )
    assert _covers(lan["source"], "192.168.1.20")
    assert _covers(lan["source"], "8.8.8.8")
    assert _covers(lan["source"], "0.0.0.1")
    assert _covers(lan["source"], "255.255.255.255")
    assert not _covers(lan["source"], "192.168.100.7")
    assert not _covers(lan["source"], "10.99.0.1")
    assert _covers(lan["source"], "10.98.255.255")
    assert _covers(lan["source"], "10.99.1.0")


def test_zone_records_are_the_plan_dns(incus: dict[str, Any], plan: dict[str, Any]) -> None:
    zone = incus["zone"]
    assert zone["name"] == plan["domain"]
    got = {(f"{r['name']}.{zone['name']}", r["entries"][0]["value"]) for r in zone["records"]}
    assert got == {(r["name"], r["address"]) for r in plan["dns"]}


def test_incus_images_are_wired_per_guest_and_kind(tmp_path: Path) -> None:
    """modules/incus-images.nix with stand-ins for nixpkgs: one package per guest on an Incus
    host, built from that guest's own system with nixpkgs' LXC (or Incus VM) image modules."""
    inv = tomllib.loads(INCUS.read_text())
    inv["guests"]["db"]["kind"] = "vm"
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    expr = f"""
      let
        lib = {{
          filterAttrs = p: s: builtins.removeAttrs s
            (builtins.filter (n: !(p n s.${{n}})) (builtins.attrNames s));
          mapAttrs = builtins.mapAttrs;
        }};
        pkgs.runCommand = name: _: script: {{ inherit name script; }};
        plan = (import {REPO}/lib).mkPlan {path};
        build = modules: {{
          qemuImage = "/qcow";
          tarball = "/rootfs";
          metadata = "/meta";
          modules = map toString modules;
        }};
        configurations = builtins.mapAttrs (_: _: {{
          extendModules = a: {{ config.system.build = build a.modules; }};
        }}) plan.guests;
        images = import {REPO}/modules/incus-images.nix {{
          inherit lib pkgs plan configurations;
          nixpkgs = "/nixpkgs";
        }};
      in builtins.mapAttrs (_: i: i.script) images
    """
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    scripts: dict[str, str] = json.loads(out)
    assert sorted(scripts) == ["auth", "db", "proxy", "vpn"]
    assert "ln -s /meta/tarball/*.tar.xz $out/metadata.tar.xz" in scripts["db"]
    assert "$out/disk.qcow2" in scripts["db"]
    assert "ln -s /rootfs/tarball/*.tar.xz $out/rootfs.tar.xz" in scripts["auth"]


def test_explain_shows_the_engine(plan: dict[str, Any], example_plan: dict[str, Any]) -> None:
    from homestack.explain import describe, to_dot, to_markdown

    incus_md = to_markdown(describe(plan))
    assert "| db | guest on homelab (incus container) |" in incus_md
    assert (
        "| homelab | hypervisor host (x86_64-linux) | root@homelab.lan | | | Incus daemon only |"
        in incus_md
    )
    assert "homelab (hypervisor, Incus)" in to_dot(describe(plan))
    micro = describe(example_plan)
    assert "| db | guest on homelab (cloud-hypervisor) |" in to_markdown(micro)
    assert "homelab (hypervisor, microvm.nix)" in to_dot(micro)
