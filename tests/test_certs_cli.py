"""`tools ca` / `tools certs` end to end on a copy of the example inventory: output, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE

from homestack.inventory import set_inventory_value

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.executable).parent / "tools"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(EXAMPLE, repo / "inventory.toml")
    key = tmp_path / "alice.agekey"
    shutil.copy(REPO / "tests/keys/admin_alice.agekey", key)
    key.chmod(0o600)
    return repo


def tools(repo: Path, *args: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{TOOLS.parent}{os.pathsep}{os.environ['PATH']}",
        "SOPS_AGE_KEY_FILE": str(key or repo.parent / "alice.agekey"),
    }
    env.pop("HOMESTACK_INVENTORY", None)
    return subprocess.run(
        [str(TOOLS), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_whole_cycle(repo: Path) -> None:
    init = tools(repo, "ca", "init")
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines()[0] == "created Homestack CA home.arpa (ECDSA P-384)"
    assert "  permits      DNS home.arpa, no IP address" in init.stdout
    assert "(3650 days)" in init.stdout
    again = tools(repo, "ca", "init")
    assert again.returncode == 2
    assert again.stderr == (
        "error: certs/ca.crt and secrets/ca.yaml: a CA already exists; `tools ca init --force` "
        "replaces it (the old one is kept in a backup/ directory next to it)\n"
    )
    missing = tools(repo, "certs", "check")
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "certs/wildcard.crt: not found: run `tools certs issue`",
        "error: 1 certificate problem(s)",
    ]
    issued = tools(repo, "certs", "issue")
    assert issued.returncode == 0, issued.stderr
    assert (
        issued.stdout.splitlines()[0]
        == "issued id.home.arpa, vpn.home.arpa, auth.home.arpa, db.home.arpa, proxy.home.arpa "
        "(ECDSA P-256, serverAuth)"
    )
    ok = tools(repo, "certs", "check", "--keys")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-3:] == [
        "  covers id.home.arpa, vpn.home.arpa for browsers",
        "secrets/proxy.yaml [tls/key]: matches certs/wildcard.crt",
        "ok: chain and key valid, nothing expires within 30 days",
    ]
    due = tools(repo, "certs", "check", "--days", "100")
    assert due.returncode == 2
    assert len(due.stderr.splitlines()) == 2
    assert "certs/wildcard.crt: expires on" in due.stderr
    quiet = tools(repo, "certs", "renew")
    assert quiet.returncode == 0
    assert quiet.stdout.endswith("(90 days); nothing to renew\n")
    forced = tools(repo, "certs", "renew", "--days", "100")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("due: certs/wildcard.crt: expires on")
    rotated = tools(repo, "ca", "init", "--force")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("kept the old one as certs/backup/ca-")
    stale = tools(repo, "certs", "check")
    assert stale.returncode == 2
    assert stale.stderr.startswith("certs/wildcard.crt: signed by an earlier CA of the same name")
    assert tools(repo, "certs", "renew").returncode == 0
    assert tools(repo, "certs", "check", "--keys").returncode == 0


def test_missing_ca(repo: Path) -> None:
    result = tools(repo, "certs", "issue")
    assert (result.returncode, result.stderr) == (
        2,
        "error: certs/ca.crt: not found: run `tools ca init` first\n",
    )
    trust = tools(repo, "ca", "trust")
    assert (trust.returncode, trust.stderr) == (2, "error: certs/ca.crt: not found\n")


def test_corrupt_certificates(repo: Path) -> None:
    assert tools(repo, "ca", "init").returncode == 0
    ca = repo / "certs/ca.crt"
    good = ca.read_bytes()
    ca.write_bytes(good[:200] + b"garbage" + good[200:])
    result = tools(repo, "certs", "issue")
    assert result.returncode == 2
    assert result.stderr == (
        "error: certs/ca.crt: PEM block 1 is not a valid certificate (damaged or truncated)\n"
    )
    ca.write_text("not a certificate\n")
    result = tools(repo, "certs", "issue")
    assert (result.returncode, result.stderr) == (
        2,
        "error: certs/ca.crt: not a PEM certificate\n",
    )
    ca.write_bytes(good)
    assert tools(repo, "certs", "issue").returncode == 0
    (repo / "certs/wildcard.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        "certs/wildcard.crt: PEM block 1 is not a valid certificate (damaged or truncated)"
    )
    assert tools(repo, "certs", "renew").returncode == 0
    assert tools(repo, "certs", "check").returncode == 0


def test_wrong_keys(repo: Path, tmp_path: Path) -> None:
    assert tools(repo, "ca", "init").returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(repo / "inventory.toml", other / "inventory.toml")
    assert tools(other, "ca", "init", key=repo.parent / "alice.agekey").returncode == 0
    shutil.copy(other / "secrets/ca.yaml", repo / "secrets/ca.yaml")
    result = tools(repo, "certs", "issue")
    assert (result.returncode, result.stderr) == (
        2,
        (
            "error: secrets/ca.yaml [ca/key]: this key does not belong to certs/ca.crt "
            "(restore the matching pair, or `tools ca init --force`)\n"
        ),
    )
    stranger = tmp_path / "stranger.agekey"
    subprocess.run(["age-keygen", "-o", str(stranger)], capture_output=True, check=True)
    result = tools(repo, "certs", "issue", key=stranger)
    assert (result.returncode, result.stderr) == (
        2,
        (
            "error: secrets/ca.yaml: sops decrypt failed: none of your age identities can "
            "decrypt its data key (looked at $SOPS_AGE_KEY_FILE and ~/.config/sops/age/keys.txt)\n"
        ),
    )
    assert not (repo / "certs/wildcard.crt").exists()


def test_acme_dns01_mode(repo: Path) -> None:
    set_inventory_value(repo / "inventory.toml", ["certificates", "mode"], "acme-dns01")
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(
        "inventory.toml: certificates.acme_email: missing required key"
    )
    assert "inventory.toml: certificates.mode: acme-dns01 cannot work for domain home.arpa" in (
        result.stderr
    )
    set_inventory_value(repo / "inventory.toml", ["domain"], "home.example.org")
    set_inventory_value(repo / "inventory.toml", ["certificates", "acme_email"], "a@example.org")
    note = (
        "certificates.mode = acme-dns01: the proxy obtains and renews *.home.example.org, "
        "home.example.org itself through security.acme (lego, DNS-01 via Cloudflare, token in "
        "secrets/proxy.yaml [cloudflare/api-token]); Caddy serves the files\n"
    )
    for command in (["certs", "issue"], ["certs", "renew"]):
        result = tools(repo, *command)
        assert (result.returncode, result.stdout) == (0, note), result.stderr
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "secrets/proxy.yaml: has no cloudflare/api-token (the Cloudflare API token)",
        "error: 1 certificate problem(s)",
    ]
    result = tools(repo, "ca", "init")
    assert result.returncode == 2
    assert result.stderr.startswith("error: certificates.mode is acme-dns01: ")
    assert not (repo / "certs").exists()


def test_inventory_option_and_trust_output(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inventory = str(repo / "inventory.toml")
    assert tools(elsewhere, "ca", "-i", inventory, "init").returncode == 0
    assert (repo / "certs/ca.crt").is_file()
    assert not (elsewhere / "certs").exists()
    shown = tools(repo, "ca", "trust", "--platform", "debian")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "Homestack CA home.arpa  (certs/ca.crt)"
    assert lines[1].startswith("  SHA-256  ")
    assert lines[2].startswith("  permits  DNS home.arpa, no IP address; valid until ")
    assert (
        "  sudo cp certs/ca.crt /usr/local/share/ca-certificates/homestack-home.arpa.crt" in lines
    )
    assert "  sudo update-ca-certificates" in lines
    far = tools(elsewhere, "ca", "-i", inventory, "trust", "--platform", "macos")
    assert f"-k /Library/Keychains/System.keychain {repo}/certs/ca.crt" in far.stdout


def test_check_json_and_inventory_after_the_subcommand(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inventory = str(repo / "inventory.toml")
    assert tools(elsewhere, "ca", "init", "-i", inventory).returncode == 0
    missing = tools(elsewhere, "certs", "check", "--json", "-i", inventory)
    assert missing.returncode == 2 and missing.stderr == ""
    report = json.loads(missing.stdout)
    assert report["ok"] is False and report["mode"] == "private-ca"
    assert [f["subject"] for f in report["findings"]] == ["certs/wildcard.crt"]
    assert tools(elsewhere, "certs", "issue", "-i", inventory).returncode == 0
    ok = tools(elsewhere, "certs", "check", "--json", "-i", inventory)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True and report["findings"] == []
    assert [c["path"] for c in report["certificates"]] == ["certs/ca.crt", "certs/wildcard.crt"]
    assert report["certificates"][1]["names"] == [
        "id.home.arpa", "vpn.home.arpa", "auth.home.arpa", "db.home.arpa", "proxy.home.arpa"
    ]  # fmt: skip


def test_bad_inventory_toml_names_the_file(repo: Path) -> None:
    (repo / "inventory.toml").write_text("[hosts\n")
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {repo / 'inventory.toml'}: not valid TOML:")
    assert len(result.stderr.splitlines()) == 1
