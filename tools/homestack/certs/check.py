"""Is every certificate the plan needs present, trusted, covering and not about to expire?

Findings are one line each and say whether `tools certs renew` can fix them (a leaf
problem) or an admin must act (a root problem, or a missing ACME setting).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from homestack.certs import _sops
from homestack.certs.certfile import (
    browser_names,
    covers,
    days_left,
    dns_names,
    key_from_pem,
    load_chain,
    permitted_domains,
    same_public_key,
)
from homestack.certs.settings import CertSettings, Mode
from homestack.errors import UserError
from homestack.process import Runner
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.verify import local_identities

REISSUE = "run `tools certs issue`"

# Names no public CA will issue for (RFC 8375, RFC 6761, RFC 6762, ICANN's .internal).


@dataclass(frozen=True)
class Finding:
    """One problem with one file."""

    subject: str
    problem: str
    renewable: bool
    hint: str = ""  # what to do about it

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}" + (f": {self.hint}" if self.hint else "")


def check(
    settings: CertSettings,
    *,
    days: int = 30,
    now: datetime | None = None,
    runner: Runner | None = None,
) -> list[Finding]:
    """Every problem with the plan's certificates; with a runner, also decrypt and match keys."""
    now = now or datetime.now(UTC)
    if settings.mode is Mode.ACME_DNS01:
        return check_acme(settings)
    findings = check_private_ca(settings, days=days, now=now)
    if runner is not None and not findings:
        findings += check_keys(settings, runner)
    return findings


def check_private_ca(settings: CertSettings, *, days: int, now: datetime) -> list[Finding]:
    """Root and leaf from the repository files alone (nothing is decrypted)."""
    root, findings = _check_root(settings, days, now)
    leaf_label = settings.leaf_certificate
    try:
        chain = load_chain(settings.path(leaf_label), leaf_label)
    except UserError as exc:
        hint = "run `tools certs issue`" if not settings.path(leaf_label).exists() else ""
        findings.append(Finding(leaf_label, _problem(exc, leaf_label), renewable=True, hint=hint))
        return findings
    leaf = chain[0]
    leaf_findings = _expiry(leaf_label, leaf, days, now, "run `tools certs renew`", renewable=True)
    root_due = root is not None and days_left(root, now) < days
    if root_due and root is not None and leaf.not_valid_after_utc >= root.not_valid_after_utc:
        leaf_findings = []  # a leaf never outlives its root: the root's finding says it all
    leaf_findings += coverage(settings, dns_names(leaf))
    if root is not None:
        full = not findings and not leaf_findings
        leaf_findings += _chain_problems(settings, root, chain, now, full=full)
    return findings + leaf_findings


def coverage(settings: CertSettings, names: list[str]) -> list[Finding]:
    """Every route, guest name and plan name the leaf's `names` leave to a browser warning."""
    label = settings.leaf_certificate
    accepted = browser_names(names, settings.public_suffixes)
    wanted = {r: "route" for r in settings.route_names}
    for name in (*settings.guest_names, *settings.names):
        wanted.setdefault(name, "guest name" if name in settings.guest_names else "name")
    findings: list[Finding] = []
    for name, kind in wanted.items():
        if name.startswith("*.") and name in names:
            continue
        if not name.startswith("*.") and covers(accepted, name):
            continue
        problem = f"does not cover {kind} {name}"
        refused = [p for p in names if covers([p], name) and p not in accepted]
        if refused and not name.startswith("*."):
            suffix = refused[0][2:]
            problem += (
                f" for browsers: they refuse {refused[0]}, a wildcard directly under the "
                f"public suffix {suffix}"
            )
        findings.append(Finding(label, problem, renewable=True, hint=REISSUE))
    return findings


def _check_root(
    settings: CertSettings, days: int, now: datetime
) -> tuple[x509.Certificate | None, list[Finding]]:
    label = settings.ca_certificate
    try:
        root = load_chain(settings.path(label), label)[0]
    except UserError as exc:
        hint = "run `tools ca init`" if not settings.path(label).exists() else ""
        return None, [Finding(label, _problem(exc, label), renewable=False, hint=hint)]
    findings = [Finding(label, p, renewable=False) for p in root_problems(settings, root)]
    findings += _expiry(label, root, days, now, "rotate it with `tools ca init --force`")
    return root, findings


def _chain_problems(
    settings: CertSettings,
    root: x509.Certificate,
    chain: list[x509.Certificate],
    now: datetime,
    *,
    full: bool,
) -> list[Finding]:
    """Is the leaf signed by this root, and (when all else is fine) does it validate?"""
    label = settings.leaf_certificate
    leaf = chain[0]
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        if leaf.issuer == root.subject:
            stranger = f"signed by an earlier CA of the same name, not by {settings.ca_certificate}"
        else:
            issuer = leaf.issuer.rfc4514_string()
            stranger = f"issued by {issuer}, not by {settings.ca_certificate}"
        return [Finding(label, stranger, renewable=True, hint="run `tools certs renew`")]
    if not full or days_left(leaf, now) <= 0:
        return []
    # Everything looks right piecewise: let a full RFC 5280 path validation agree.
    for name in (*settings.route_names, *settings.names[:1]):
        problem = _verify(root, chain, name.replace("*", "wildcard", 1), now)
        if problem:
            return [Finding(label, f"does not validate for {name}: {problem}", renewable=True)]
    return []


def check_keys(settings: CertSettings, runner: Runner) -> list[Finding]:
    """Decrypt the leaf key from the proxy's sops file and match it to the certificate."""
    ref = settings.leaf_key
    leaf = load_chain(settings.path(settings.leaf_certificate), settings.leaf_certificate)[0]
    try:
        key = key_from_pem(_sops.decrypt_value(settings.root, ref.file, ref.key, runner), str(ref))
    except UserError as exc:
        return [Finding(str(ref), _problem(exc, ref.file), renewable=True)]
    if not same_public_key(key, leaf):
        return [Finding(str(ref), f"does not match {settings.leaf_certificate}", renewable=True)]
    return []


def key_unreadable(settings: CertSettings, env: Mapping[str, str] | None = None) -> str | None:
    """Why this machine cannot match the leaf's key (None when one of its age identities is
    a recipient of the proxy's sops file, so `check_keys` can decrypt it).

    A missing file or key is not a reason: `check_keys` reports those as problems.
    """
    ref = settings.leaf_key
    path = settings.path(ref.file)
    if not _sops.has_value(settings.root, ref.file, ref.key):
        return None
    mine = {i.recipient for i in local_identities(env or {})}
    if mine & set(read_sops_file(path).recipients):
        return None
    if not mine:
        return "no age identity here (set SOPS_AGE_KEY_FILE to an admin key to verify it)"
    return f"none of the age identities here is a recipient of {ref.file}"


def check_acme(settings: CertSettings) -> list[Finding]:
    """acme-dns01: Caddy manages the certificate; check it has what it needs."""
    # The domain and the e-mail are lib's to judge (the plan would not exist otherwise).
    findings: list[Finding] = []
    token = settings.acme_token
    if not _sops.has_value(settings.root, token.file, token.key):
        findings.append(
            Finding(token.file, f"has no {token.key} (the Cloudflare API token)", renewable=False)
        )
    return findings


def root_problems(settings: CertSettings, root: x509.Certificate) -> list[str]:
    """Why `root` cannot serve this plan: not a CA, not self-signed, wrong constraints."""
    problems: list[str] = []
    try:
        basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = basic.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return ["not a CA certificate"]
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        problems.append("not a self-signed root")
    replace = "`tools ca init --force`"
    try:
        root.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return [*problems, f"has no name constraints (it could vouch for any site): {replace}"]
    domains = permitted_domains(root)
    if not any(settings.domain == d or settings.domain.endswith("." + d) for d in domains):
        allowed = ", ".join(domains) or "no DNS name"
        problems.append(f"permits {allowed}, not the domain {settings.domain}: {replace}")
    network = settings.permitted_network
    if network is not None and not any(_within(network, n) for n in _permitted_networks(root)):
        problems.append(f"does not permit {network} (certificates.include_network): {replace}")
    return problems


def _within(
    inner: ipaddress.IPv4Network | ipaddress.IPv6Network,
    outer: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _permitted_networks(
    root: x509.Certificate,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        nc = root.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for name in nc.permitted_subtrees or []:
        if isinstance(name, x509.IPAddress) and isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            nets.append(name.value)
    return nets


def _expiry(
    label: str,
    cert: x509.Certificate,
    days: int,
    now: datetime,
    action: str,
    *,
    renewable: bool = False,
) -> list[Finding]:
    left = days_left(cert, now)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        return [Finding(label, f"not valid before {start} (check the clock)", renewable)]
    if left <= 0:
        return [Finding(label, f"expired on {until}", renewable, hint=action)]
    if left < days:
        soon = f"expires on {until}, in {int(left)} days (< {days})"
        return [Finding(label, soon, renewable, hint=action)]
    return []


def _verify(
    root: x509.Certificate, chain: list[x509.Certificate], name: str, now: datetime
) -> str | None:
    verifier = (
        PolicyBuilder().store(Store([root])).time(now).build_server_verifier(x509.DNSName(name))
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        return str(exc)
    return None


def _problem(exc: UserError, label: str) -> str:
    """A UserError's message without the file name it starts with."""
    return str(exc).removeprefix(f"{label}: ")
