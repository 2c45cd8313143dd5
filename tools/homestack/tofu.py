"""`tools tofu export`: the plan's Incus resource models as OpenTofu JSON for lxc/incus.

lib/render/incus.nix decides everything; this module only names the resources and writes
the files. The lab creates its instances from the same models (homestack.lab.incus), so
the export and what the lab tests cannot drift. No secret is ever written here: guests'
host keys reach them as a host directory, and the state passphrase comes from the
environment (TF_VAR_state_passphrase) through OpenTofu's state encryption.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.inventory import find_inventory
from homestack.plan import load_plan

# The provider release whose resource schema tests/incus-provider/schema.json
# records; the export uses only what that schema declares.
PROVIDER_SOURCE = "lxc/incus"
PROVIDER_VERSION = "1.1.1"
PASSPHRASE_VARIABLE = "state_passphrase"  # noqa: S105 (a variable name, not a secret)
IMAGE_DIR_VARIABLE = "image_dir"
# OpenTofu's own arguments of every resource, not the provider's
META_ARGUMENTS = frozenset({"count", "depends_on", "for_each", "lifecycle", "provider"})

Json = dict[str, Any]


def _id(name: str) -> str:
    """A resource name OpenTofu accepts (letters, digits, _ and -; not a leading digit)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise UserError(f"tools tofu export: {name!r} cannot name an OpenTofu resource")
    return name


def incus_hosts(plan: Json) -> list[str]:
    return sorted(plan["artifacts"]["incus"])


def _settings() -> Json:
    """Provider pin, state and plan encryption keyed from the environment, inputs."""
    return {
        "terraform": {
            "required_providers": {
                "incus": {"source": PROVIDER_SOURCE, "version": PROVIDER_VERSION},
            },
            # OpenTofu state and plan encryption (opentofu.org/docs/language/state/encryption):
            # a PBKDF2 key from a passphrase that OpenTofu reads from TF_VAR_state_passphrase
            # (variables are evaluated early in this block), AES-GCM, enforced, so an
            # unencrypted state is never written.
            "encryption": {
                "key_provider": {
                    "pbkdf2": {"homestack": {"passphrase": f"${{var.{PASSPHRASE_VARIABLE}}}"}},
                },
                "method": {
                    "aes_gcm": {"homestack": {"keys": "${key_provider.pbkdf2.homestack}"}},
                },
                "state": {"method": "${method.aes_gcm.homestack}", "enforced": True},
                "plan": {"method": "${method.aes_gcm.homestack}", "enforced": True},
            },
        },
        "variable": {
            PASSPHRASE_VARIABLE: {
                "type": "string",
                "sensitive": True,
                "description": "Encrypts OpenTofu's state and plans; set TF_VAR_state_passphrase.",
            },
            IMAGE_DIR_VARIABLE: {
                "type": "string",
                "description": "Where `tools deploy` puts the flake-built images, one directory "
                "per guest (metadata.tar.xz and rootfs.tar.xz).",
            },
        },
        # The local Incus daemon; a remote or a cluster is configured here (docs/incus.md).
        "provider": {"incus": {}},
    }


def _device(device: Json, refs: dict[str, str]) -> Json:
    props = {k: refs.get(f"{device['name']}.{k}", v) for k, v in device["properties"].items()}
    return {"name": device["name"], "type": device["type"], "properties": props}


def export(plan: Json, host: str) -> dict[str, Json]:
    """The files of ``infra/incus/`` for ``host``: name -> JSON document."""
    models = plan["artifacts"]["incus"].get(host)
    if models is None:
        raise UserError(
            f'tools tofu export: hosts.{host} is not a hypervisor with engine = "incus"'
        )
    instances: Json = models["instances"]
    images: Json = {}
    volumes: Json = {}
    acls: Json = {}
    resources: Json = {}
    for name in sorted(instances):
        inst = instances[name]
        rid = _id(name)
        images[rid] = {
            "source_file": {
                "data_path": f"${{var.{IMAGE_DIR_VARIABLE}}}/{name}/rootfs.tar.xz",
                "metadata_path": f"${{var.{IMAGE_DIR_VARIABLE}}}/{name}/metadata.tar.xz",
            },
            "alias": [{"name": inst["image"], "description": f"NixOS system of guest {name}"}],
        }
        refs: dict[str, str] = {}
        for vol in inst["volumes"]:
            vid = _id(vol["name"])
            volumes[vid] = {
                "name": vol["name"],
                "pool": vol["pool"],
                "content_type": vol["content_type"],
                "config": vol["config"],
            }
            refs.update({
                f"{d['name']}.source": f"${{incus_storage_volume.{vid}.name}}"
                for d in inst["devices"]
                if d["type"] == "disk" and d["properties"].get("source") == vol["name"]
            })  # fmt: skip
        acl = inst["acl"]
        acls[rid] = {
            "name": acl["name"],
            "description": acl["description"],
            "ingress": acl["ingress"],
            "egress": acl["egress"],
        }
        refs["eth0.security.acls"] = f"${{incus_network_acl.{rid}.name}}"
        resources[rid] = {
            "name": inst["name"],
            "type": inst["type"],
            "image": f"${{incus_image.{rid}.fingerprint}}",
            "profiles": [f"${{incus_profile.{_id(models['profile'])}.name}}"],
            "config": inst["config"],
            "device": [_device(d, refs) for d in inst["devices"]],
            # The provider replaces an instance whose image changes (RequiresReplace on
            # `image`, internal/instance/resource_instance.go), which would drop its root
            # disk and snapshots on every rebuild: the image only seeds a new instance, and
            # `tools deploy` switches the system inside it (homestack.deploy.incus).
            "lifecycle": {"ignore_changes": ["image"]},
        }
    profile = next(p for p in models["profiles"] if p["name"] == models["profile"])
    zone = models["zone"]
    records = {
        _id(re.sub(r"[^A-Za-z0-9_-]", "_", r["name"]) if r["name"] != "@" else "apex"): {
            "name": r["name"],
            "zone": "${incus_network_zone.homestack.name}",
            "entry": r["entries"],
        }
        for r in zone["records"]
    }
    return {
        "main.tf.json": _settings(),
        "images.tf.json": {"resource": {"incus_image": images}},
        "network.tf.json": {
            "resource": {
                "incus_network_acl": acls,
                "incus_network_zone": {
                    "homestack": {"name": zone["name"], "description": zone["description"]},
                },
                "incus_network_zone_record": records,
            },
        },
        "instances.tf.json": {
            "resource": {
                "incus_profile": {
                    _id(profile["name"]): {
                        "name": profile["name"],
                        "description": profile["description"],
                        "config": profile["config"],
                    },
                },
                "incus_storage_volume": volumes,
                "incus_instance": resources,
            },
        },
    }


def validate(files: dict[str, Json], schema: Json) -> list[str]:
    """Every resource, attribute and nested attribute in ``files`` against the provider's
    schema (tests/incus-provider/schema.json); [] when all of it is declared."""
    problems: list[str] = []
    types: Json = schema["resources"]

    def check(where: str, body: Json, attrs: Json, *, top: bool = False) -> None:
        for key, value in body.items():
            if top and key in META_ARGUMENTS:
                continue
            decl = attrs.get(key)
            if decl is None:
                problems.append(f"{where}.{key}: not an attribute of the provider's schema")
                continue
            if decl.get("computed") and not (decl.get("optional") or decl.get("required")):
                problems.append(f"{where}.{key}: computed by the provider, cannot be set")
            if (
                "one_of" in decl
                and isinstance(value, str)
                and "${" not in value
                and value not in decl["one_of"]
            ):
                problems.append(f"{where}.{key}: {value!r} is not one of {decl['one_of']}")
            nested = decl.get("attributes")
            if nested:
                items = value if isinstance(value, list) else [value]
                for i, item in enumerate(items):
                    if isinstance(item, dict):
                        check(f"{where}.{key}[{i}]", item, nested)
        for key, decl in attrs.items():
            if decl.get("required") and key not in body:
                problems.append(f"{where}.{key}: required by the provider's schema")

    for fname, doc in sorted(files.items()):
        for rtype, named in doc.get("resource", {}).items():
            if rtype not in types:
                problems.append(f"{fname}: {rtype} is not a resource of {schema['provider']}")
                continue
            for rname, body in named.items():
                check(f"{fname}: {rtype}.{rname}", body, types[rtype], top=True)
    return problems


def write(files: dict[str, Json], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in sorted(files.items()):
        path = out / name
        atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        written.append(path)
    return written


@click.group()
def tofu() -> None:
    """OpenTofu configuration for hypervisors with engine = "incus"."""


@tofu.command("export")
@click.option(
    "--inventory",
    "-i",
    "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Inventory file (default: ./inventory.toml).",
)
@click.option("--host", default=None, help="The Incus hypervisor (default: the only one).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory to write (default: infra/incus next to the inventory).",
)
def export_cmd(inventory_path: Path | None, host: str | None, out: Path | None) -> None:
    """Write infra/incus/*.tf.json from the plan's Incus resource models."""
    path = find_inventory(inventory_path).resolve()
    plan = load_plan(path)
    hosts = incus_hosts(plan)
    if host is None:
        if len(hosts) != 1:
            raise UserError(
                f'{path.name}: no hypervisor has engine = "incus"'
                if not hosts
                else f"tools tofu export: choose --host ({', '.join(hosts)})"
            )
        host = hosts[0]
    target = out if out is not None else path.parent / "infra" / "incus"
    for written in write(export(plan, host), target):
        shown = written.relative_to(Path.cwd()) if written.is_relative_to(Path.cwd()) else written
        click.echo(f"wrote {shown}")
