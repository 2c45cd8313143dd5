"""Name matching agrees with a full RFC 5280 / RFC 6125 path validation (property test)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import given, settings
from hypothesis import strategies as st

from homestack.certs.ca import build_root
from homestack.certs.certfile import covers, dns_names
from homestack.certs.issue import build_leaf

NOW = datetime.now(UTC)
NAMES = ("*.home.arpa", "home.arpa")
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostname = st.one_of(
    st.just("home.arpa"),
    label.map(lambda a: f"{a}.home.arpa"),
    st.tuples(label, label).map(lambda ab: f"{ab[0]}.{ab[1]}.home.arpa"),
    label.map(lambda a: f"{a}.arpa"),
    label.map(lambda a: f"{a}home.arpa"),
    st.tuples(label, label).map(lambda ab: f"{ab[0]}.{ab[1]}"),
)


@cache
def pki() -> tuple[x509.Certificate, x509.Certificate]:
    authority = build_root("home.arpa", None, now=NOW)
    leaf, _ = build_leaf(authority, NAMES, now=NOW)
    return authority.certificate, leaf


def verifies(name: str) -> bool:
    root, leaf = pki()
    verifier = (
        PolicyBuilder().store(Store([root])).time(NOW).build_server_verifier(x509.DNSName(name))
    )
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(hostname)
def test_covers_agrees_with_path_validation(name: str) -> None:
    assert covers(dns_names(pki()[1]), name) == verifies(name)


def test_covers_examples() -> None:
    assert covers(NAMES, "id.home.arpa")
    assert covers(NAMES, "ID.Home.Arpa.")
    assert covers(NAMES, "home.arpa")
    assert not covers(NAMES, "a.b.home.arpa")
    assert not covers(NAMES, "evilhome.arpa")
    assert not covers(["*.home.arpa"], "home.arpa")
