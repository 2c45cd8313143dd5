"""`tools secrets generate` and `check --values`: values made and checked in the format the
plan gives each secret (lib/services/, lib/secrets.nix), with the real sops."""

# ruff: noqa: F811 - pytest fixtures imported from test_secrets_helpers are parameters here
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, requires_nix
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from test_secrets_helpers import (  # noqa: F401 - fixtures
    DUMMY_SECRETS,
    admin_sops,
    built_repo,
    repo,
    secrets_plan,
    session_keys,
    tools,
)

from homestack.errors import UserError
from homestack.inventory import read_inventory
from homestack.plan import load_plan
from homestack.secrets import generate as gen
from homestack.secrets.sops import Sops
from homestack.secrets.store import set_secret

pytestmark = requires_nix


@given(st.sampled_from(["password", "base64", "hex"]), st.integers(min_value=1, max_value=64))
def test_a_fresh_value_is_of_its_format(kind: str, size: int) -> None:
    fmt = f"{kind}:{size}"
    assert gen.problem(fmt, gen.fresh(fmt)) is None


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("base64:32", "dummy-datastore-key"),  # the placeholder NetBird refused to decode
        ("base64:32", base64.b64encode(b"x" * 16).decode()),  # decodes, but 16 bytes
        ("password:32", "short"),
        ("password:32", "x" * 31 + "!"),
        ("hex:16", "ABCDEF" * 5 + "00"),  # upper case
        ("uuid", "dummy-netbird-setup-key"),
        ("uuid", "00000000-0000-0000-0000-00000000000g"),
        ("wireguard-key", "abc="),
        ("pem-key", "not a key"),
        (
            "openssh-ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        ),
        ("token", ""),
    ],
)
def test_a_bad_value_is_named(fmt: str, value: str) -> None:
    assert gen.problem(fmt, value)


def test_known_good_values_pass() -> None:
    assert gen.problem("uuid", "A616097E-FCF0-48FA-9354-CA4A61142761") is None
    assert gen.problem("openssh-ed25519", (REPO / "tests/keys/host_db").read_text()) is None
    wg = (REPO / "tests/keys/wg_homelab.key").read_text().strip()
    assert gen.problem("wireguard-key", wg) is None


def test_a_wireguard_pair_belongs_together() -> None:
    private, public = gen.wireguard_pair()
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private))
    derived = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64encode(derived).decode() == public


def test_every_secret_of_the_plan_has_a_known_format(example_plan: dict[str, object]) -> None:
    slots = gen.Slot.all_from_plan(example_plan)
    assert ("secrets/vpn.yaml", "netbird/datastore-key", "base64:32") in {
        (s.file, s.key, s.format) for s in slots
    }
    assert {s.key for s in slots if s.generator is gen.Generator.MANUAL} == {"netbird/setup-key"}


def test_the_example_values_match_their_formats(tmp_path: Path) -> None:
    """The committed example secrets are valid (the admin key in tests/keys decrypts them),
    and a value planted in a copy of them is found, naming its file and key."""
    key = tmp_path / "alice.agekey"
    shutil.copy(REPO / "tests/keys/admin_alice.agekey", key)
    key.chmod(0o600)
    sops = Sops(env={"SOPS_AGE_KEY_FILE": str(key), "SOPS_DISABLE_VERSION_CHECK": "1"})
    plan = load_plan(REPO / "inventory.toml")
    slots = gen.Slot.all_from_plan(plan)
    assert gen.check_values(REPO, slots, sops) == []

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "secrets", copy / "secrets")
    shutil.copy(REPO / "inventory.toml", copy / "inventory.toml")
    shutil.copy(REPO / ".sops.yaml", copy / ".sops.yaml")
    set_secret(
        copy,
        secrets_plan(copy),
        "secrets/vpn.yaml",
        "netbird/datastore-key",
        "dummy-datastore-key",
        sops=sops,
    )
    findings = gen.check_values(copy, slots, sops)
    assert [str(f) for f in findings] == [
        "secrets/vpn.yaml: netbird/datastore-key: not base64 of 32 bytes (format base64:32)"
    ]


def test_check_values_cli_flags_a_bad_value(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The built repository holds the placeholders of the old example (DUMMY_SECRETS).
    code, out, _ = tools(capsys, "secrets", "check", "--values", "--json")
    assert code == 2
    found = {(f["path"], f["key"]) for f in json.loads(out)}
    assert ("secrets/vpn.yaml", "netbird/datastore-key") in found
    assert ("secrets/homelab.yaml", "wireguard/private-key") in found  # no such file yet


def test_generate_fills_a_fresh_fork_and_keeps_what_is_there(
    repo: Path, capsys: pytest.CaptureFixture[str], admin_sops: Sops
) -> None:
    before_auth = admin_sops.decrypt(repo / "secrets/auth.yaml")
    code, out, err = tools(capsys, "secrets", "generate", "--json")
    assert code == 0, err
    result = json.loads(out)
    made = {(m["path"], m["key"]) for m in result["made"]}
    assert ("secrets/shared/pg-netbird.yaml", "password") in made
    assert ("secrets/homelab.yaml", "wireguard/private-key") in made
    assert ("secrets/cloud-relay.yaml", "wireguard/private-key") in made
    # existing values are untouched, even where they are not of their format
    assert ("secrets/vpn.yaml", "netbird/datastore-key") not in made
    assert admin_sops.decrypt(repo / "secrets/auth.yaml") == before_auth
    left = {(m["path"], m["key"], m["generator"]) for m in result["left"]}
    assert ("secrets/homelab.yaml", "netbird/setup-key", "manual") in left
    assert ("secrets/ca.yaml", "ca/key", "ca") in left

    # the WireGuard key's public half is in the inventory
    private = admin_sops.decrypt(repo / "secrets/homelab.yaml", "wireguard/private-key")
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private))
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    inventory = read_inventory(repo / "inventory.toml")
    assert inventory["hosts"]["homelab"]["wireguard"]["public_key"] == public

    # a second run has nothing left to make
    code, out, _ = tools(capsys, "secrets", "generate", "--json")
    assert code == 0 and json.loads(out)["made"] == []


def test_generate_replaces_invalid_values_only_when_asked(
    repo: Path, capsys: pytest.CaptureFixture[str], admin_sops: Sops
) -> None:
    assert DUMMY_SECRETS["secrets/vpn.yaml"]["netbird/datastore-key"] == "dummy-datastore-key"
    code, _, err = tools(capsys, "secrets", "generate", "--replace-invalid")
    assert code == 0, err
    value = admin_sops.decrypt(repo / "secrets/vpn.yaml", "netbird/datastore-key")
    assert gen.problem("base64:32", value) is None
    code, out, _ = tools(capsys, "secrets", "check", "--values", "--json")
    left = {(f["path"], f["key"]) for f in json.loads(out)}
    # only what a person or another command makes is left
    assert left == {
        ("secrets/homelab.yaml", "netbird/setup-key"),
        ("secrets/ca.yaml", "ca/key"),
        ("secrets/proxy.yaml", "tls/key"),
    }


def test_an_unknown_format_is_a_user_error() -> None:
    plan = {
        "secrets": {
            "secrets/x.yaml": {
                "keys": ["a"],
                "formats": {"a": {"format": "rot13", "generator": "random"}},
            }
        }
    }
    with pytest.raises(UserError, match="unknown secret format 'rot13'"):
        gen.Slot.all_from_plan(plan)
