"""Names browsers accept (lib/certnames.nix) and `tools certs check` on the example's files.

The rule: a wildcard is valid only where its parent is not a public suffix (home.arpa is
one), so the leaf names every route and guest explicitly. The failure paths run the real
command on a copy of the example repository and check that nothing was written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, nix_eval, requires_nix

from homestack.plan import load_plan

pytestmark = requires_nix
TOOLS = Path(sys.executable).parent / "tools"
OLD_LEAF = REPO / "tests" / "certs" / "home-arpa-wildcard-only.crt"


def nix(expr: str) -> Any:
    return nix_eval(f"let c = import {REPO}/lib/certnames.nix; in {expr}")


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("home.arpa", True),  # RFC 8375, on the list since 2024
        ("lab.home.arpa", False),
        ("arpa", True),
        ("lan", True),  # a single label: every TLD is a suffix, listed or not
        ("internal", True),
        ("example.com", False),
        ("co.uk", True),
        ("example.co.uk", False),
        ("foo.ck", True),  # *.ck
        ("www.ck", False),  # !www.ck
        ("a.kawasaki.jp", True),  # *.kawasaki.jp
        ("city.kawasaki.jp", False),  # !city.kawasaki.jp
        ("appspot.com", False),  # the list's private section does not count for browsers
    ],
)
def test_public_suffix_rule(name: str, suffix: bool) -> None:
    assert nix(f'c.isPublicSuffix "{name}"') is suffix
    assert nix(f'c.wildcardAccepted "{name}"') is (not suffix)


def test_leaf_names_and_acme_errors() -> None:
    names = nix(
        'c.leafNames { domain = "home.arpa"; routeNames = [ "id.home.arpa" "vpn.home.arpa" ]; '
        'guestNames = [ "auth.home.arpa" "vpn.home.arpa" ]; }'
    )
    assert names == ["id.home.arpa", "vpn.home.arpa", "auth.home.arpa"]
    deeper = nix(
        'c.leafNames { domain = "lab.home.arpa"; routeNames = [ "id.lab.home.arpa" ]; '
        "guestNames = [ ]; }"
    )
    assert deeper == ["id.lab.home.arpa", "*.lab.home.arpa"]
    assert nix('c.publicSuffixParents [ "id.home.arpa" "x.lab.home.arpa" ]') == ["home.arpa"]
    acme = 'c.errors { domain = "home.arpa"; certificates.mode = "acme-dns01"; }'
    [message] = nix(acme)
    assert message.startswith("certificates.mode: acme-dns01 cannot work for domain home.arpa: ")
    assert "public suffix" in message and "private-ca" in message
    assert nix('c.errors { domain = "home.arpa"; certificates.mode = "private-ca"; }') == []
    assert nix('c.errors { domain = "lab.example.com"; certificates.mode = "acme-dns01"; }') == []


def test_the_example_plan_names_everything_without_a_wildcard(
    example_plan: dict[str, Any],
) -> None:
    certs = example_plan["certificates"]
    assert certs["names"] == [
        "id.home.arpa", "vpn.home.arpa", "auth.home.arpa", "db.home.arpa", "proxy.home.arpa"
    ]  # fmt: skip
    assert certs["publicSuffixes"] == ["home.arpa"]
    assert set(certs["routeNames"]) <= set(certs["names"])
    assert set(certs["guestNames"]) <= set(certs["names"])


def test_a_deeper_domain_gets_a_wildcard_too(tmp_path: Path) -> None:
    text = (REPO / "inventory.toml").read_text()
    inv = tmp_path / "inventory.toml"
    inv.write_text(text.replace('domain = "home.arpa"', 'domain = "lab.home.arpa"', 1))
    certs = load_plan(inv)["certificates"]
    assert certs["names"][-1] == "*.lab.home.arpa"
    assert "id.lab.home.arpa" in certs["names"]
    assert certs["publicSuffixes"] == []


# --- `tools certs check` on a copy of the example repository ----------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "inventory.toml", repo)
    shutil.copytree(REPO / "certs", repo / "certs")
    shutil.copytree(REPO / "secrets", repo / "secrets")
    key = tmp_path / "alice.agekey"
    shutil.copy(REPO / "tests" / "keys" / "admin_alice.agekey", key)
    key.chmod(0o600)
    (tmp_path / "home").mkdir()
    return repo


def tools(repo: Path, *args: str, admin: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "HOMESTACK_"))}
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = str(repo.parent / "home")  # no ~/.config/sops/age/keys.txt
    env["PATH"] = f"{TOOLS.parent}{os.pathsep}{os.environ['PATH']}"
    if admin:
        env["SOPS_AGE_KEY_FILE"] = str(repo.parent / "alice.agekey")
    return subprocess.run(
        [str(TOOLS), *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )


def digests(repo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file()
    }


def test_the_committed_example_passes_with_and_without_the_admin_key(repo: Path) -> None:
    ok = tools(repo, "certs", "check")
    assert ok.returncode == 0, ok.stderr
    assert "secrets/proxy.yaml [tls/key]: matches certs/wildcard.crt" in ok.stdout
    blind = tools(repo, "certs", "check", admin=False)
    assert blind.returncode == 0, blind.stderr
    assert "secrets/proxy.yaml [tls/key]: not verified: no age identity here" in blind.stdout
    strict = tools(repo, "certs", "check", "--keys", admin=False)
    assert strict.returncode == 2


def test_check_rejects_the_old_wildcard_only_leaf(repo: Path) -> None:
    shutil.copy(OLD_LEAF, repo / "certs" / "wildcard.crt")
    before = digests(repo)
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "certs/wildcard.crt: does not cover route id.home.arpa for browsers: they refuse "
        "*.home.arpa, a wildcard directly under the public suffix home.arpa: "
        "run `tools certs issue`"
    )
    assert lines[1].startswith("certs/wildcard.crt: does not cover route vpn.home.arpa ")
    uncovered = [line.split(" for browsers")[0].split()[-1] for line in lines[:-1]]
    assert uncovered == [
        "id.home.arpa", "vpn.home.arpa", "auth.home.arpa", "db.home.arpa", "proxy.home.arpa"
    ]  # fmt: skip
    assert all(line.endswith("run `tools certs issue`") for line in lines[:-1])
    assert lines[2].startswith("certs/wildcard.crt: does not cover guest name auth.home.arpa ")
    assert lines[-1] == "error: 5 certificate problem(s)"
    assert digests(repo) == before


def test_a_private_key_in_the_certificate_file_is_refused(repo: Path) -> None:
    leaf = repo / "certs" / "wildcard.crt"
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    leaf.write_bytes(leaf.read_bytes() + key)
    before = digests(repo)
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "certs/wildcard.crt: PEM block 3 is a PRIVATE KEY, not a CERTIFICATE: a certificate "
        "file is published (it lands in the world-readable Nix store): remove the block, and "
        "replace that key if it was ever committed",
        "error: 1 certificate problem(s)",
    ]
    assert digests(repo) == before


def test_a_leaf_whose_key_does_not_match_fails_the_default_check(repo: Path) -> None:
    old = (repo / "certs" / "wildcard.crt").read_bytes()
    issued = tools(repo, "certs", "issue")  # a new key in secrets/proxy.yaml ...
    assert issued.returncode == 0, issued.stderr
    (repo / "certs" / "wildcard.crt").write_bytes(old)  # ... beside the old certificate
    before = digests(repo)
    result = tools(repo, "certs", "check")  # what deploy runs: no --keys
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "secrets/proxy.yaml [tls/key]: does not match certs/wildcard.crt",
        "error: 1 certificate problem(s)",
    ]
    blind = tools(repo, "certs", "check", admin=False)  # no key here: said plainly
    assert blind.returncode == 0
    assert "secrets/proxy.yaml [tls/key]: not verified: " in blind.stdout
    assert "ok: chain valid" in blind.stdout
    assert digests(repo) == before


def test_a_garbled_certificate_is_one_clean_line(repo: Path) -> None:
    leaf = repo / "certs" / "wildcard.crt"
    lines = leaf.read_text().splitlines(keepends=True)
    lines[3] = "A" * (len(lines[3]) - 1) + "\n"  # valid base64, broken DER
    leaf.write_text("".join(lines))
    before = digests(repo)
    result = tools(repo, "certs", "check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "certs/wildcard.crt: PEM block 1 is not a valid certificate (damaged or truncated)",
        "error: 1 certificate problem(s)",
    ]
    assert digests(repo) == before
