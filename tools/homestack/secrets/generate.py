"""Secrets from the catalogue: a fresh value for every missing secret, in the format the
plan gives it (`secrets.<file>.formats`, from lib/services/ and lib/secrets.nix), and a
check of the values already there.

Formats are named in lib/secrets.nix; this module only knows how to make and recognise a
value of each. Values travel through pipes (sops reads them on stdin) and memory only.
"""

from __future__ import annotations

import base64
import re
import secrets as rnd
import string
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from homestack.errors import UserError
from homestack.secrets.model import SecretsPlan
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.store import set_secret

ALPHANUMERIC = string.ascii_letters + string.digits
_SIZED = re.compile(r"(password|base64|hex):([1-9][0-9]{0,3})")
_UUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_PEM_KEY = re.compile(
    r"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----\n[A-Za-z0-9+/=\n]+-----END \1-----\n?"
)


class Generator(Enum):
    """Who makes a secret's value (lib/secrets.nix)."""

    RANDOM = "random"  # this module, from the format
    WIREGUARD = "wireguard"  # this module; the public half goes into the inventory
    SSH_HOST_KEY = "ssh-host-key"  # `tools secrets bootstrap`
    CA = "ca"  # `tools ca init`
    CERTS = "certs"  # `tools certs issue`
    MANUAL = "manual"  # a person: a DNS API token, a setup key from the NetBird dashboard


@dataclass(frozen=True)
class Slot:
    """One secret the plan declares: where it lives, its format and who makes it."""

    file: str
    key: str
    format: str
    generator: Generator

    @classmethod
    def all_from_plan(cls, plan: Mapping[str, Any]) -> list[Slot]:
        slots = []
        for path, entry in sorted(plan.get("secrets", {}).items()):
            formats = entry.get("formats", {})
            for key in entry.get("keys", []):
                spec = formats.get(key)
                if spec is None:
                    raise UserError(f"plan: secrets.{path}: no format for {key} (lib/secrets.nix)")
                try:
                    generator = Generator(spec["generator"])
                except ValueError:
                    raise UserError(
                        f"plan: secrets.{path}: {key}: unknown generator {spec['generator']!r}"
                    ) from None
                check_format_name(spec["format"], where=f"plan: secrets.{path}: {key}")
                slots.append(cls(path, key, str(spec["format"]), generator))
        return slots


def check_format_name(fmt: str, *, where: str) -> None:
    if _SIZED.fullmatch(fmt) or fmt in _PLAIN:
        return
    raise UserError(f"{where}: unknown secret format {fmt!r}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _decodes_to(value: str, size: int) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == size
    except ValueError:
        return False


def problem(fmt: str, value: str) -> str | None:  # noqa: PLR0911 - one return per format
    """Why ``value`` is not a valid value of ``fmt``, or None when it is."""
    sized = _SIZED.fullmatch(fmt)
    if sized:
        kind, size = sized.group(1), int(sized.group(2))
        if kind == "password":
            if len(value) < size or any(c not in ALPHANUMERIC for c in value):
                return f"not {size} or more letters and digits ({len(value)} characters)"
            return None
        if kind == "base64":
            return None if _decodes_to(value, size) else f"not base64 of {size} bytes"
        ok = len(value) == 2 * size and all(c in string.hexdigits.lower() for c in value)
        return None if ok else f"not {size} bytes of lowercase hex"
    if fmt == "wireguard-key":
        return None if _decodes_to(value, 32) else "not a WireGuard key (base64 of 32 bytes)"
    if fmt == "uuid":
        return None if _UUID.fullmatch(value) else "not an upper-case UUID"
    if fmt == "pem-key":
        return None if _PEM_KEY.fullmatch(value) else "not a PEM private key"
    if fmt == "openssh-ed25519":
        try:
            serialization.load_ssh_private_key(value.encode(), password=None)
        except (ValueError, TypeError):
            return "not an OpenSSH private key"
        return None
    if fmt == "token":
        return None if value.strip() and "\n" not in value.strip() else "empty or several lines"
    raise UserError(f"unknown secret format {fmt!r}")


def fresh(fmt: str) -> str:
    """A new random value of ``fmt``."""
    sized = _SIZED.fullmatch(fmt)
    if sized:
        kind, size = sized.group(1), int(sized.group(2))
        if kind == "password":
            return "".join(rnd.choice(ALPHANUMERIC) for _ in range(size))
        if kind == "base64":
            return _b64(rnd.token_bytes(size))
        return rnd.token_hex(size)
    if fmt == "uuid":
        return str(uuid.uuid4()).upper()
    raise UserError(f"secret format {fmt!r} has no random generator")


def wireguard_pair() -> tuple[str, str]:
    """A WireGuard private key and its public key (X25519, base64 as `wg genkey` prints)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return _b64(raw), _b64(public)


_PLAIN = frozenset({"wireguard-key", "uuid", "pem-key", "openssh-ed25519", "token"})


@dataclass(frozen=True)
class Finding:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


def _leaf(document: Any, key: str) -> str | None:
    node = document
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, str) else None


def read_values(root: Path, file: str, sops: Sops) -> Any:
    """The decrypted document of ``file`` (in memory only), or None when it does not exist."""
    path = root / file
    if not path.exists():
        return None
    return yaml.safe_load(sops.decrypt(path, shown_as=file)) or {}


def check_values(root: Path, slots: list[Slot], sops: Sops) -> list[Finding]:
    """Every declared secret whose value is missing or not of its format (needs a key that
    decrypts every file: an admin's)."""
    findings = []
    documents: dict[str, Any] = {}
    for slot in slots:
        if slot.file not in documents:
            documents[slot.file] = read_values(root, slot.file, sops)
        document = documents[slot.file]
        if document is None:
            findings.append(Finding(slot.file, slot.key, "missing (the file does not exist)"))
            continue
        value = _leaf(document, slot.key)
        if value is None:
            findings.append(Finding(slot.file, slot.key, "missing"))
            continue
        why = problem(slot.format, value)
        if why:
            findings.append(Finding(slot.file, slot.key, f"{why} (format {slot.format})"))
    return findings


@dataclass(frozen=True)
class Generated:
    made: tuple[Slot, ...]  # values written
    left: tuple[tuple[Slot, str], ...]  # missing or malformed, made elsewhere: (slot, why)
    inventory: tuple[tuple[tuple[str, ...], str], ...]  # inventory keys set: (path, value)


def _present(root: Path, slot: Slot) -> bool:
    path = root / slot.file
    return path.exists() and slot.key.strip("/") in read_sops_file(path).key_paths


def generate(
    root: Path,
    plan: Mapping[str, Any],
    sops: Sops,
    *,
    set_inventory: Callable[[list[str], str], None],
    replace_invalid: bool = False,
    progress: Callable[[Slot], None] = lambda _: None,
) -> Generated:
    """Fill every missing secret this module can make; with ``replace_invalid`` also
    replace values that are not of their format (decrypting, so an admin key is needed).
    A WireGuard key's public half goes into the inventory (hosts.<h>.wireguard.public_key)."""
    slots = Slot.all_from_plan(plan)
    secrets_plan = SecretsPlan.from_plan(plan)
    invalid = set()
    if replace_invalid:
        invalid = {(f.file, f.key) for f in check_values(root, slots, sops)}
    made, left, inventory = [], [], []
    for slot in slots:
        if _present(root, slot) and (slot.file, slot.key) not in invalid:
            continue
        if slot.generator is Generator.RANDOM:
            value = fresh(slot.format)
        elif slot.generator is Generator.WIREGUARD:
            value, public = wireguard_pair()
            host = _host_of(plan, slot.file)
            keys = ["hosts", host, "wireguard", "public_key"]
            set_inventory(keys, public)
            inventory.append((tuple(keys), public))
        else:
            bad = (slot.file, slot.key) in invalid and _present(root, slot)
            left.append((slot, "not of its format" if bad else "missing"))
            continue
        progress(slot)
        set_secret(root, secrets_plan, slot.file, slot.key, value, sops=sops)
        made.append(slot)
    return Generated(tuple(made), tuple(left), tuple(inventory))


def _host_of(plan: Mapping[str, Any], file: str) -> str:
    machines = plan["secrets"][file].get("machines", [])
    hosts = [m for m in machines if m in plan.get("hosts", {})]
    if len(hosts) != 1:
        raise UserError(f"{file}: a WireGuard key belongs to one host, not {machines}")
    return str(hosts[0])


HOW = {
    Generator.SSH_HOST_KEY: "run `tools secrets bootstrap`",
    Generator.CA: "run `tools ca init`",
    Generator.CERTS: "run `tools certs issue`",
    Generator.MANUAL: "set it with `tools secrets set FILE KEY`",
}
