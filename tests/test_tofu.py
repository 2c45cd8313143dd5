"""`tools tofu export`: golden files, the lxc/incus provider's resource schema (read from its
source, tests/incus-provider/), and no secret of the example in the output."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, requires_nix

from homestack.cli import cli
from homestack.plan import load_plan
from homestack.tofu import PROVIDER_VERSION, export, validate

INCUS = REPO / "tests" / "inventories" / "incus" / "inventory.toml"
GOLDEN = REPO / "tests" / "golden" / "incus"
SCHEMA: dict[str, Any] = json.loads((REPO / "tests" / "incus-provider" / "schema.json").read_text())

pytestmark = requires_nix


@pytest.fixture(scope="module")
def files() -> dict[str, Any]:
    return export(load_plan(INCUS), "homelab")


def test_golden(files: dict[str, Any], tmp_path: Path) -> None:
    """The whole export through the CLI; HOMESTACK_UPDATE_GOLDEN=1 rewrites the files."""
    out = GOLDEN if os.environ.get("HOMESTACK_UPDATE_GOLDEN") else tmp_path / "incus"
    result = CliRunner().invoke(cli, ["tofu", "export", "-i", str(INCUS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name in files:
        assert (out / name).read_text() == (GOLDEN / name).read_text(), name


def test_export_is_valid_against_the_provider_schema(files: dict[str, Any]) -> None:
    assert SCHEMA["tag"] == f"v{PROVIDER_VERSION}"
    assert validate(files, SCHEMA) == []
    declared = {t for doc in files.values() for t in doc.get("resource", {})}
    assert declared == {
        "incus_image", "incus_instance", "incus_network_acl", "incus_network_zone",
        "incus_network_zone_record", "incus_profile", "incus_storage_volume",
    }  # fmt: skip


def test_validation_catches_what_the_provider_would_refuse(files: dict[str, Any]) -> None:
    bad = copy.deepcopy(files)
    res = bad["instances.tf.json"]["resource"]
    res["incus_instance"]["db"]["devices"] = []  # the block is `device`
    del res["incus_instance"]["auth"]["name"]
    res["incus_instance"]["proxy"]["status"] = "Running"  # computed only
    bad["network.tf.json"]["resource"]["incus_network_acl"]["db"]["ingress"][0]["action"] = "permit"
    bad["network.tf.json"]["resource"]["incus_network_bogus"] = {"x": {}}
    assert sorted(validate(bad, SCHEMA)) == sorted([
        "instances.tf.json: incus_instance.db.devices: not an attribute of the provider's schema",
        "instances.tf.json: incus_instance.auth.name: required by the provider's schema",
        "instances.tf.json: incus_instance.proxy.status: computed by the provider, cannot be set",
        "network.tf.json: incus_network_acl.db.ingress[0].action: 'permit' is not one of "
        "['allow', 'allow-stateless', 'drop', 'reject']",
        "network.tf.json: incus_network_bogus is not a resource of lxc/incus",
    ])  # fmt: skip


def test_state_encryption_reads_its_passphrase_from_the_environment(
    files: dict[str, Any],
) -> None:
    main = files["main.tf.json"]
    enc = main["terraform"]["encryption"]
    passphrase = enc["key_provider"]["pbkdf2"]["homestack"]["passphrase"]
    assert passphrase == "${var.state_passphrase}"  # noqa: S105 (a reference, not a secret)
    assert enc["state"]["enforced"] is True
    assert enc["plan"]["enforced"] is True
    var = main["variable"]["state_passphrase"]
    assert var["sensitive"] is True
    assert "default" not in var
    assert main["terraform"]["required_providers"]["incus"] == {
        "source": "lxc/incus", "version": PROVIDER_VERSION,
    }  # fmt: skip


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaves(v)]
    return [str(value)] if value not in (None, "") else []


def test_no_secret_of_the_example_in_the_export(files: dict[str, Any], tmp_path: Path) -> None:
    """Decrypt every sops file of the example with alice's key (the real sops) and look for
    each value, and each line of a multi-line value, in the exported text."""
    key = tmp_path / "alice.agekey"
    key.write_bytes((REPO / "tests" / "keys" / "admin_alice.agekey").read_bytes())
    key.chmod(0o600)
    sops = Path(sys.executable).parent / "sops"
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(key)}
    values: list[str] = []
    sources = sorted((REPO / "secrets").rglob("*.yaml"))
    assert len(sources) >= 10
    for source in sources:
        out = subprocess.run(
            [str(sops), "--decrypt", "--output-type", "json", str(source)],
            check=True, capture_output=True, text=True, env=env,
        ).stdout  # fmt: skip
        for value in _leaves(json.loads(out)):
            values += [value, *(ln.strip() for ln in value.splitlines() if len(ln.strip()) >= 16)]
    secrets = {v for v in values if len(v) >= 8}
    assert len(secrets) >= 10  # wireguard keys, host keys, passwords, the CA key
    text = "\n".join(json.dumps(doc) for doc in files.values())
    assert [s[:6] + "..." for s in secrets if s in text] == []


def test_a_new_image_does_not_replace_an_instance(files: dict[str, Any]) -> None:
    """The provider replaces an instance whose `image` changes (RequiresReplace): that would
    drop its root disk and snapshots on every rebuild, so deploy switches inside instead."""
    instances = files["instances.tf.json"]["resource"]["incus_instance"]
    assert sorted(instances) == ["auth", "db", "proxy", "vpn"]
    assert all(i["lifecycle"] == {"ignore_changes": ["image"]} for i in instances.values())
    bad = copy.deepcopy(files)
    bad["instances.tf.json"]["resource"]["incus_instance"]["db"]["device"][0]["lifecycle"] = {}
    assert any("device[0].lifecycle: not an attribute" in p for p in validate(bad, SCHEMA))
