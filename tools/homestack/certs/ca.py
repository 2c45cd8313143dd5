"""The private root CA: made once, name-constrained to the internal domain.

The constraint is what makes a home CA safe to trust on every device: a leaked key can
only mint certificates for names under the domain (and, if asked, the guest network),
never for someone else's bank. The key exists in plaintext only in this process.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homestack.certs import _sops
from homestack.certs.certfile import (
    key_from_pem,
    key_to_pem,
    load_certificate,
    same_public_key,
    to_pem,
)
from homestack.certs.settings import CertSettings, Mode
from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.process import Runner

ROOT_LIFETIME = timedelta(days=3650)
# A few minutes of backdating so a client whose clock is slightly behind accepts it.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class Authority:
    """The root certificate with its private key, ready to sign."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class InitResult:
    """What `tools ca init` did."""

    authority: Authority
    backups: tuple[Path, ...]


def build_root(
    domain: str,
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
    *,
    now: datetime,
    lifetime: timedelta = ROOT_LIFETIME,
) -> Authority:
    """A new self-signed root (ECDSA P-384) permitted only `domain` (and `network`)."""
    now = now.replace(microsecond=0)  # certificates keep whole seconds
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homestack"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Homestack CA {domain}"),
        ]
    )
    if network is not None:
        ip_permitted: list[x509.GeneralName] = [x509.IPAddress(network)]
        ip_excluded: list[x509.GeneralName] = []
    else:
        # Without an IP subtree, RFC 5280 leaves IP addresses unconstrained: exclude them all.
        ip_permitted = []
        ip_excluded = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(domain), *ip_permitted],
        excluded_subtrees=ip_excluded or None,
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(constraints, critical=True)
        # Clients that chain EKUs (browsers, Go) then accept only TLS server leaves.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA384())
    )
    return Authority(cert, key)


def init_ca(
    settings: CertSettings, runner: Runner, *, force: bool = False, now: datetime | None = None
) -> InitResult:
    """Create the root: certificate into the repository, key into the admins' sops file."""
    if settings.mode is not Mode.PRIVATE_CA:
        raise UserError(
            f"certificates.mode is {settings.mode.value}: Caddy gets its certificate from "
            "Let's Encrypt, there is no private CA to create"
        )
    now = now or datetime.now(UTC)
    cert_path = settings.path(settings.ca_certificate)
    key_path = settings.path(settings.ca_key.file)
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        names = " and ".join(str(p.relative_to(settings.root)) for p in existing)
        raise UserError(
            f"{names}: a CA already exists; `tools ca init --force` replaces it "
            "(the old one is kept in a backup/ directory next to it)"
        )
    authority = build_root(settings.domain, settings.permitted_network, now=now)
    backups = tuple(_backup(p, now) for p in existing)
    # A whole new file (and data key): the old one lives on only in its backup.
    pem = key_to_pem(authority.key)
    _sops.set_value(settings.root, settings.secrets, settings.ca_key, pem, runner, replace=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cert_path, to_pem(authority.certificate), 0o644)
    return InitResult(authority, backups)


def load_root(settings: CertSettings) -> x509.Certificate:
    """The root certificate from the repository."""
    return load_certificate(settings.path(settings.ca_certificate), settings.ca_certificate)


def load_authority(settings: CertSettings, runner: Runner) -> Authority:
    """The root with its key decrypted from sops, checked to belong together."""
    if not settings.path(settings.ca_certificate).exists():
        raise UserError(f"{settings.ca_certificate}: not found: run `tools ca init` first")
    cert = load_root(settings)
    pem = _sops.decrypt_value(settings.root, settings.ca_key.file, settings.ca_key.key, runner)
    key = key_from_pem(pem, str(settings.ca_key))
    if not same_public_key(key, cert):
        raise UserError(
            f"{settings.ca_key}: this key does not belong to {settings.ca_certificate} "
            "(restore the matching pair, or `tools ca init --force`)"
        )
    return Authority(cert, key)


def _backup(path: Path, now: datetime) -> Path:
    target = path.parent / "backup" / f"{path.stem}-{now:%Y%m%dT%H%M%SZ}{path.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, path.read_bytes(), path.stat().st_mode & 0o777)
    return target


def serial_number() -> int:
    # 159 random bits: positive, at most 20 octets, unpredictable (CA/B BR 7.1).
    return secrets.randbits(159) | 1
