"""tools certs issue / check / renew on the example plan, with the real sops and openssl."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from homestack.certs import _sops
from homestack.certs.ca import build_root, init_ca
from homestack.certs.certfile import (
    dns_names,
    key_from_pem,
    load_chain,
    same_public_key,
    to_pem,
)
from homestack.certs.check import check, check_private_ca
from homestack.certs.issue import build_leaf, issue, renew
from homestack.certs.settings import CertSettings, Mode, SecretRef
from homestack.errors import UserError
from homestack.process import Runner

REPO = Path(__file__).resolve().parent.parent
KEYS = REPO / "tests" / "keys"
PROXY = "age1par4gc3d0sefsgvdd9azypc7xpnshtv7vn3cxxhglewv35heavfsuv5z58"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def plan(example_plan: dict[str, Any]) -> dict[str, Any]:
    return example_plan


@pytest.fixture
def settings(admin_repo: Path, plan: dict[str, Any]) -> CertSettings:
    settings = CertSettings.from_plan(plan, admin_repo)
    init_ca(settings, Runner(), now=NOW)
    return settings


def leaf_of(settings: CertSettings) -> list[x509.Certificate]:
    return load_chain(settings.path(settings.leaf_certificate), "leaf")


def test_issue_writes_leaf_and_chain_and_keeps_the_key_in_sops(
    settings: CertSettings,
) -> None:
    issued = issue(settings, Runner(), now=NOW)
    assert issued is not None
    assert issued.path == "certs/wildcard.crt"
    leaf, root = leaf_of(settings)
    assert root == load_chain(settings.path("certs/ca.crt"), "ca")[0]
    assert leaf == issued.certificate
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert leaf.not_valid_after_utc - NOW == timedelta(days=90)
    assert dns_names(leaf) == list(settings.names)
    assert "*.home.arpa" not in dns_names(leaf)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    proxy_yaml = (settings.root / "secrets/proxy.yaml").read_text()
    assert f"recipient: {PROXY}" in proxy_yaml
    assert "PRIVATE KEY" not in proxy_yaml
    key = key_from_pem(
        _sops.decrypt_value(settings.root, "secrets/proxy.yaml", "tls/key", Runner()),
        "tls",
    )
    assert same_public_key(key, leaf)
    for name in ("id.home.arpa", "vpn.home.arpa", "db.home.arpa"):
        proc = subprocess.run(
            [
                "openssl", "verify", "-CAfile", settings.path("certs/ca.crt"),
                "-purpose", "sslserver", "-verify_hostname", name,
                settings.path("certs/wildcard.crt"),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check(settings, now=NOW, runner=Runner()) == []


def test_issue_keeps_other_values_of_the_proxy_file(settings: CertSettings) -> None:
    other = SecretRef("secrets/proxy.yaml", "other/value")
    _sops.set_value(settings.root, settings.secrets, other, "kept", Runner(), replace=False)
    issue(settings, Runner(), now=NOW)
    issue(settings, Runner(), now=NOW)
    assert (
        _sops.decrypt_value(settings.root, "secrets/proxy.yaml", "other/value", Runner()) == "kept"
    )
    assert check(settings, now=NOW, runner=Runner()) == []


def test_renewal_of_a_certificate_about_to_expire(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW, lifetime=timedelta(days=10))
    findings = [str(f) for f in check(settings, days=30, now=NOW)]
    assert len(findings) == 1
    assert findings[0].startswith("certs/wildcard.crt: expires on ")
    assert "in 10 days (< 30): run `tools certs renew`" in findings[0]
    assert check(settings, days=5, now=NOW) == []
    old = leaf_of(settings)[0]
    result = renew(settings, Runner(), days=30, now=NOW)
    assert result is not None
    assert result.issued is not None
    assert [f.renewable for f in result.reasons] == [True]
    assert result.problems == ()
    new = leaf_of(settings)[0]
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - NOW == timedelta(days=90)
    assert check(settings, now=NOW, runner=Runner()) == []
    # Nothing due: nothing changes.
    before = settings.path("certs/wildcard.crt").read_bytes()
    again = renew(settings, Runner(), days=30, now=NOW)
    assert again is not None
    assert again.issued is None
    assert settings.path("certs/wildcard.crt").read_bytes() == before


def test_expired_and_future_leaves(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW - timedelta(days=100))
    assert [str(f) for f in check(settings, now=NOW)] == [
        (
            f"certs/wildcard.crt: expired on {NOW - timedelta(days=10):%Y-%m-%d %H:%M} UTC: "
            "run `tools certs renew`"
        )
    ]


def test_check_finds_a_leaf_from_another_ca(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW)
    init_ca(settings, Runner(), force=True, now=NOW + timedelta(seconds=1))
    findings = [str(f) for f in check(settings, now=NOW)]
    assert findings == [
        (
            "certs/wildcard.crt: signed by an earlier CA of the same name, not by certs/ca.crt: "
            "run `tools certs renew`"
        )
    ]
    renewed = renew(settings, Runner(), now=NOW)
    assert renewed is not None
    assert renewed.issued is not None
    assert check(settings, now=NOW, runner=Runner()) == []


def test_check_names_a_foreign_issuer(settings: CertSettings) -> None:
    leaf, _ = build_leaf(build_root("lab.example", None, now=NOW), settings.names, now=NOW)
    settings.path("certs/wildcard.crt").write_bytes(to_pem(leaf))
    assert [str(f) for f in check(settings, now=NOW)] == [
        (
            "certs/wildcard.crt: issued by CN=Homestack CA lab.example,O=Homestack, not by "
            "certs/ca.crt: run `tools certs renew`"
        )
    ]


def test_check_finds_uncovered_routes_and_missing_names(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW)
    more = dataclasses.replace(
        settings,
        names=(*settings.names, "*.lab.home.arpa"),
        route_names=("id.home.arpa", "git.lab.home.arpa"),
    )
    assert [str(f) for f in check(more, now=NOW)] == [
        "certs/wildcard.crt: does not cover route git.lab.home.arpa: run `tools certs issue`",
        "certs/wildcard.crt: does not cover name *.lab.home.arpa: run `tools certs issue`",
    ]
    assert issue(more, Runner(), now=NOW) is not None
    assert check(more, now=NOW, runner=Runner()) == []


def test_check_finds_a_root_for_another_domain(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW)
    moved = dataclasses.replace(settings, domain="home.example", names=("*.home.example",),
                                route_names=("id.home.example",))  # fmt: skip
    findings = check_private_ca(moved, days=30, now=NOW)
    assert str(findings[0]) == (
        "certs/ca.crt: permits home.arpa, not the domain home.example: `tools ca init --force`"
    )
    assert not findings[0].renewable
    with pytest.raises(UserError, match=r"permits home\.arpa, not the domain home\.example"):
        issue(moved, Runner(), now=NOW)
    wider = dataclasses.replace(
        settings, permitted_network=ipaddress.ip_network("192.168.100.0/24")
    )
    assert [str(f) for f in check_private_ca(wider, days=30, now=NOW)] == [
        "certs/ca.crt: does not permit 192.168.100.0/24 (certificates.include_network): "
        "`tools ca init --force`"
    ]


def test_check_refuses_an_unconstrained_root(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW)
    authority = build_root("home.arpa", None, now=NOW)
    key = authority.key
    name = authority.certificate.subject
    bare = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    settings.path("certs/ca.crt").write_bytes(to_pem(bare))
    findings = [str(f) for f in check(settings, now=NOW)]
    assert findings[0] == (
        "certs/ca.crt: has no name constraints (it could vouch for any site): "
        "`tools ca init --force`"
    )


def test_check_notices_a_root_about_to_expire(settings: CertSettings) -> None:
    init_ca(settings, Runner(), force=True, now=NOW - timedelta(days=3640))
    issue(settings, Runner(), now=NOW)
    findings = check(settings, now=NOW)
    assert len(findings) == 1
    assert not findings[0].renewable
    assert "certs/ca.crt: expires on" in str(findings[0])
    assert "rotate it with `tools ca init --force`" in str(findings[0])
    result = renew(settings, Runner(), now=NOW)
    assert result is not None
    assert result.issued is None
    assert len(result.problems) == 1
    # The leaf never outlives its root.
    assert leaf_of(settings)[0].not_valid_after_utc == leaf_of(settings)[1].not_valid_after_utc


def test_check_keys_finds_a_swapped_key(settings: CertSettings) -> None:
    issue(settings, Runner(), now=NOW)
    chain = settings.path("certs/wildcard.crt").read_bytes()
    issue(settings, Runner(), now=NOW)  # a new key in sops...
    settings.path("certs/wildcard.crt").write_bytes(chain)  # ...and the old certificate
    assert check(settings, now=NOW) == []
    assert [str(f) for f in check(settings, now=NOW, runner=Runner())] == [
        "secrets/proxy.yaml [tls/key]: does not match certs/wildcard.crt"
    ]


def test_acme_mode_leaves_certificates_to_caddy(settings: CertSettings) -> None:
    acme = dataclasses.replace(settings, mode=Mode.ACME_DNS01, acme_email=None)
    assert issue(acme, Runner(), now=NOW) is None
    assert renew(acme, Runner(), now=NOW) is None
    assert not settings.path("certs/wildcard.crt").exists()
    # The domain and the e-mail are lib's to judge (tests/test_inventory.py); what is left
    # for certs check is the token.
    assert [str(f) for f in check(acme, now=NOW)] == [
        "secrets/proxy.yaml: has no cloudflare/api-token (the Cloudflare API token)",
    ]
    public = dataclasses.replace(acme, domain="example.org", acme_email="admin@example.org")
    _sops.set_value(
        settings.root,
        settings.secrets,
        acme.acme_token,
        "token",
        Runner(),
        replace=False,
    )
    assert check(public, now=NOW) == []
