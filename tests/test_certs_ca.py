"""tools ca init: the root's shape, its name constraints under `openssl verify`, the key in sops."""

from __future__ import annotations

import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from homestack.certs import _sops
from homestack.certs.ca import Authority, build_root, init_ca, load_authority
from homestack.certs.certfile import (
    key_from_pem,
    load_certificate,
    permitted_subtrees,
    same_public_key,
    to_pem,
)
from homestack.certs.issue import build_leaf
from homestack.certs.settings import CertSettings
from homestack.errors import UserError
from homestack.process import Call, Result, Runner

REPO = Path(__file__).resolve().parent.parent
KEYS = REPO / "tests" / "keys"
ALICE = "age1x0dtwwdnzcdvdtkvp05nnmxf25y5qq6g5gxd2j9jxp8a0yzhaflqyxs40k"
NOW = datetime.now(UTC)


@pytest.fixture
def plan(example_plan: dict[str, Any]) -> dict[str, Any]:
    return example_plan


@pytest.fixture
def settings(admin_repo: Path, plan: dict[str, Any]) -> CertSettings:
    return CertSettings.from_plan(plan, admin_repo)


class SpyRunner(Runner):
    """The real runner, remembering every command line and stdin."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, ...], str]] = []

    def execute(self, call: Call) -> Result:
        stdin = call.input.decode() if isinstance(call.input, bytes) else (call.input or "")
        self.seen.append((call.args, stdin))
        return super().execute(call)


def openssl_verify(tmp: Path, root: x509.Certificate, leaf: x509.Certificate) -> tuple[int, str]:
    (tmp / "root.pem").write_bytes(to_pem(root))
    (tmp / "leaf.pem").write_bytes(to_pem(leaf))
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            tmp / "root.pem",
            "-purpose",
            "sslserver",
            tmp / "leaf.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def forge(authority: Authority, san: x509.GeneralName) -> x509.Certificate:
    """What a thief holding the CA key would sign: any name at all."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        .sign(authority.key, hashes.SHA256())
    )


def test_settings_follow_the_plan(settings: CertSettings) -> None:
    assert settings.domain == "home.arpa"
    # home.arpa is a public suffix: every name explicitly, no wildcard (lib/certnames.nix)
    assert settings.names == (
        "id.home.arpa", "vpn.home.arpa", "auth.home.arpa", "db.home.arpa", "proxy.home.arpa"
    )  # fmt: skip
    assert settings.public_suffixes == frozenset({"home.arpa"})
    assert settings.route_names == ("id.home.arpa", "vpn.home.arpa")
    assert settings.ca_certificate == "certs/ca.crt"
    assert settings.leaf_certificate == "certs/wildcard.crt"
    assert (settings.ca_key.file, settings.ca_key.key) == ("secrets/ca.yaml", "ca/key")
    assert settings.ca_key.recipients == (ALICE,)
    assert (settings.leaf_key.file, settings.leaf_key.key) == (
        "secrets/proxy.yaml",
        "tls/key",
    )
    assert len(settings.leaf_key.recipients) == 2
    assert ALICE in settings.leaf_key.recipients
    assert settings.permitted_network is None


def test_plan_with_network_and_missing_keys(plan: dict[str, Any], tmp_path: Path) -> None:
    wide = {**plan, "certificates": {**plan["certificates"], "includeNetwork": True}}
    assert CertSettings.from_plan(wide, tmp_path).permitted_network == ipaddress.ip_network(
        "192.168.100.0/24"
    )
    broken = {**plan, "certificates": {"mode": "private-ca"}}
    with pytest.raises(UserError, match="certificates: missing names"):
        CertSettings.from_plan(broken, tmp_path)
    outside = {
        **plan,
        "certificates": {**plan["certificates"], "certSource": "../x.crt"},
    }
    with pytest.raises(UserError, match="inside the repository"):
        CertSettings.from_plan(outside, tmp_path)


def test_root_shape() -> None:
    root = build_root("home.arpa", None, now=NOW).certificate
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"
    assert root.not_valid_after_utc - NOW.replace(microsecond=0) == timedelta(days=3650)
    ext = root.extensions
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert (basic.value.ca, basic.value.path_length) == (True, 0)
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.DNSName("home.arpa")]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text"],
        input=to_pem(root),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "X509v3 Name Constraints: critical" in text
    assert "CA:TRUE, pathlen:0" in text


def test_openssl_accepts_inside_and_rejects_outside(tmp_path: Path) -> None:
    authority = build_root("home.arpa", None, now=NOW)
    leaf, _ = build_leaf(authority, ("*.home.arpa", "home.arpa"), now=NOW)
    assert openssl_verify(tmp_path, authority.certificate, leaf) == (
        0,
        f"{tmp_path}/leaf.pem: OK\n",
    )
    for name in ("id.home.arpa", "home.arpa"):
        code, _ = openssl_verify(
            tmp_path, authority.certificate, forge(authority, x509.DNSName(name))
        )
        assert code == 0, name
    bank = forge(authority, x509.DNSName("www.bank.example"))
    code, out = openssl_verify(tmp_path, authority.certificate, bank)
    assert code != 0
    assert "permitted subtree violation" in out
    lookalike = forge(authority, x509.DNSName("evilhome.arpa"))
    assert openssl_verify(tmp_path, authority.certificate, lookalike)[0] != 0
    address = forge(authority, x509.IPAddress(ipaddress.ip_address("192.168.100.2")))
    code, out = openssl_verify(tmp_path, authority.certificate, address)
    assert code != 0
    assert "excluded subtree violation" in out


def test_include_network_permits_only_that_network(tmp_path: Path) -> None:
    authority = build_root("home.arpa", ipaddress.ip_network("192.168.100.0/24"), now=NOW)
    assert permitted_subtrees(authority.certificate) == ["DNS home.arpa", "IP 192.168.100.0/24"]
    closed = build_root("home.arpa", None, now=NOW).certificate
    assert permitted_subtrees(closed) == ["DNS home.arpa", "no IP address"]
    inside = forge(authority, x509.IPAddress(ipaddress.ip_address("192.168.100.2")))
    assert openssl_verify(tmp_path, authority.certificate, inside)[0] == 0
    outside = forge(authority, x509.IPAddress(ipaddress.ip_address("8.8.8.8")))
    code, out = openssl_verify(tmp_path, authority.certificate, outside)
    assert code != 0
    assert "permitted subtree violation" in out


def test_init_keeps_the_key_only_in_sops(settings: CertSettings) -> None:
    spy = SpyRunner()
    result = init_ca(settings, spy, now=NOW)
    assert result.backups == ()
    cert = load_certificate(settings.path("certs/ca.crt"), "ca.crt")
    assert cert == result.authority.certificate
    # Nothing in the repository holds a plaintext key, and no command line carried it.
    for path in settings.root.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert spy.seen
    assert all("PRIVATE KEY" not in " ".join(args) for args, _ in spy.seen)
    assert any("PRIVATE KEY" in stdin for _, stdin in spy.seen)
    ca_yaml = (settings.root / "secrets/ca.yaml").read_text()
    assert f"recipient: {ALICE}" in ca_yaml
    assert ca_yaml.count("recipient:") == 1
    pem = _sops.decrypt_value(settings.root, "secrets/ca.yaml", "ca/key", Runner())
    key = key_from_pem(pem, "ca/key")
    assert same_public_key(key, cert)
    assert load_authority(settings, Runner()).certificate == cert


def test_init_refuses_to_overwrite_and_force_keeps_a_backup(
    settings: CertSettings,
) -> None:
    first = init_ca(settings, Runner(), now=NOW).authority
    with pytest.raises(UserError, match=r"a CA already exists; `tools ca init --force`"):
        init_ca(settings, Runner(), now=NOW)
    later = NOW + timedelta(seconds=5)
    second = init_ca(settings, Runner(), force=True, now=later)
    stamp = f"{later:%Y%m%dT%H%M%SZ}"
    assert {p.relative_to(settings.root).as_posix() for p in second.backups} == {
        f"certs/backup/ca-{stamp}.crt",
        f"secrets/backup/ca-{stamp}.yaml",
    }
    old_cert = load_certificate(settings.root / f"certs/backup/ca-{stamp}.crt", "backup")
    assert old_cert == first.certificate
    old_key = key_from_pem(
        _sops.decrypt_value(settings.root, f"secrets/backup/ca-{stamp}.yaml", "ca/key", Runner()),
        "backup",
    )
    assert same_public_key(old_key, first.certificate)
    assert load_authority(settings, Runner()).certificate == second.authority.certificate
    assert second.authority.certificate != first.certificate


def test_init_without_recipients_is_a_clear_error(plan: dict[str, Any], tmp_path: Path) -> None:
    ca_yaml = {**plan["secrets"]["secrets/ca.yaml"], "recipients": []}
    nobody = {**plan, "secrets": {**plan["secrets"], "secrets/ca.yaml": ca_yaml}}
    settings = CertSettings.from_plan(nobody, tmp_path)
    with pytest.raises(UserError, match=r"secrets/ca.yaml: nobody can decrypt it"):
        init_ca(settings, Runner(), now=NOW)
    assert not (tmp_path / "certs/ca.crt").exists()
