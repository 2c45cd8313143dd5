"""verify: unwrapping sops data keys with an age identity, checked against the vectors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_secrets_helpers import VECTORS

from homestack.secrets.agekeys import read_identities
from homestack.secrets.sopsfile import parse_sops, read_sops_file
from homestack.secrets.verify import VerifyError, data_key, local_identities, open_mac

G = VECTORS / "generated"


def index_data_keys() -> dict[str, str]:
    """file -> data key (hex), from the vectors' INDEX.md (found by an independent decryptor)."""
    keys = {}
    for line in (VECTORS / "INDEX.md").read_text().splitlines():
        match = re.match(r"\| (generated/[\w.+-]+) \|.*?\| `([0-9a-f]{64})` \|", line)
        if match:
            keys[match.group(1)] = match.group(2)
    return keys


KEYS = index_data_keys()
IDENTITIES = [
    identity
    for name in ("alice", "bob", "carol", "dave")
    for identity in read_identities((G / f"{name}.agekey").read_text())
]


@pytest.mark.parametrize("name", sorted(k for k in KEYS if "shamir" not in k and "ssh" not in k))
def test_data_key_matches_the_index(name: str) -> None:
    sops_file = read_sops_file(VECTORS / name)
    key = data_key(sops_file, IDENTITIES)
    assert key.hex() == KEYS[name]
    assert re.fullmatch(r"[0-9A-F]{128}", open_mac(sops_file, key))


def test_a_wrong_key_does_not_open_the_mac() -> None:
    v1 = read_sops_file(G / "lifecycle.v1.enc.yaml")
    v4 = read_sops_file(G / "lifecycle.v4-rotate.enc.yaml")
    with pytest.raises(VerifyError, match="does not open the MAC"):
        open_mac(v1, data_key(v4, IDENTITIES))


def test_an_identity_that_is_not_a_recipient() -> None:
    v1 = read_sops_file(G / "lifecycle.v1.enc.yaml")  # alice only
    bob = read_identities((G / "bob.agekey").read_text())
    with pytest.raises(VerifyError, match="none of the given identities"):
        data_key(v1, bob)


def test_a_damaged_stanza_does_not_open(tmp_path: Path) -> None:
    text = (G / "lifecycle.v1.enc.yaml").read_text()
    # flip one character of the wrapped key's payload (last base64 line of the armor)
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if "-----END AGE" in line) - 1
    body = lines[i].rstrip("\n")
    lines[i] = body[:-6] + ("A" if body[-6] != "A" else "B") + body[-5:] + "\n"
    damaged = parse_sops("".join(lines).encode(), Path("x.yaml"))
    with pytest.raises(VerifyError):
        data_key(damaged, IDENTITIES)


def test_local_identities_reads_what_sops_reads(tmp_path: Path) -> None:
    env = {"SOPS_AGE_KEY_FILE": str(G / "alice+dave.agekey"), "HOME": str(tmp_path)}
    assert len(local_identities(env)) == 2
    key = (G / "bob.agekey").read_text().splitlines()[-1]
    env = {
        "SOPS_AGE_KEY": key,
        "SOPS_AGE_KEY_FILE": "/nonexistent",
        "HOME": str(tmp_path),
    }
    assert [i.recipient for i in local_identities(env)] == [IDENTITIES[1].recipient]
