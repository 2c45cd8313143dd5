"""A throw-away CA for one lab run: an ECDSA P-384 root name-constrained to the domain and
a P-256 leaf for the plan's certificate names.

The root and leaf are built by the project's own certificate code (`homestack.certs`) when
it is installed, so the lab serves the same shape of chain as production; otherwise by the
small builder below. The lab never touches the real CA's key: each run mints its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class LabCerts:
    """Where the lab's root, leaf chain and leaf key were written."""

    root: Path
    chain: Path
    key: Path


def lab_name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homestack lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def certificate(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    valid: tuple[dt.datetime, dt.datetime],
) -> x509.CertificateBuilder:
    """A certificate for ``key``, valid from the first to the second time, ready for its
    extensions and its issuer's signature."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )


def root_certificate(
    name: x509.Name, key: ec.EllipticCurvePrivateKey, valid: tuple[dt.datetime, dt.datetime]
) -> x509.CertificateBuilder:
    """A self-issued CA that signs leaves only (no intermediates), ready for more
    extensions and its own signature."""
    return (
        certificate(name, name, key, valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )


def issue(directory: Path, domain: str, names: list[str], network: str | None = None) -> LabCerts:
    """Write root.pem, the leaf and its key under ``directory``."""
    pem = serialization.Encoding.PEM
    certs = LabCerts(
        root=directory / "root.pem",
        chain=directory / "wildcard.pem",
        key=directory / "wildcard-key.pem",
    )
    try:  # optional: the project's certificate code, when this build carries it
        from homestack.certs.ca import build_root  # noqa: PLC0415
        from homestack.certs.issue import build_leaf  # noqa: PLC0415
    except ImportError:
        root, leaf, leaf_key = _build(domain, names)
    else:
        now = dt.datetime.now(dt.UTC)
        net = ipaddress.ip_network(network) if network else None
        authority = build_root(domain, net, now=now, lifetime=dt.timedelta(days=2))
        leaf, leaf_key = build_leaf(authority, tuple(names), now=now, lifetime=dt.timedelta(days=2))
        root = authority.certificate
    certs.root.write_bytes(root.public_bytes(pem))
    certs.chain.write_bytes(leaf.public_bytes(pem))
    certs.key.touch(mode=0o640)
    certs.key.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certs


def _build(
    domain: str, names: list[str]
) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=2)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = lab_name(f"Homestack lab root for {domain}")
    constraint = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(domain)], excluded_subtrees=None
    )
    root = (
        root_certificate(root_name, root_key, (now, later))
        .add_extension(constraint, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA384())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        certificate(lab_name(names[0]), root_name, leaf_key, (now, later))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA384())
    )
    return root, leaf, leaf_key
