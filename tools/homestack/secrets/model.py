"""The secrets view of the plan: which files exist, who may decrypt each, and who is who.

Everything here comes from `plan["secrets"]` and the plan's users, hosts and guests
(lib/secrets.nix decides); nothing is recomputed from the inventory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from homestack.errors import UserError

# A file kept when it was replaced (`tools ca init --force`): secrets/backup/<name>-<UTC>.<ext>.
_BACKUP = re.compile(r"secrets/backup/(?P<stem>.+)-\d{8}T\d{6}Z(?P<ext>\.[A-Za-z0-9]+)")


def backup_of(rel: str) -> str | None:
    """The plan file a backup was taken of, or None when ``rel`` is not a backup."""
    m = _BACKUP.fullmatch(rel)
    return f"secrets/{m['stem']}{m['ext']}" if m else None


class Kind(Enum):
    ADMIN = "admin"
    USER = "user"
    HOST = "host"
    GUEST = "guest"


@dataclass(frozen=True)
class Principal:
    """Someone who can hold an age identity: a person or a machine."""

    name: str
    kind: Kind
    recipient: str | None
    host_key: str | None = None
    hypervisor: str | None = None  # guests only

    @property
    def label(self) -> str:
        if self.kind is Kind.GUEST:
            return f"{self.name} (guest on {self.hypervisor})"
        return f"{self.name} ({self.kind.value})"

    @property
    def anchor(self) -> str:
        return f"{self.kind.value}_{self.name}"

    @property
    def is_machine(self) -> bool:
        return self.kind in (Kind.HOST, Kind.GUEST)


@dataclass(frozen=True)
class SecretSpec:
    """One sops file of the plan."""

    path: str
    machines: tuple[str, ...]
    admins: tuple[str, ...]
    recipients: tuple[str, ...]
    keys: tuple[str, ...]
    purpose: str

    @classmethod
    def from_plan(cls, entry: Mapping[str, Any]) -> SecretSpec:
        return cls(
            path=str(entry["path"]),
            machines=tuple(entry.get("machines", ())),
            admins=tuple(entry.get("admins", ())),
            recipients=tuple(entry.get("recipients", ())),
            keys=tuple(entry.get("keys", ())),
            purpose=str(entry.get("purpose", "")),
        )


@dataclass(frozen=True)
class SecretsPlan:
    specs: tuple[SecretSpec, ...]
    principals: tuple[Principal, ...]

    @classmethod
    def from_plan(cls, plan: Mapping[str, Any]) -> SecretsPlan:
        principals = []
        for name, user in sorted(plan.get("users", {}).items()):
            kind = Kind.ADMIN if user.get("admin") else Kind.USER
            principals.append(Principal(name, kind, user.get("ageKey")))
        for name, host in sorted(plan.get("hosts", {}).items()):
            principals.append(Principal(name, Kind.HOST, host.get("ageKey"), host.get("hostKey")))
        for name, guest in sorted(plan.get("guests", {}).items()):
            principals.append(
                Principal(
                    name, Kind.GUEST, guest.get("ageKey"), guest.get("hostKey"), guest.get("host")
                )
            )
        specs = tuple(
            SecretSpec.from_plan(entry) for _, entry in sorted(plan.get("secrets", {}).items())
        )
        return cls(specs, tuple(principals))

    def with_backups(self, root: Path) -> SecretsPlan:
        """This plan plus one spec per backup under secrets/backup/: a backup must be
        readable by exactly whoever may read the file it was taken of."""
        by_path = {spec.path: spec for spec in self.specs}
        base = root / "secrets" / "backup"
        extra = []
        for path in sorted(base.glob("*")) if base.is_dir() else []:
            rel = path.relative_to(root).as_posix()
            original = by_path.get(backup_of(rel) or "")
            if original is not None and path.is_file():
                extra.append(replace(original, path=rel, purpose=f"backup of {original.path}"))
        return SecretsPlan(self.specs + tuple(extra), self.principals) if extra else self

    def spec(self, path: str) -> SecretSpec:
        for spec in self.specs:
            if spec.path == path:
                return spec
        raise UserError(
            f"{path}: not a secret file of the plan (the inventory decides which files exist; "
            "see `tools secrets check`)"
        )

    def by_recipient(self) -> dict[str, Principal]:
        return {p.recipient: p for p in self.principals if p.recipient}

    def principal(self, name: str) -> Principal | None:
        for p in self.principals:
            if p.name == name:
                return p
        return None

    @property
    def machines(self) -> tuple[Principal, ...]:
        return tuple(p for p in self.principals if p.is_machine)
