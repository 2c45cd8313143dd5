"""What the certificate commands need from the plan, in one typed object.

Paths are relative to the repository (the directory holding inventory.toml). The
defaults are the files the proxy module deploys; a plan that names them under
`certificates.caSource` / `certificates.certSource` wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from homestack.errors import UserError
from homestack.secrets.model import SecretsPlan

CA_CERTIFICATE = "certs/ca.crt"
LEAF_CERTIFICATE = "certs/wildcard.crt"
CA_SECRETS_FILE = "secrets/ca.yaml"
CA_KEY = "ca/key"
TLS_KEY = "tls/key"
CLOUDFLARE_TOKEN = "cloudflare/api-token"  # noqa: S105 - a key name, not a secret


class Mode(Enum):
    """How the proxy gets its certificate."""

    PRIVATE_CA = "private-ca"
    ACME_DNS01 = "acme-dns01"


@dataclass(frozen=True)
class SecretRef:
    """One value inside a sops file: `file` relative to the repository, `key` as a/b
    (nested YAML keys, as sops-nix names them)."""

    file: str
    key: str
    recipients: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.file} [{self.key}]"


@dataclass(frozen=True)
class CertSettings:
    """Everything `tools ca` and `tools certs` read from the plan."""

    root: Path
    domain: str
    mode: Mode
    names: tuple[str, ...]
    route_names: tuple[str, ...]
    permitted_network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    ca_certificate: str
    leaf_certificate: str
    ca_key: SecretRef
    leaf_key: SecretRef
    acme_token: SecretRef
    secrets: SecretsPlan
    acme_email: str | None = None
    guest_names: tuple[str, ...] = ()
    # Browsers ignore a wildcard directly under these (lib/certnames.nix decides).
    public_suffixes: frozenset[str] = frozenset()

    def path(self, relative: str) -> Path:
        """An absolute path for a repository-relative one."""
        return self.root / relative

    @classmethod
    def from_plan(cls, plan: Mapping[str, Any], root: Path) -> CertSettings:
        """Read the certificate settings from a plan (see docs/plan.md)."""
        try:
            domain = str(plan["domain"])
            certs = plan["certificates"]
            mode = Mode(certs["mode"])
            names = tuple(str(n) for n in certs["names"])
            route_names = tuple(str(n) for n in certs.get("routeNames", []))
            guest_names = tuple(str(n) for n in certs.get("guestNames", []))
            public_suffixes = frozenset(str(n) for n in certs.get("publicSuffixes", []))
            include_network = bool(certs.get("includeNetwork", False))
            network = (
                ipaddress.ip_network(plan["network"]["cidr"], strict=False)
                if include_network
                else None
            )
        except KeyError as exc:
            raise UserError(f"plan: certificates: missing {exc.args[0]}") from exc
        except ValueError as exc:
            raise UserError(f"plan: certificates: {exc}") from exc
        proxy_file = _proxy_secrets_file(plan)
        secrets = SecretsPlan.from_plan(plan)
        return cls(
            root=root,
            domain=domain,
            mode=mode,
            names=names,
            route_names=route_names,
            permitted_network=network,
            ca_certificate=_relative(certs.get("caSource", CA_CERTIFICATE)),
            leaf_certificate=_relative(certs.get("certSource", LEAF_CERTIFICATE)),
            ca_key=SecretRef(CA_SECRETS_FILE, CA_KEY, _recipients(secrets, CA_SECRETS_FILE)),
            leaf_key=SecretRef(proxy_file, TLS_KEY, _recipients(secrets, proxy_file)),
            acme_token=SecretRef(proxy_file, CLOUDFLARE_TOKEN),
            secrets=secrets,
            acme_email=certs.get("acmeEmail"),
            guest_names=guest_names,
            public_suffixes=public_suffixes,
        )


def _relative(value: object) -> str:
    path = PurePosixPath(str(value))
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"plan: certificates: {value} must be a path inside the repository")
    return str(path)


def _proxies(plan: Mapping[str, Any]) -> tuple[str, ...]:
    """Guests that terminate TLS: the plan's proxy, else those running Caddy."""
    if plan.get("proxy"):
        return (str(plan["proxy"]),)
    guests: Mapping[str, Any] = plan.get("guests", {})
    return tuple(sorted(n for n, g in guests.items() if "caddy" in g.get("services", [])))


def _proxy_secrets_file(plan: Mapping[str, Any]) -> str:
    proxies = _proxies(plan)
    if not proxies:
        raise UserError("plan: no guest runs caddy, so no proxy can serve the certificate")
    if len(proxies) > 1:
        raise UserError(f"plan: several guests run caddy ({', '.join(proxies)}); expected one")
    guest = plan["guests"][proxies[0]]
    return str(guest.get("secretsFile", f"secrets/{proxies[0]}.yaml"))


def _recipients(secrets: SecretsPlan, file: str) -> tuple[str, ...]:
    return next((spec.recipients for spec in secrets.specs if spec.path == file), ())
