"""`tools lab --engine incus`: the guests as real Incus containers made from the plan's
resource models, the same oracle with 0 failed, and nothing left after `down`.

The end-to-end test runs the command as a user would, with its own prefix and state
directory; it needs root, the lab's Debian daemons and incus-base (scripts/bootstrap).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, requires_nix
from labenv import lab_environment, run_lab

from homestack.lab import incus
from homestack.plan import load_plan
from homestack.process import default_runner

INCUS_INVENTORY = REPO / "tests" / "inventories" / "incus" / "inventory.toml"
PREFIX = f"hsi{os.getpid()}-"
PROGRAMS = ("ip", "nft", "setpriv", "caddy", "dnsmasq", "psql", "incus", "nsenter")
SERVICES = {"caddy", "dnsmasq", "postgres"}

pytestmark = requires_nix


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    m: dict[str, Any] = load_plan(INCUS_INVENTORY)["artifacts"]["incus"]["homelab"]
    return m


def test_instance_request_is_the_model_plus_the_lab_root(
    models: dict[str, Any], tmp_path: Path
) -> None:
    notes = incus.Degradations()
    inst = models["instances"]["db"]
    req = incus.instance_request(inst, tmp_path, notes, models["keyDir"])
    model_devices = {d["name"]: d for d in inst["devices"]}
    assert req["name"] == "db"
    assert req["type"] == "container"
    assert req["profiles"] == inst["profiles"] == ["homestack"]
    assert req["config"] == {**inst["config"], "raw.lxc": incus.INIT}
    assert req["devices"]["eth0"] == {"type": "nic", **model_devices["eth0"]["properties"]}
    assert req["devices"]["state"] == {"type": "disk", **model_devices["state"]["properties"]}
    # The dir pool holds no root disk quota, and the key directory is the lab's.
    root = dict(model_devices["root"]["properties"])
    assert root.pop("size") == "8192MiB"
    assert req["devices"]["root"] == {"type": "disk", **root}
    assert req["devices"]["host-key"]["source"] == str(tmp_path / "db")
    assert req["devices"]["lab-usr"] == {
        "type": "disk", "source": "/usr", "path": "/usr", "readonly": "true"}  # fmt: skip
    assert notes.notes == []


def test_lab_mounts_share_what_the_daemons_need(tmp_path: Path) -> None:
    from homestack.lab.state import LabPaths

    mounts = incus.lab_mounts(LabPaths(root=tmp_path / "run", prefix="x-", cache=tmp_path))
    assert {m["source"]: (m["path"], m.get("readonly")) for m in mounts.values()} == {
        str(tmp_path / "run"): (str(tmp_path / "run"), None),
        "/dev/shm": ("/dev/shm", None),
        "/etc": ("/etc", "true"),
        str(Path(incus.__file__).parent): (str(Path(incus.__file__).parent), "true"),
    }


def test_vm_kind_is_said_to_run_as_a_container(models: dict[str, Any], tmp_path: Path) -> None:
    notes = incus.Degradations()
    for name in ("auth", "db"):
        inst = {**models["instances"][name], "type": "virtual-machine"}
        assert incus.instance_request(inst, tmp_path, notes, models["keyDir"])["type"] == (
            "container"
        )
    assert notes.notes == ["kind vm runs as a container here (no KVM, no vhost_vsock) [auth, db]"]


def test_lab_preseed_moves_only_the_pool(models: dict[str, Any], tmp_path: Path) -> None:
    notes = incus.Degradations()
    box = incus.Incus(tmp_path / "incus", default_runner)
    preseed = incus.lab_preseed(models, box, notes)
    assert preseed["networks"] == models["preseed"]["networks"]
    assert preseed["profiles"] == models["preseed"]["profiles"]
    assert preseed["storage_pools"] == [{
        "name": "homestack", "driver": "dir", "description": "Homestack guests (tank/incus)",
        "config": {"source": str(tmp_path / "incus-pool")},
    }]  # fmt: skip
    assert models["preseed"]["storage_pools"][0]["driver"] == "zfs"  # the model is untouched
    assert len(notes.notes) == 1


def test_a_microvm_inventory_is_refused_for_the_incus_lab(tmp_path: Path) -> None:
    from conftest import EXAMPLE

    from homestack.errors import UserError
    from homestack.lab.cli import lab_engine

    plan = load_plan(EXAMPLE)
    with pytest.raises(UserError, match='no hypervisor has engine = "incus"'):
        lab_engine(plan, EXAMPLE, "incus")
    assert lab_engine(plan, EXAMPLE, None) == "microvm"


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing or not incus.INCUSD.exists():
        pytest.skip(f"missing {', '.join(missing) or incus.INCUSD} (scripts/bootstrap)")
    with lab_environment("lab-incus-test", PREFIX) as environ:
        yield environ


def _lab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run_lab(env, *args, timeout=300)
    assert result.returncode == 0, f"tools lab {args}: {result.stdout}\n{result.stderr}"
    return result


def _incusd_pids(env: dict[str, str]) -> list[int]:
    mine = env["HOMESTACK_LAB_DIR"]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"INCUS_DIR={mine}".encode() in environ:
                pids.append(int(entry.name))
    return pids


def _daemons_inside(init: int) -> set[str]:
    """The lab's daemons in the network namespace of ``init``, each checked to be in its
    mount namespace too."""
    ns = Path(f"/proc/{init}/ns")
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(init):
            continue
        try:
            name = (proc / "comm").read_text().strip()
            if name in SERVICES and (proc / "ns/net").readlink() == (ns / "net").readlink():
                assert (proc / "ns/mnt").readlink() == (ns / "mnt").readlink(), name
                found.add(name)
        except OSError:
            continue
    return found


def test_up_test_down_on_real_incus(env: dict[str, str], models: dict[str, Any]) -> None:
    up = _lab(env, "up", "-i", str(INCUS_INVENTORY), "--engine", "incus")
    assert "4 Incus containers running (auth, db, proxy, vpn)" in up.stdout
    incus_env = {**env, "INCUS_DIR": f"{env['HOMESTACK_LAB_DIR']}/incus/var"}
    listed = json.loads(subprocess.run(
        ["incus", "query", "/1.0/instances?recursion=2"], env=incus_env, check=True,
        capture_output=True, text=True,
    ).stdout)  # fmt: skip
    assert {i["name"]: i["status"] for i in listed} == dict.fromkeys(models["instances"],
                                                                     "Running")  # fmt: skip
    seen: set[str] = set()
    for inst in listed:
        model = models["instances"][inst["name"]]
        nic = {d["name"]: d for d in model["devices"]}["eth0"]["properties"]
        assert inst["expanded_devices"]["eth0"]["hwaddr"] == nic["hwaddr"]
        assert inst["expanded_devices"]["eth0"]["host_name"] == nic["host_name"]
        assert inst["profiles"] == model["profiles"]
        # A key of the model missing from the instance was refused here, and the lab said so.
        if "security.acls" not in inst["expanded_devices"]["eth0"]:
            assert "per-NIC ACLs refused by this kernel" in up.stdout
            assert inst["name"] in up.stdout.split("per-NIC ACLs refused", 1)[1].split("\n")[0]
        else:
            assert inst["expanded_devices"]["eth0"]["security.acls"] == nic["security.acls"]
        ns = f"{PREFIX}{inst['name']}"
        link = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "eth0"], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
        addr = json.loads(link)[0]
        assert addr["address"] == nic["hwaddr"]
        assert any(a["local"] == nic["ipv4.address"] for a in addr["addr_info"])
        # The guest's daemons run in the container's own mount and network namespaces.
        seen |= _daemons_inside(int(inst["state"]["pid"]))
    assert seen == SERVICES
    acls = json.loads(subprocess.run(
        ["incus", "query", "/1.0/network-acls?recursion=1"], env=incus_env, check=True,
        capture_output=True, text=True,
    ).stdout)  # fmt: skip
    assert {a["name"]: len(a["ingress"]) for a in acls} == {
        m["acl"]["name"]: len(m["acl"]["ingress"]) for m in models["instances"].values()
    }

    test = run_lab(env, "test", "--json", timeout=300)
    report = json.loads(test.stdout)
    assert report["failures"] == 0, test.stdout[-2000:]
    flows = sum(len(rows) for rows in report["matrix"].values())
    assert len(report["checks"]) > 10
    assert flows > 1000
    assert test.returncode == 0

    assert _incusd_pids(env)
    _lab(env, "down")
    assert not Path(env["HOMESTACK_LAB_DIR"]).exists()
    assert not [n for n in Path("/run/netns").iterdir() if n.name.startswith(PREFIX)]
    assert _incusd_pids(env) == []
