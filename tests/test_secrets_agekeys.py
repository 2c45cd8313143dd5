"""ssh-to-age conversion and age key encoding, against the vectors and the age CLI."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from test_secrets_helpers import KEYS, MACHINES, VECTORS

from homestack.errors import UserError
from homestack.inventory import read_inventory
from homestack.secrets.agekeys import (
    AgeIdentity,
    HostKey,
    bech32_decode,
    bech32_encode,
    ed25519_seed_to_identity,
    read_identities,
    ssh_private_to_identity,
    ssh_to_age,
)
from homestack.secrets.sops import Sops

SOPS_NIX = VECTORS / "sops-nix"
GENERATED = VECTORS / "generated"


def test_sops_nix_host_key_converts_to_its_recipient() -> None:
    # secrets.yaml of sops-nix is encrypted to age1a8pk…, the converted ssh-ed25519-key
    public = (SOPS_NIX / "ssh-ed25519-key.pub").read_text()
    assert ssh_to_age(public) == "age1a8pk4akrdamj7nvqy3zywgtny8dxz7t5xzu7u8v9mhrayp9freqsqatyrs"
    identity = ssh_private_to_identity((SOPS_NIX / "ssh-ed25519-key").read_bytes())
    assert identity.recipient == ssh_to_age(public)


def test_sops_nix_secrets_decrypt_with_the_converted_host_key(tmp_path: Path) -> None:
    identity = ssh_private_to_identity((SOPS_NIX / "ssh-ed25519-key").read_bytes())
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    text = Sops(env={"SOPS_AGE_KEY_FILE": str(key_file)}).decrypt(SOPS_NIX / "secrets.yaml")
    assert text == (SOPS_NIX / "secrets.yaml.decrypted").read_text()


def test_ssh_vector_key_conversions_agree() -> None:
    public = (GENERATED / "ssh_ed25519.pub").read_text()
    private = ssh_private_to_identity((GENERATED / "ssh_ed25519").read_bytes())
    assert private.recipient == ssh_to_age(public)


@pytest.mark.parametrize("machine", MACHINES)
def test_inventory_age_keys_are_the_converted_host_keys(machine: str) -> None:
    inventory = read_inventory(EXAMPLE)
    entry = inventory.get("hosts", {}).get(machine) or inventory["guests"][machine]
    public = (KEYS / f"host_{machine}.pub").read_text()
    assert entry["host_key"].split()[:2] == public.split()[:2]
    assert ssh_to_age(public) == entry["age_key"]
    assert (
        ssh_private_to_identity((KEYS / f"host_{machine}").read_bytes()).recipient
        == entry["age_key"]
    )


def test_admin_identity_file_matches_inventory() -> None:
    identities = read_identities((KEYS / "admin_alice.agekey").read_text())
    inventory = read_inventory(EXAMPLE)
    assert [i.recipient for i in identities] == [inventory["users"]["alice"]["age_key"]]


def test_age_identities_round_trip_through_the_age_cli(tmp_path: Path) -> None:
    # The age CLI encrypts to our converted recipient; our converted identity decrypts.
    key = HostKey.generate("root@test")
    identity_file = tmp_path / "id.txt"
    identity_file.write_text(f"{key.age_identity}\n")
    encrypted = subprocess.run(
        ["age", "-r", key.age_recipient],
        input=b"hello",
        capture_output=True,
        check=True,
    ).stdout
    plain = subprocess.run(
        ["age", "-d", "-i", str(identity_file)],
        input=encrypted,
        capture_output=True,
        check=True,
    ).stdout
    assert plain == b"hello"


def test_age_keygen_identities_parse(tmp_path: Path) -> None:
    out = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    public = next(line for line in out.splitlines() if "public key" in line).split()[-1]
    assert read_identities(out)[0].recipient == public


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=50, deadline=None)
def test_public_and_private_conversions_agree(seed: bytes) -> None:
    key = HostKey.from_private(Ed25519PrivateKey.from_private_bytes(seed), "x")
    assert ssh_to_age(key.public_line) == ed25519_seed_to_identity(seed).recipient


@given(st.binary(max_size=64))
def test_bech32_round_trip(data: bytes) -> None:
    text = bech32_encode("age", data)
    assert bech32_decode(text) == ("age", data)
    assert bech32_decode(text.upper()) == ("age", data)


@given(st.text(max_size=80))
def test_identity_parse_rejects_garbage_cleanly(text: str) -> None:
    with contextlib.suppress(UserError):
        AgeIdentity.parse(text)


def test_bech32_detects_a_changed_character() -> None:
    recipient = ssh_to_age((KEYS / "host_auth.pub").read_text())
    broken = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        bech32_decode(broken)


def test_non_ed25519_keys_are_refused() -> None:
    with pytest.raises(UserError, match="ssh-ed25519"):
        ssh_to_age("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ root@x")
