"""`tools secrets check`: one finding per problem, from metadata alone."""

# ruff: noqa: F811 - pytest fixtures imported from test_secrets_helpers are parameters here
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from test_secrets_helpers import (  # noqa: F401 - fixtures
    BOB,
    DUMMY_SECRETS,
    admin_sops,
    built_repo,
    repo,
    secrets_plan,
    session_keys,
    tools,
)

from homestack.secrets.audit import audit
from homestack.secrets.sops import Sops
from homestack.secrets.store import create_file

CA = "secrets/ca.yaml"
HOMELAB = "secrets/homelab.yaml"


def complete(root: Path, sops: Sops) -> None:
    """Create the files the built repo leaves out, so that `check` passes."""
    plan = secrets_plan(root)
    create_file(root, plan, CA, {"ca": {"key": "dummy"}}, sops)
    create_file(
        root,
        plan,
        HOMELAB,
        {"wireguard": {"private-key": "x"}, "netbird": {"setup-key": "y"}},
        sops,
    )
    create_file(
        root,
        plan,
        "secrets/cloud-relay.yaml",
        {"wireguard": {"private-key": "x"}},
        sops,
    )
    create_file(root, plan, "secrets/proxy.yaml", {"tls": {"key": "x"}}, sops)
    create_file(root, plan, "secrets/shared/pg-netbird.yaml", {"password": "x"}, sops)


def messages(root: Path) -> list[str]:
    return [str(f) for f in audit(root, secrets_plan(root))]


def test_missing_files_and_declared_keys(repo: Path) -> None:
    found = messages(repo)
    assert f"{CA}: missing; it should hold ca/key (the private CA's key (admins only))" in found
    assert not any(f.startswith("secrets/auth.yaml") for f in found)


def test_complete_repository_passes(
    repo: Path, admin_sops: Sops, capsys: pytest.CaptureFixture[str]
) -> None:
    complete(repo, admin_sops)
    assert messages(repo) == []
    code, out, _ = tools(capsys, "secrets", "check")
    assert (code, out) == (
        0,
        "secrets: 15 files match the inventory; MACs verified (14 files decrypted in memory)\n",
    )


def test_least_privilege_and_missing_recipient(
    repo: Path, admin_sops: Sops, capsys: pytest.CaptureFixture[str]
) -> None:
    complete(repo, admin_sops)
    # auth's file copied over vpn's: auth can read vpn's secrets, vpn cannot
    shutil.copyfile(repo / "secrets/auth.yaml", repo / "secrets/vpn.yaml")
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2
    lines = err.splitlines()
    assert "secrets/vpn.yaml: auth (guest on homelab) can decrypt it but should not" in lines
    assert (
        "secrets/vpn.yaml: vpn (guest on homelab) should decrypt it but cannot "
        "(run `tools secrets sync`)" in lines
    )
    for key in DUMMY_SECRETS["secrets/vpn.yaml"]:
        assert (
            f"secrets/vpn.yaml: secret {key} is declared but the file does not contain it" in lines
        )
    assert lines[-1] == "error: secrets: 5 finding(s)"


def test_new_admin_is_a_missing_recipient_everywhere(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_secrets_helpers import add_admin

    add_admin(repo / "inventory.toml", "bob", BOB)
    code, out, _ = tools(capsys, "secrets", "check", "--json")
    assert code == 2
    import json

    findings = json.loads(out)
    bob = [f for f in findings if f["message"].startswith("bob (admin) should decrypt it")]
    assert len(bob) == 9  # the six host keys and three dummy secret files


def test_broken_mac_unknown_recipient_and_orphan(
    repo: Path, admin_sops: Sops, capsys: pytest.CaptureFixture[str]
) -> None:
    complete(repo, admin_sops)
    ca = repo / CA
    ca.write_text(re.sub(r"\n    mac: .*", "", ca.read_text()))
    stranger = "age1sm3335pxw8lmhc3uwwqj5s0nsqqvnlutu0xjg7p7vc62hzpyna9srag25d"
    homelab = repo / HOMELAB
    homelab.write_text(
        homelab.read_text().replace(
            "    age:\n",
            f"    age:\n        - recipient: {stranger}\n          enc: junk\n",
            1,
        )
    )
    shutil.copyfile(repo / "secrets/auth.yaml", repo / "secrets/old-guest.yaml")
    (repo / "secrets/notes.yaml").write_text("just: text\n")
    found = messages(repo)
    assert f"{CA}: broken: no MAC: sops refuses to decrypt it" in found
    assert any(f.startswith(f"{HOMELAB}: broken: age stanza") for f in found)
    assert f"{HOMELAB}: unknown recipient {stranger[:24]}… can decrypt it but should not" in found
    assert (
        "secrets/old-guest.yaml: not a secret file of the plan, yet alice (admin), "
        "auth (guest on homelab) can decrypt it (remove it?)" in found
    )
    assert "secrets/notes.yaml: broken: no sops metadata (not encrypted with sops?)" in found


def test_machine_without_age_key(repo: Path) -> None:
    inventory = repo / "inventory.toml"
    text = inventory.read_text()
    text, count = re.subn(r'host_key = "[^"]*root@db"\nage_key = "[^"]*"\n', "", text)
    assert count == 1
    inventory.write_text(text)
    found = messages(repo)
    assert (
        "secrets/shared/pg-pocketid.yaml: db (guest on homelab) should decrypt it "
        "but has no age key (run `tools secrets bootstrap db`)" in found
    )


def test_check_of_200_files_is_fast(repo: Path, admin_sops: Sops) -> None:
    complete(repo, admin_sops)
    plan = secrets_plan(repo)
    source = (repo / "secrets/auth.yaml").read_bytes()
    for i in range(200):
        (repo / f"secrets/extra-{i}.yaml").write_bytes(source)
    start = time.perf_counter()
    found = audit(repo, plan)
    elapsed = time.perf_counter() - start
    assert len(found) == 200  # each extra file is an orphan
    assert elapsed < 1.0, f"check took {elapsed:.2f} s"


def test_backup_is_held_to_its_file_and_follows_sync(
    repo: Path, admin_sops: Sops, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tools ca init --force` keeps secrets/backup/ca-<UTC>.yaml: admins only, like ca.yaml."""
    complete(repo, admin_sops)
    backup = repo / "secrets/backup/ca-20261122T120000Z.yaml"
    backup.parent.mkdir()
    shutil.copyfile(repo / CA, backup)
    assert messages(repo) == []
    # A backup of the CA key that a machine could read is a least-privilege finding.
    shutil.copyfile(repo / HOMELAB, backup)
    found = messages(repo)
    assert any(
        f.startswith("secrets/backup/ca-20261122T120000Z.yaml: homelab (") and "should not" in f
        for f in found
    ), found
    # A backup of no plan file is still an orphan.
    shutil.copyfile(repo / CA, repo / "secrets/backup/wiki-20261122T120000Z.yaml")
    assert any(
        f.startswith("secrets/backup/wiki-") and "not a secret file" in f for f in messages(repo)
    )


def test_sync_rekeys_backups_with_their_file(
    repo: Path, admin_sops: Sops, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_secrets_helpers import add_admin

    from homestack.secrets.sopsfile import read_sops_file

    complete(repo, admin_sops)
    backup = repo / "secrets/backup/ca-20261122T120000Z.yaml"
    backup.parent.mkdir()
    shutil.copyfile(repo / CA, backup)
    add_admin(repo / "inventory.toml", "bob", BOB)
    code, _, err = tools(capsys, "secrets", "sync")
    assert code == 0, err
    assert BOB in read_sops_file(backup).recipients
    assert messages(repo) == []
