"""`tools secrets check`: audit every secret file against the plan from metadata alone.

Nothing is decrypted. Recipients, key names and the MAC's presence and shape are clear
text in a sops file, so this runs anywhere, without any private key, in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from homestack.secrets.model import Principal, SecretSpec, SecretsPlan
from homestack.secrets.rules import CONFIG_NAME, rules_are_current
from homestack.secrets.sopsfile import SopsFile, SopsFormatError, read_sops_file
from homestack.secrets.staging import SECRETS_DIR

SOPS_SUFFIXES = (".yaml", ".yml", ".json", ".env", ".ini")


@dataclass(frozen=True)
class Finding:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def files_on_disk(root: Path) -> list[str]:
    """Secret files under secrets/ (relative to root), skipping hidden files and dirs."""
    base = root / SECRETS_DIR
    if not base.is_dir():
        return []
    found = []
    for path in base.rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if hidden or not path.is_file() or path.name.startswith("README"):
            continue
        found.append(rel.as_posix())
    return sorted(found)


def who(plan: SecretsPlan, recipient: str) -> str:
    """A recipient as a person reads it: the inventory name it belongs to, where known."""
    known = plan.by_recipient().get(recipient)
    if known:
        return known.label
    for p in plan.principals:  # an ssh-ed25519 recipient: match the machine's host key
        if p.host_key and recipient.split()[:2] == p.host_key.split()[:2]:
            return f"{p.label} SSH host key"
    short = recipient if len(recipient) < 30 else recipient[:24] + "…"
    return f"unknown recipient {short}"


def audit_file(
    plan: SecretsPlan, spec: SecretSpec | None, rel: str, sops: SopsFile
) -> Iterator[str]:
    for problem in sops.problems:
        yield f"broken: {problem}"
    if spec is None:
        readers = ", ".join(who(plan, r) for r in sops.recipients) or "nobody"
        yield f"not a secret file of the plan, yet {readers} can decrypt it (remove it?)"
        return
    if len(sops.key_groups) > 1:
        groups = len(sops.key_groups)
        yield f"has {groups} key groups (Shamir); the plan expects one (run `tools secrets sync`)"
    for recipient in dict.fromkeys(sops.recipients):
        if recipient not in spec.recipients:
            yield f"{who(plan, recipient)} can decrypt it but should not"
    for fp in sops.pgp:
        yield f"pgp key {fp} can decrypt it but should not"
    for kind in sorted({k for g in sops.key_groups for k in g.other}):
        yield f"a {kind} key can decrypt it but should not"
    have = set(sops.recipients)
    for recipient in spec.recipients:
        if recipient not in have:
            yield f"{who(plan, recipient)} should decrypt it but cannot (run `tools secrets sync`)"
    for key in spec.keys:
        if key not in sops.key_paths:
            yield f"secret {key} is declared but the file does not contain it"


def _missing_age_keys(plan: SecretsPlan, spec: SecretSpec) -> Iterator[str]:
    for name in (*spec.admins, *spec.machines):
        principal: Principal | None = plan.principal(name)
        if principal is not None and not principal.recipient:
            fix = (
                "tools secrets bootstrap " + name if principal.is_machine else "tools secrets init"
            )
            yield f"{principal.label} should decrypt it but has no age key (run `{fix}`)"


def audit(root: Path, plan: SecretsPlan) -> list[Finding]:
    """Every finding, one per line, sorted by file."""
    findings: list[Finding] = []
    specs = {spec.path: spec for spec in plan.with_backups(root).specs}
    on_disk = files_on_disk(root)
    for rel in sorted(set(on_disk) | set(specs)):
        spec = specs.get(rel)
        messages: list[str] = list(_missing_age_keys(plan, spec)) if spec else []
        if rel not in on_disk:
            if spec and spec.keys:
                messages.append(f"missing; it should hold {', '.join(spec.keys)} ({spec.purpose})")
        else:
            try:
                messages += audit_file(plan, spec, rel, read_sops_file(root / rel))
            except SopsFormatError as exc:
                messages.append(f"broken: {str(exc).split(': ', 1)[-1]}")
        findings += [Finding(rel, m) for m in messages]
    if not rules_are_current(root, plan):
        # sops run by hand (or by an editor plugin) would encrypt new files for the wrong keys
        findings.append(
            Finding(CONFIG_NAME, "not what the inventory gives (run `tools secrets rules`)")
        )
    return findings
