"""The `tools secrets` commands end to end, with the real sops and a private repository."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from test_secrets_helpers import BOB, KEYS, VECTORS, add_admin, secrets_plan, sops_with, tools

from homestack.inventory import read_inventory
from homestack.secrets.agekeys import (
    read_identities,
    ssh_private_to_identity,
    ssh_to_age,
)
from homestack.secrets.rules import render_rules
from homestack.secrets.sopsfile import read_sops_file

ALICE = "age1x0dtwwdnzcdvdtkvp05nnmxf25y5qq6g5gxd2j9jxp8a0yzhaflqyxs40k"
HOMELAB = "age122rgmw8t3prhp3vtcgqcfzvnl6xgj80xmxs8x3h6c8cu6phhsv8skds0qp"


def test_init_creates_a_0600_key_once(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = tmp_path / "new" / "keys.txt"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key_file))
    code, _, err = tools(capsys, "secrets", "init")
    # alice already has another key in the inventory: refuse to replace it silently
    assert code == 2 and "pass --force" in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    recipient = read_identities(key_file.read_text())[0].recipient
    before = key_file.read_bytes()
    code, out, _ = tools(capsys, "secrets", "init", "--force")
    assert code == 0
    assert f"recipient: {recipient}" in out and "exists, kept" in out
    assert key_file.read_bytes() == before  # never overwritten
    assert read_inventory(repo / "inventory.toml")["users"]["alice"]["age_key"] == recipient
    assert recipient in (repo / ".sops.yaml").read_text()


def test_init_with_the_existing_key(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = tools(capsys, "secrets", "init")
    assert code == 0
    assert "users.alice.age_key already names this key" in out


def test_init_default_location(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SOPS_AGE_KEY_FILE")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tools(capsys, "secrets", "init", "--force")
    key_file = tmp_path / "home/.config/sops/age/keys.txt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


def test_rules_check_and_write(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tools(capsys, "secrets", "rules", "--check")[0] == 0
    add_admin(repo / "inventory.toml", "bob", BOB)
    code, _, err = tools(capsys, "secrets", "rules", "--check")
    assert code == 2 and "stale" in err
    assert tools(capsys, "secrets", "rules")[1] == ".sops.yaml: written (15 rules)\n"
    assert "&admin_bob " + BOB in (repo / ".sops.yaml").read_text()
    assert tools(capsys, "secrets", "rules", "--check")[0] == 0


def test_sops_follows_the_generated_rules(repo: Path, admin_sops: object) -> None:
    # sops itself picks each file's recipients from .sops.yaml: they match the plan
    plan = secrets_plan(repo)
    assert (repo / ".sops.yaml").read_text() == render_rules(plan)
    for spec in plan.specs:
        path = repo / spec.path
        if path.exists():
            assert list(read_sops_file(path).recipients) == list(spec.recipients), spec.path


def test_set_show_round_trip(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret: with 'quotes' and ü\n"))
    code, out, _ = tools(capsys, "secrets", "set", "secrets/ca.yaml", "ca/key")
    assert (code, out) == (0, "secrets/ca.yaml: created with ca/key\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("second\n"))
    assert (
        tools(capsys, "secrets", "set", "secrets/ca.yaml", "ca/other")[1].splitlines()[0]
        == "secrets/ca.yaml: set ca/other"
    )
    code, out, _ = tools(capsys, "secrets", "show", "secrets/ca.yaml")
    assert out == "ca:\n    key: 's3cret: with ''quotes'' and ü'\n    other: second\n"
    assert (
        tools(capsys, "secrets", "show", "secrets/ca.yaml", "ca/key")[1]
        == "s3cret: with 'quotes' and ü\n"
    )
    assert list(read_sops_file(repo / "secrets/ca.yaml").recipients) == [ALICE]


def test_set_refuses_files_outside_the_plan(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("x"))
    code, _, err = tools(capsys, "secrets", "set", "secrets/nope.yaml", "k")
    assert code == 2 and "not a secret file of the plan" in err
    assert not (repo / "secrets/nope.yaml").exists()


def test_show_missing_key_and_wrong_identity(
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bob_key: Path,
) -> None:
    code, _, err = tools(capsys, "secrets", "show", "secrets/auth.yaml", "nope")
    assert code == 2 and "no secret named 'nope'" in err
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(bob_key))
    code, _, err = tools(capsys, "secrets", "show", "secrets/auth.yaml")
    assert code == 2 and "none of your age identities can decrypt" in err


def test_machine_decrypts_its_own_file_only(repo: Path, session_keys: Path, tmp_path: Path) -> None:
    # the guest's converted host key opens its own file, not another guest's
    identity = ssh_private_to_identity((session_keys / "host_auth").read_bytes())
    key_file = tmp_path / "auth.txt"
    key_file.write_text(f"{identity}\n")
    auth = sops_with(key_file)
    assert "dummy-pocket-id" in auth.decrypt(repo / "secrets/auth.yaml")
    with pytest.raises(Exception, match="none of your age identities"):
        auth.decrypt(repo / "secrets/vpn.yaml")
    # the hypervisor opens the guest's host key file, the guest's key does not
    homelab = ssh_private_to_identity((session_keys / "host_homelab").read_bytes())
    (tmp_path / "homelab.txt").write_text(f"{homelab}\n")
    pem = sops_with(tmp_path / "homelab.txt").decrypt(
        repo / "secrets/host-keys/auth.yaml", "ssh_host_ed25519_key"
    )
    assert pem == (session_keys / "host_auth").read_text()


def test_rotate_changes_the_data_key_not_the_values(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before_text = tools(capsys, "secrets", "show", "secrets/vpn.yaml")[1]
    before = (repo / "secrets/vpn.yaml").read_text()
    code, out, _ = tools(capsys, "secrets", "rotate", "secrets/vpn.yaml")
    assert (code, out) == (0, "secrets/vpn.yaml: rotated (new data key)\n")
    after = (repo / "secrets/vpn.yaml").read_text()
    assert after != before
    assert before.split("turn-password: ")[1][:40] != after.split("turn-password: ")[1][:40]
    assert tools(capsys, "secrets", "show", "secrets/vpn.yaml")[1] == before_text


def test_recipients_names_machines_and_users(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = tools(capsys, "secrets", "recipients", "secrets/host-keys/auth.yaml")
    assert code == 0
    assert out.splitlines()[1:] == [
        f"  {ALICE}  alice (admin)",
        f"  {HOMELAB}  homelab (host)",
    ]
    code, out, _ = tools(
        capsys,
        "secrets",
        "recipients",
        "--json",
        str(VECTORS / "generated/ssh.enc.yaml"),
    )
    data = json.loads(out)
    assert data["recipients"][0]["who"].startswith("unknown recipient ssh-ed25519")
    code, out, _ = tools(
        capsys, "secrets", "recipients", str(VECTORS / "generated/shamir.enc.yaml")
    )
    assert "3 key groups, any 2 together decrypt" in out


def test_bootstrap_generates_a_key_for_a_new_guest(
    repo: Path, capsys: pytest.CaptureFixture[str], session_keys: Path, tmp_path: Path
) -> None:
    inventory = repo / "inventory.toml"
    inventory.write_text(
        inventory.read_text()
        + (
            '\n[guests.wiki]\nhost = "homelab"\naddress = "192.168.100.30"\n'
            "vcpu = 1\nmemory = 512\n"
            "services = []\nstate_size = 512\n"
        )
    )
    code, out, err = tools(capsys, "secrets", "bootstrap", "wiki")
    assert code == 0, err
    guest = read_inventory(inventory)["guests"]["wiki"]
    assert guest["host_key"].startswith("ssh-ed25519 ") and guest["host_key"].endswith(" root@wiki")
    assert guest["age_key"] == ssh_to_age(guest["host_key"])
    assert out.startswith(f"wiki: generated secrets/host-keys/wiki.yaml  {guest['age_key']}\n")
    key_file = repo / "secrets/host-keys/wiki.yaml"
    assert list(read_sops_file(key_file).recipients) == [ALICE, HOMELAB]
    # the hypervisor can read the key, and it is the key the inventory names
    homelab = ssh_private_to_identity((session_keys / "host_homelab").read_bytes())
    (tmp_path / "homelab.txt").write_text(f"{homelab}\n")
    pem = sops_with(tmp_path / "homelab.txt").decrypt(key_file, "ssh_host_ed25519_key")
    assert ssh_private_to_identity(pem.encode()).recipient == guest["age_key"]
    # run again: nothing changes; never overwritten without --force
    before = key_file.read_bytes()
    code, out, _ = tools(capsys, "secrets", "bootstrap", "wiki")
    assert code == 0 and out.startswith("wiki: kept")
    assert key_file.read_bytes() == before
    code, out, _ = tools(capsys, "secrets", "bootstrap", "wiki", "--force")
    assert code == 0 and key_file.read_bytes() != before
    assert read_inventory(inventory)["guests"]["wiki"]["age_key"] != guest["age_key"]


def test_bootstrap_refuses_to_replace_a_key_the_inventory_lists(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "secrets/host-keys/db.yaml").unlink()
    code, _, err = tools(capsys, "secrets", "bootstrap", "db")
    assert code == 2 and "import the private key with --key FILE" in err
    code, _, err = tools(capsys, "secrets", "bootstrap", "db", "--key", str(KEYS / "host_auth"))
    assert code == 2 and "not the host key the inventory lists" in err
    repo.chmod(0o755)  # back to the mode the checkout had


def test_bootstrap_records_a_key_whose_inventory_update_was_lost(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a run that stopped after writing the key file but before the inventory: rerun fixes it
    inventory = repo / "inventory.toml"
    text = inventory.read_text()
    line = next(x for x in text.splitlines() if x.startswith("host_key") and "root@proxy" in x)
    inventory.write_text(
        text.replace(
            line,
            'host_key = "ssh-ed25519 '
            'AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKey012 x"',
        )
    )
    code, out, err = tools(capsys, "secrets", "bootstrap", "proxy")
    assert code == 0, err
    assert out.startswith("proxy: recorded")
    assert inventory.read_text() == text


def test_set_notes_a_secret_no_module_reads(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("x"))
    code, out, _ = tools(capsys, "secrets", "set", "secrets/auth.yaml", "typo-key")
    assert code == 0
    assert out.splitlines()[1] == (
        "note: no NixOS module reads typo-key from secrets/auth.yaml "
        "(they read: pocket-id/encryption-key)"
    )


def test_commands_work_from_a_subdirectory_with_repository_paths(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # show and recipients take a path as the other commands do: here, else in the repo
    (repo / "docs").mkdir()
    monkeypatch.chdir(repo / "docs")
    code, out, err = tools(capsys, "secrets", "show", "secrets/vpn.yaml")
    assert code == 0, err
    assert "turn-password" in out
    assert tools(capsys, "secrets", "show", "../secrets/vpn.yaml")[1] == out
    code, out, err = tools(capsys, "secrets", "recipients", "secrets/vpn.yaml", "--json")
    assert code == 0, err
    assert json.loads(out)["recipients"]
    code, _, err = tools(capsys, "secrets", "show", "secrets/nope.yaml")
    assert code == 2
    assert err == f"error: secrets/nope.yaml: no such file (here or in {repo.resolve()})\n"
    code, _, err = tools(capsys, "secrets", "show", "../secrets")
    assert (code, err) == (2, "error: ../secrets: is a directory, not a sops file\n")


def test_inventory_option_after_the_subcommand(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    inventory = str(repo / "inventory.toml")
    before = tools(capsys, "secrets", "-i", inventory, "rules", "--check")
    after = tools(capsys, "secrets", "rules", "--check", "-i", inventory)
    assert before == after
    assert after[0] == 0 and after[1].startswith(".sops.yaml: up to date")
    # the one given last wins
    code, _, err = tools(capsys, "secrets", "-i", "nope.toml", "rules", "-i", inventory)
    assert code == 0, err


def test_bad_inventory_toml_names_the_file(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "inventory.toml").write_text('domain = "unterminated\n')
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2 and err.startswith(f"error: {repo / 'inventory.toml'}: not valid TOML:")
    assert len(err.splitlines()) == 1


def test_failures_on_staged_copies_name_the_repository_file(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    (repo / "secrets/vpn.yaml").write_text("turn-password: [unclosed\n")
    code, _, err = tools(capsys, "secrets", "rotate", "secrets/vpn.yaml")
    assert code == 2 and err.startswith("error: secrets/vpn.yaml: sops rotate failed:"), err
    monkeypatch.setattr("sys.stdin", io.StringIO("x"))
    code, _, err = tools(capsys, "secrets", "set", "secrets/vpn.yaml", "k")
    assert code == 2 and err.startswith("error: secrets/vpn.yaml: not a readable sops file"), err


def test_sync_needs_at_least_one_job(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = tools(capsys, "secrets", "sync", "--jobs", "0")
    assert code == 2 and "0 is not in the range x>=1" in err


def test_group_help_lists_whole_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = tools(capsys, "secrets", "--help")
    assert code == 0
    commands = out.split("Commands:")[1]
    assert "..." not in commands
    assert "-i, --inventory" in tools(capsys, "secrets", "show", "--help")[1]


def test_a_broken_sops_yaml_is_found_and_does_not_stop_the_tools(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    (repo / ".sops.yaml").write_text("creation_rules: [\n")
    code, _, err = tools(capsys, "secrets", "check")
    assert code == 2
    assert ".sops.yaml: not what the inventory gives (run `tools secrets rules`)" in err
    # the commands that stage copies use the plan's rules, not the broken file
    monkeypatch.setattr("sys.stdin", io.StringIO("v"))
    assert tools(capsys, "secrets", "set", "secrets/vpn.yaml", "k")[0] == 0
    assert tools(capsys, "secrets", "rotate", "secrets/vpn.yaml")[0] == 0
    # plain sops (here: show) reads it: say which file is at fault
    code, _, err = tools(capsys, "secrets", "show", "secrets/vpn.yaml")
    assert code == 2
    assert err == (
        "error: secrets/vpn.yaml: sops decrypt failed: the .sops.yaml sops found is not valid "
        "(`tools secrets rules` writes it from the inventory)\n"
    )
    assert tools(capsys, "secrets", "rules")[0] == 0
    code, _, err = tools(capsys, "secrets", "check")
    assert ".sops.yaml" not in err, err


def test_init_names_the_inventory_it_was_given(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "site.toml").write_text((repo / "inventory.toml").read_text())
    code, _, err = tools(capsys, "secrets", "init", "--user", "nobody", "-i", "site.toml")
    assert (code, err) == (
        2,
        "error: site.toml: users.nobody: no such user (add [users.nobody] first)\n",
    )
