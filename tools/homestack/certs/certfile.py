"""Reading certificates from the repository and asking them simple questions."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from homestack.errors import UserError

# One PEM block: its label, its body and the END line (RFC 7468, section 2).
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)-----(.*?)-----END ([A-Z0-9 ]*)-----", re.S)


def load_chain(path: Path, label: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, first one first; UserError names the file.

    The file is published (the NixOS module copies it into the world-readable Nix store),
    so any block but a certificate, a private key above all, is refused.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{label}: not found") from None
    except OSError as exc:
        raise UserError(f"{label}: cannot read: {exc.strerror}") from exc
    blocks = PEM_BLOCK.findall(data)
    if not blocks:
        raise UserError(f"{label}: not a PEM certificate")
    if data.count(b"-----BEGIN ") != len(blocks):
        raise UserError(f"{label}: a PEM block has no END line (damaged or truncated)")
    chain: list[x509.Certificate] = []
    for number, (begin, body, end) in enumerate(blocks, 1):
        kind = begin.decode()
        if begin != end:
            raise UserError(f"{label}: PEM block {number} ({kind}) is not closed")
        if kind != "CERTIFICATE":
            secret = "PRIVATE KEY" in kind
            why = (
                "a certificate file is published (it lands in the world-readable Nix store): "
                "remove the block, and replace that key if it was ever committed"
                if secret
                else "a certificate file holds certificates only"
            )
            raise UserError(f"{label}: PEM block {number} is a {kind}, not a CERTIFICATE: {why}")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
            chain.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise UserError(
                f"{label}: PEM block {number} is not a valid certificate (damaged or truncated)"
            ) from None
    return chain


def load_certificate(path: Path, label: str) -> x509.Certificate:
    """The first certificate in a PEM file."""
    return load_chain(path, label)[0]


def to_pem(*certificates: x509.Certificate) -> bytes:
    """Certificates as one PEM bundle."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """A private key as unencrypted PKCS#8 PEM text (it goes straight into sops)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_from_pem(text: str, label: str) -> ec.EllipticCurvePrivateKey:
    """Parse an EC private key; UserError names where it came from."""
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{label}: not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{label}: not an ECDSA private key")
    return key


def same_public_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    """Whether `key` is the private half of `cert`'s public key."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def dns_names(cert: x509.Certificate) -> list[str]:
    """The DNS names in the subjectAltName extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def covers(patterns: Iterable[str], name: str) -> bool:
    """Whether a name is matched by one of the SAN patterns (a wildcard spans one label)."""
    name = name.lower().rstrip(".")
    head, _, rest = name.partition(".")
    for raw in patterns:
        pattern = raw.lower().rstrip(".")
        if pattern == name or (pattern.startswith("*.") and head and rest == pattern[2:]):
            return True
    return False


def browser_names(patterns: Iterable[str], public_suffixes: Iterable[str]) -> list[str]:
    """The SAN patterns a browser honours: a wildcard directly under a public suffix
    (`*.home.arpa`) is dropped; which names are public suffixes the plan says."""
    refused = {s.lower().rstrip(".") for s in public_suffixes}
    return [p for p in patterns if not (p.startswith("*.") and p[2:].lower() in refused)]


def common_name(cert: x509.Certificate) -> str:
    """The subject CN, or the whole subject when there is none."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated hex, as browsers show it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def permitted_subtrees(cert: x509.Certificate) -> list[str]:
    """The name constraints of a CA in words, e.g. ['DNS home.arpa', 'no IP address']."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return ["anything (no name constraints)"]
    words = [_describe(n) for n in nc.permitted_subtrees or []]
    excluded = [_describe(n) for n in nc.excluded_subtrees or []]
    if excluded and set(excluded) <= {"IP 0.0.0.0/0", "IP ::/0"}:
        words.append("no IP address")
    else:
        words += [f"not {n}" for n in excluded]
    return words


def permitted_domains(cert: x509.Certificate) -> list[str]:
    """The DNS names a CA is constrained to (empty when it is not constrained)."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    return [n.value for n in nc.permitted_subtrees or [] if isinstance(n, x509.DNSName)]


def _describe(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS {name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP {name.value}"
    return str(name.value)


def days_left(cert: x509.Certificate, now: datetime) -> float:
    """Days until the certificate expires (negative once it has)."""
    return (cert.not_valid_after_utc - now).total_seconds() / 86400
