"""Admin identities (`secrets init`) and machine host keys (`secrets bootstrap`).

A machine's SSH host key is made before the machine first boots: its public half and
derived age recipient go into the inventory, its private half into
secrets/host-keys/<machine>.yaml, readable by the admins and by whoever installs it
(a guest's hypervisor; nobody else for a host, which gets it at provisioning).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from homestack.errors import UserError
from homestack.secrets.agekeys import AgeIdentity, HostKey, identity_file_text, read_identities
from homestack.secrets.model import Kind, Principal, SecretsPlan
from homestack.secrets.sops import Sops, age_key_file, require_private_key_file
from homestack.secrets.store import create_file

HOST_KEY_NAME = "ssh_host_ed25519_key"


def host_key_file(machine: str) -> str:
    return f"secrets/host-keys/{machine}.yaml"


def admin_key_path() -> Path:
    """Where sops looks for age identities: $SOPS_AGE_KEY_FILE, else the XDG default."""
    return age_key_file({})


@dataclass(frozen=True)
class AdminKey:
    path: Path
    identity: AgeIdentity
    created: bool


def init_admin_key(path: Path) -> AdminKey:
    """Create an age identity at ``path`` (0600) unless one exists; never overwrite."""
    if path.exists():
        require_private_key_file(path)
        found = read_identities(path.read_text())
        if not found:
            raise UserError(f"{path}: exists but holds no age identity; not touching it")
        return AdminKey(path, found[0], created=False)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity = AgeIdentity.generate()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(identity_file_text(identity, created))
        handle.flush()
        os.fsync(handle.fileno())
    return AdminKey(path, identity, created=True)


class HostKeyOutcome(Enum):
    GENERATED = "generated"
    IMPORTED = "imported"
    KEPT = "kept"  # file and inventory already agree
    RECORDED = "recorded"  # file existed; the inventory now matches it


@dataclass(frozen=True)
class BootstrapResult:
    machine: str
    outcome: HostKeyOutcome
    public_line: str
    age_recipient: str


# set_inventory_value(keys, value), injected so the library does not pick the inventory path
SetValue = Callable[[list[str], str], None]


def _section(principal: Principal) -> str:
    return "hosts" if principal.kind is Kind.HOST else "guests"


def _record(principal: Principal, key: HostKey, set_value: SetValue) -> bool:
    changed = False
    if principal.host_key != key.public_line:
        set_value([_section(principal), principal.name, "host_key"], key.public_line)
        changed = True
    if principal.recipient != key.age_recipient:
        set_value([_section(principal), principal.name, "age_key"], key.age_recipient)
        changed = True
    return changed


def bootstrap_machine(
    root: Path,
    plan: SecretsPlan,
    machine: str,
    sops: Sops,
    set_value: SetValue,
    *,
    force: bool = False,
    import_pem: bytes | None = None,
) -> BootstrapResult:
    """Give ``machine`` a host key (see the module doc); idempotent without ``force``."""
    principal = plan.principal(machine)
    if principal is None or not principal.is_machine:
        raise UserError(f"{machine}: not a host or guest of the inventory")
    rel = host_key_file(machine)
    comment = f"root@{machine}"
    if (root / rel).exists() and not force and import_pem is None:
        pem = sops.decrypt(root / rel, HOST_KEY_NAME)
        key = HostKey.load(pem.encode(), comment)
        changed = _record(principal, key, set_value)
        outcome = HostKeyOutcome.RECORDED if changed else HostKeyOutcome.KEPT
        return BootstrapResult(machine, outcome, key.public_line, key.age_recipient)
    if (root / rel).exists() and not force:
        raise UserError(f"{rel}: exists; pass --force to replace {machine}'s host key")
    if principal.host_key and not force and import_pem is None:
        raise UserError(
            f"{machine}: the inventory already has a host key but {rel} is missing: import the "
            f"private key with --key FILE, or pass --force to give {machine} a new one"
        )
    if import_pem is not None:
        key = HostKey.load(import_pem, comment)
        if (
            principal.host_key
            and principal.host_key.split()[:2] != key.public_line.split()[:2]
            and not force
        ):
            raise UserError(
                f"{machine}: that key is not the host key the inventory lists; "
                "pass --force to replace it"
            )
        outcome = HostKeyOutcome.IMPORTED
    else:
        key = HostKey.generate(comment)
        outcome = HostKeyOutcome.GENERATED
    # The file first: if we stop before the inventory is updated, the next run records it.
    create_file(root, plan, rel, {HOST_KEY_NAME: key.private_pem}, sops)
    _record(principal, key, set_value)
    return BootstrapResult(machine, outcome, key.public_line, key.age_recipient)


def bootstrap_order(plan: SecretsPlan, machines: list[str]) -> tuple[list[str], list[str]]:
    """(hosts, guests): hosts first, since a guest's key file is encrypted to its host."""
    known = {p.name: p for p in plan.machines}
    names = machines or list(known)
    unknown = [m for m in names if m not in known]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a host or guest of the inventory")
    hosts = [m for m in names if known[m].kind is Kind.HOST]
    return hosts, [m for m in names if m not in hosts]
