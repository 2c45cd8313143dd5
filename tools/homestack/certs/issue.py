"""The proxy's leaf (every route and guest name, `*.<domain>` where browsers accept it):
issue it, and re-issue it when `check` says it is due."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homestack.certs import _sops
from homestack.certs.ca import BACKDATE, Authority, load_authority, serial_number
from homestack.certs.certfile import key_to_pem, to_pem
from homestack.certs.check import Finding, check_private_ca, root_problems
from homestack.certs.settings import CertSettings, Mode
from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.process import Runner

LEAF_LIFETIME = timedelta(days=90)


@dataclass(frozen=True)
class Issued:
    """A leaf written to the repository, its key stored in the proxy's sops file."""

    certificate: x509.Certificate
    path: str
    key: str


@dataclass(frozen=True)
class Renewal:
    """What `tools certs renew` found and did."""

    reasons: tuple[Finding, ...]
    issued: Issued | None
    problems: tuple[Finding, ...]  # what renewing cannot fix (the root itself)


def build_leaf(
    authority: Authority,
    names: tuple[str, ...],
    *,
    now: datetime,
    lifetime: timedelta = LEAF_LIFETIME,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server leaf (ECDSA P-256) for `names`, signed by the root."""
    if not names:
        raise UserError("plan: certificates.names is empty: nothing to issue")
    now = now.replace(microsecond=0)  # certificates keep whole seconds
    key = ec.generate_private_key(ec.SECP256R1())
    root = authority.certificate
    not_after = min(now + lifetime, root.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homestack"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA384())
    )
    return cert, key


def issue(
    settings: CertSettings,
    runner: Runner,
    *,
    now: datetime | None = None,
    lifetime: timedelta = LEAF_LIFETIME,
) -> Issued | None:
    """Issue the leaf for the plan's names; None in acme-dns01 mode, where Caddy does it."""
    if settings.mode is not Mode.PRIVATE_CA:
        return None
    now = now or datetime.now(UTC)
    for name in settings.names:
        bare = name.removeprefix("*.")
        if bare != settings.domain and not bare.endswith("." + settings.domain):
            raise UserError(f"plan: certificates.names: {name} is outside {settings.domain}")
    authority = load_authority(settings, runner)
    problems = root_problems(settings, authority.certificate)
    if problems:
        raise UserError(f"{settings.ca_certificate}: {problems[0]}")
    cert, key = build_leaf(authority, settings.names, now=now, lifetime=lifetime)
    # Key first: if that fails, the old certificate still matches the old key.
    ref = settings.leaf_key
    _sops.set_value(settings.root, settings.secrets, ref, key_to_pem(key), runner, replace=False)
    path = settings.path(settings.leaf_certificate)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, to_pem(cert, authority.certificate), 0o644)
    return Issued(cert, settings.leaf_certificate, str(ref))


def renew(
    settings: CertSettings,
    runner: Runner,
    *,
    days: int = 30,
    now: datetime | None = None,
    lifetime: timedelta = LEAF_LIFETIME,
) -> Renewal | None:
    """Re-issue the leaf if it is missing, wrong or expires within `days`.

    Problems only an admin can fix (the root itself expiring) come back in `problems`.
    """
    if settings.mode is not Mode.PRIVATE_CA:
        return None
    now = now or datetime.now(UTC)
    findings = check_private_ca(settings, days=days, now=now)
    due = tuple(f for f in findings if f.renewable)
    issued = issue(settings, runner, now=now, lifetime=lifetime) if due else None
    return Renewal(due, issued, tuple(f for f in findings if not f.renewable))
