"""The lab on a real Incus: the plan's guests as Incus system containers.

`start` runs `incusd` inside the lab's hypervisor namespace (no systemd needed; its state
under the lab directory), applies the rendered preseed, and creates every profile, ACL,
volume and instance from the plan's resource models (lib/render/incus.nix), the very data
`tools tofu export` serializes. Each container's network namespace is then attached under
the lab's name for that guest, so the rest of the lab (addresses, rule sets, daemons, the
oracle) runs unchanged in the containers' own network stacks. `stop` deletes every Incus
object and shuts the daemon down.

What this machine cannot do is changed and said, never hidden: the storage pool is a
directory (no ZFS pool here), a `vm` runs as a container (no KVM), and keys Incus refuses
here (per-NIC ACLs need bridge-family conntrack; cgroup v1 memory limits) are removed from
the instance after Incus refused them, with its error.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.lab import daemons
from homestack.lab.state import LabPaths
from homestack.lab.topology import Topology
from homestack.process import Runner

INCUSD = Path("/usr/libexec/incus/incusd")
# The container's init: the services run in its network namespace (see the module doc).
INIT = "lxc.init.cmd = /usr/bin/sleep infinity"
# Host directories a container sees read-only: its binaries and libraries.
HOST_DIRS = ("/usr",)
MERGED_USR = ("bin", "sbin", "lib", "lib64")


@dataclass
class Degradations:
    """What the lab changed from the resource model on this machine, and why: each kind of
    change once, with the first refusal's words and the guests it applies to."""

    texts: dict[str, str] = field(default_factory=dict)
    guests: dict[str, list[str]] = field(default_factory=dict)

    def add(self, note: str, guest: str = "", *, kind: str = "") -> None:
        key = kind or note
        self.texts.setdefault(key, note.replace(f'"{guest}', '"<guest>') if guest else note)
        names = self.guests.setdefault(key, [])
        if guest and guest not in names:
            names.append(guest)

    @property
    def notes(self) -> list[str]:
        return [
            f"{text} [{', '.join(sorted(self.guests[key]))}]" if self.guests[key] else text
            for key, text in self.texts.items()
        ]


@dataclass(frozen=True)
class Incus:
    """The lab's Incus daemon: its directory, and the `incus` client pointed at it."""

    root: Path
    runner: Runner

    @classmethod
    def of(cls, paths: LabPaths, runner: Runner) -> Incus:
        return cls(paths.root / "incus", runner)

    @property
    def pool_dir(self) -> Path:
        return self.root.parent / "incus-pool"

    @property
    def env(self) -> dict[str, str]:
        return {"INCUS_DIR": str(self.root / "var")}

    def present(self) -> bool:
        return (self.root / "var" / "unix.socket").exists()

    def cli(self, *args: str, check: bool = True, data: Any = None) -> str:
        cmd = ["incus", *args]
        if data is not None:
            cmd += ["--data", json.dumps(data)]
        result = self.runner.run(cmd, check=False, env=self.env)
        if check and result.returncode != 0:
            raise IncusError(" ".join(args[:3]), (result.stderr or result.stdout).strip())
        return result.stdout

    def query(self, method: str, url: str, data: Any = None, check: bool = True) -> Any:
        out = self.cli("query", "--wait", "-X", method, url, data=data, check=check)
        return json.loads(out) if out.strip() else None


class IncusError(UserError):
    def __init__(self, what: str, stderr: str) -> None:
        super().__init__(f"incus {what}: {stderr.splitlines()[-1] if stderr else 'failed'}")
        self.stderr = stderr


def model(plan: dict[str, Any], topo: Topology) -> dict[str, Any]:
    models: dict[str, Any] = plan["artifacts"]["incus"].get(topo.hypervisor.name)
    if models is None:
        raise UserError(
            f"tools lab: hosts.{topo.hypervisor.name} has engine = "
            f"{plan['hosts'][topo.hypervisor.name]['engine']!r}; the Incus lab "
            'needs engine = "incus" in the inventory'
        )
    return models


def lab_preseed(models: dict[str, Any], incus: Incus, notes: Degradations) -> dict[str, Any]:
    """The rendered preseed with the storage pool on a directory of the lab."""
    preseed = copy.deepcopy(models["preseed"])
    for pool in preseed["storage_pools"]:
        notes.add(
            f"storage pool {pool['name']}: driver dir in {incus.pool_dir} instead of "
            f"{pool['driver']} on {pool['config'].get('source')} (no ZFS pool here); "
            "volume and root disk sizes are not enforced by it"
        )
        pool["driver"] = "dir"
        pool["config"] = {"source": str(incus.pool_dir)}
    return preseed


def lab_mounts(paths: LabPaths) -> dict[str, dict[str, str]]:
    """What the lab's daemons need inside a container, at the same paths as on the host:
    its state directory (configurations, sockets, logs), /dev/shm (the database's files),
    the stand-ins' scripts, and /etc (the daemons' users)."""
    shared = {
        "state": (str(paths.root), False),
        "shm": ("/dev/shm", False),
        "scripts": (str(Path(__file__).parent), True),
        "etc": ("/etc", True),
    }
    return {
        f"lab-{name}": {
            "type": "disk",
            "source": src,
            "path": src,
            **({"readonly": "true"} if ro else {}),
        }
        for name, (src, ro) in shared.items()
    }


def instance_request(
    inst: dict[str, Any], key_dir: Path, notes: Degradations, model_key_dir: str
) -> dict[str, Any]:
    """The instance's API request: the resource model, plus what the lab's root file
    system needs, minus what a dir pool cannot hold."""
    devices: dict[str, dict[str, str]] = {}
    for dev in inst["devices"]:
        props = dict(dev["properties"])
        if dev["type"] == "disk" and props.get("source", "").startswith(model_key_dir + "/"):
            props["source"] = str(key_dir / inst["name"])
        if dev["type"] == "disk" and props.get("path") == "/":
            props.pop("size", None)
        devices[dev["name"]] = {"type": dev["type"], **props}
    for host_dir in HOST_DIRS:
        devices[f"lab{host_dir.replace('/', '-')}"] = {
            "type": "disk",
            "source": host_dir,
            "path": host_dir,
            "readonly": "true",
        }
    kind = inst["type"]
    if kind == "virtual-machine":
        notes.add("kind vm runs as a container here (no KVM, no vhost_vsock)", inst["name"])
        kind = "container"
    return {
        "name": inst["name"],
        "type": kind,
        "source": {"type": "none"},
        "profiles": inst["profiles"],
        "config": {**inst["config"], "raw.lxc": INIT},
        "devices": devices,
    }


# Keys Incus may refuse on this machine, tried away one group at a time after a failed
# start, each with what the refusal means.
FALLBACKS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "eth0",
        (
            "security.acls",
            "security.acls.default.ingress.action",
            "security.acls.default.egress.action",
            "security.acls.default.ingress.logged",
            "security.acls.default.egress.logged",
        ),
        "per-NIC ACLs refused by this kernel (Incus: {error}); the guests' and the "
        "hypervisor's rendered nftables enforce the allow matrix instead, as they would too",
    ),
    ("", ("limits.memory",), "limits.memory refused by this machine's cgroups ({error})"),
    ("", ("limits.cpu",), "limits.cpu refused by this machine's cgroups ({error})"),
)


def _start(incus: Incus, name: str, notes: Degradations, hv: str, learned: set[str]) -> None:
    """Start ``name``; each group of keys Incus refuses is removed and noted, one at a time.
    ``learned``: the groups an earlier guest's start showed this machine refuses; they are
    removed before the first try (and noted for this guest too), saving a failed start each."""
    last_error = ""
    tried = [fb for fb in FALLBACKS if fb[2] in learned]
    for device, keys, why in tried:
        if _without(incus, name, device, keys):
            notes.add(why, name, kind=why)  # the text is the first refusal's, kept by kind
    for device, keys, why in (("", (), ""), *(fb for fb in FALLBACKS if fb not in tried)):
        if keys:
            if not _without(incus, name, device, keys):
                continue
            notes.add(why.format(error=last_error), name, kind=why)
        try:
            incus.cli("start", name)
            if why:
                learned.add(why)
            return
        except IncusError as err:
            last_error = _reason(incus, name, err)
            # A NIC that failed to start can leave its host-side veth behind (named by
            # host_name), which the next start would collide with.
            for dev in incus.query("GET", f"/1.0/instances/{name}")["devices"].values():
                if dev.get("type") == "nic" and dev.get("host_name"):
                    incus.runner.run(["ip", "-n", hv, "link", "del", dev["host_name"]], check=False)
    raise UserError(f"tools lab: Incus could not start {name}: {last_error}")


def _without(incus: Incus, name: str, device: str, keys: tuple[str, ...]) -> bool:
    """Remove ``keys`` from the instance's config (or from one of its devices); whether it
    had any of them."""
    inst = incus.query("GET", f"/1.0/instances/{name}")
    config, devices = inst["config"], inst["devices"]
    target = devices[device] if device else config
    if not any(k in target for k in keys):
        return False
    for k in keys:
        target.pop(k, None)
    # PUT, not PATCH: a PATCH merges keys and would keep the ones removed here.
    _put(incus, name, {k: inst[k] for k in WRITABLE if k in inst})
    return True


WRITABLE = ("architecture", "config", "devices", "ephemeral", "profiles", "description")


def _put(incus: Incus, name: str, body: dict[str, Any], timeout: float = 10.0) -> None:
    """Replace an instance's settings, waiting out the stop Incus runs after a failed start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            incus.query("PUT", f"/1.0/instances/{name}", body)
            return
        except IncusError as err:
            if "busy" not in err.stderr or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _reason(incus: Incus, name: str, err: IncusError) -> str:
    """The line that says why a start failed (Incus's own, or LXC's log)."""
    text = err.stderr
    if "forkstart" in text:
        log = incus.cli("info", "--show-log", name, check=False)
        errors = [ln.split(" - ", 1)[-1] for ln in log.splitlines() if " ERROR " in ln]
        if errors:
            return errors[0]
    first = text.splitlines()[0] if text else str(err)
    return first.removeprefix("Error: ")


def start(
    plan: dict[str, Any],
    topo: Topology,
    paths: LabPaths,
    runner: Runner,
    *,
    record: Callable[[daemons.Started], None],
    log: Callable[[str], None],
) -> Degradations:
    """Run incusd in the hypervisor namespace and create the guests from the plan's models;
    attach each container's network namespace as the lab's namespace for that guest."""
    models = model(plan, topo)
    notes = Degradations()
    incus = Incus.of(paths, runner)
    (incus.root / "var").mkdir(parents=True, exist_ok=True)
    incus.pool_dir.mkdir(parents=True, exist_ok=True)
    hv = topo.hypervisor.netns
    runner.run(["ip", "netns", "add", hv], check=True)
    # A routing table must exist before Incus configures its bridge there.
    runner.run(["ip", "-n", hv, "link", "set", "lo", "up"], check=True)
    started = daemons.spawn(
        hv, [str(INCUSD), "--group", "root"], log=paths.root / "logs" / "incusd.log", env=incus.env
    )
    record(started)
    runner.run(["incus", "admin", "waitready", "--timeout", "30"], check=True, env=incus.env)
    runner.run(
        ["incus", "admin", "init", "--preseed"],
        check=True,
        env=incus.env,
        input=json.dumps(lab_preseed(models, incus, notes)),
    )
    log("lab: incusd up in the hypervisor namespace, preseed applied")
    for profile in models["profiles"]:
        incus.query("POST", "/1.0/profiles", {**profile, "devices": {}})
    key_dir = paths.root / "incus-host-keys"
    for name, inst in sorted(models["instances"].items()):
        acl = inst["acl"]
        incus.query(
            "POST",
            "/1.0/network-acls",
            {
                "name": acl["name"],
                "description": acl["description"],
                "ingress": acl["ingress"],
                "egress": acl["egress"],
            },
        )
        for vol in inst["volumes"]:
            incus.query(
                "POST",
                f"/1.0/storage-pools/{vol['pool']}/volumes/custom",
                {"name": vol["name"], "content_type": vol["content_type"], "config": {}},
            )
        (key_dir / name).mkdir(parents=True, exist_ok=True)
        request = instance_request(inst, key_dir, notes, models["keyDir"])
        request["devices"].update(lab_mounts(paths))
        incus.query("POST", "/1.0/instances", request)
        rootfs = incus.pool_dir / "containers" / name / "rootfs"
        for d in ("etc", "proc", "sys", "dev", "tmp", "run", "var", "persist"):
            (rootfs / d).mkdir(exist_ok=True)
        for link in MERGED_USR:
            (rootfs / link).symlink_to(f"usr/{link}")
    learned: set[str] = set()

    def launch(name: str) -> None:
        _start(incus, name, notes, hv, learned)
        pid = incus.query("GET", f"/1.0/instances/{name}/state")["pid"]
        runner.run(["ip", "netns", "attach", paths.prefix + name, str(pid)], check=True)
        # The lab's daemons for this guest run inside the container: its mount and network
        # namespaces (not its user or PID namespace: they keep the host's users).
        daemons.ENTER[paths.prefix + name] = [
            "nsenter",
            f"--target={pid}",
            "--mount",
            "--net",
            "--",
        ]

    # The first guest alone, so the others start knowing what this machine refuses; then
    # the others at once.
    names = sorted(models["instances"])
    if names:
        launch(names[0])
    with ThreadPoolExecutor(max_workers=8) as pool:
        for fut in [pool.submit(launch, n) for n in names[1:]]:
            fut.result()
    log(
        f"lab: {len(models['instances'])} Incus containers running "
        f"({', '.join(sorted(models['instances']))})"
    )
    for note in notes.notes:
        log(f"lab: on this machine: {note}")
    (paths.root / "incus-notes.json").write_text(json.dumps(notes.notes))
    return notes


def stop(paths: LabPaths, runner: Runner, timeout: float = 20.0) -> list[str]:
    """Delete every instance, ACL, volume, profile, network and pool, then shut incusd
    down; return what could not be removed (the caller kills what is left)."""
    incus = Incus.of(paths, runner)
    if not incus.present():
        return []
    if (
        runner.run(
            ["incus", "admin", "waitready", "--timeout", "2"], check=False, env=incus.env
        ).returncode
        != 0
    ):
        return ["incusd, which does not answer,"]
    _delete_all(incus)
    left = _leftovers(incus)
    runner.run(
        ["incus", "admin", "shutdown", "--timeout", str(int(timeout))], check=False, env=incus.env
    )
    deadline = time.monotonic() + timeout
    while incus.present() and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _names(incus: Incus, url: str) -> Iterator[str]:
    for item in incus.query("GET", url, check=False) or []:
        yield str(item).rsplit("/", 1)[-1].split("?")[0]


def _delete_all(incus: Incus) -> None:
    with ThreadPoolExecutor(max_workers=8) as workers:  # each waits for its container to stop
        list(workers.map(lambda n: incus.cli("delete", "--force", n, check=False),
                         list(_names(incus, "/1.0/instances"))))  # fmt: skip
    for acl in _names(incus, "/1.0/network-acls"):
        incus.cli("network", "acl", "delete", acl, check=False)
    for pool in _names(incus, "/1.0/storage-pools"):
        for vol in _names(incus, f"/1.0/storage-pools/{pool}/volumes/custom"):
            incus.cli("storage", "volume", "delete", pool, vol, check=False)
    for profile in _names(incus, "/1.0/profiles"):
        if profile != "default":
            incus.cli("profile", "delete", profile, check=False)
    incus.cli("profile", "device", "remove", "default", "root", check=False)
    for network in _names(incus, "/1.0/networks"):
        incus.cli("network", "delete", network, check=False)
    for pool in _names(incus, "/1.0/storage-pools"):
        incus.cli("storage", "delete", pool, check=False)


def _leftovers(incus: Incus) -> list[str]:
    left = [f"instance {n}" for n in _names(incus, "/1.0/instances")]
    left += [f"storage pool {n}" for n in _names(incus, "/1.0/storage-pools")]
    networks = incus.query("GET", "/1.0/networks?recursion=1", check=False) or []
    left += [f"network {n['name']}" for n in networks if n.get("managed")]
    return left
