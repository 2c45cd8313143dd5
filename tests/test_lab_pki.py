"""The lab's throw-away CAs (tools/homestack/lab/pki.py, and acme.py's CA for the stand-in
services): each root signs its leaf, is a CA for leaves only, and openssl accepts the chain
for a TLS server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homestack.lab import acme, pki

PEM = serialization.Encoding.PEM


def openssl_verify(tmp: Path, root: x509.Certificate, leaf: x509.Certificate) -> str:
    (tmp / "root.pem").write_bytes(root.public_bytes(PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(PEM))
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp / "root.pem", "-purpose", "sslserver",
         tmp / "leaf.pem"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout + proc.stderr


def is_leaf_only_ca(root: x509.Certificate) -> bool:
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    return (
        root.subject == root.issuer
        and (basic.ca, basic.path_length) == (True, 0)
        and (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, False)
    )


def test_the_small_builder_makes_a_name_constrained_root_and_its_leaf(tmp_path: Path) -> None:
    root, leaf, _ = pki._build("home.arpa", ["*.home.arpa", "home.arpa"])
    leaf.verify_directly_issued_by(root)
    assert is_leaf_only_ca(root)
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Homestack lab root for home.arpa"
    )
    constraints = root.extensions.get_extension_for_class(x509.NameConstraints).value
    assert constraints.permitted_subtrees == [x509.DNSName("home.arpa")]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.home.arpa", "home.arpa"]
    assert leaf.issuer == root.subject
    assert leaf.not_valid_before_utc == root.not_valid_before_utc
    assert leaf.not_valid_after_utc == root.not_valid_after_utc
    assert ": OK" in openssl_verify(tmp_path, root, leaf)


@pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in's key is handed to nobody")
def test_the_stand_in_services_ca_signs_their_server_certificate(tmp_path: Path) -> None:
    lab = acme.AcmeLab(tmp_path)
    (tmp_path / "standin").mkdir()
    cert_file, key_file = acme._lab_ca(lab)
    root = x509.load_pem_x509_certificate(lab.lab_ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    leaf.verify_directly_issued_by(root)
    assert is_leaf_only_ca(root)
    assert root.subject.rfc4514_string() == (
        "CN=Homestack lab CA for stand-in services,O=Homestack lab"
    )
    assert leaf.subject.rfc4514_string() == f"CN={acme.CLOUDFLARE_API}"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ": OK" in openssl_verify(tmp_path, root, leaf)
