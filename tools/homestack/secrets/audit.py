"""`tools secrets check`: audit every secret file against the plan.

`audit` reads metadata alone: recipients, key names and the MAC's presence and shape are
clear text in a sops file, so it runs anywhere, without any private key, in milliseconds.
Whether the MAC is right needs the data key: `verify_macs` has sops decrypt each file the
admin's key opens (into memory, never to disk; sops checks the MAC on every decrypt) and
says which files it could not verify.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from homestack.errors import UserError
from homestack.secrets import verify
from homestack.secrets.model import Principal, SecretSpec, SecretsPlan
from homestack.secrets.rules import CONFIG_NAME, rules_are_current
from homestack.secrets.sops import Sops, age_key_file, require_private_key_file
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
        if hidden or path.name.startswith("README") or (path.is_dir() and not path.is_symlink()):
            continue  # links and special files are listed: audit_file says what is wrong
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


def readers_of(plan: SecretsPlan, sops: SopsFile) -> list[str]:
    """Everyone a file's metadata lets decrypt it: age recipients, PGP keys, cloud keys."""
    found = [who(plan, r) for r in dict.fromkeys(sops.recipients)]
    found += [f"pgp key {fp}" for fp in dict.fromkeys(sops.pgp)]
    found += [f"a {kind} key" for kind in sorted({k for g in sops.key_groups for k in g.other})]
    return found


def audit_file(
    plan: SecretsPlan, spec: SecretSpec | None, rel: str, sops: SopsFile
) -> Iterator[str]:
    for problem in sops.problems:
        yield f"broken: {problem}"
    if spec is None:
        readers = ", ".join(readers_of(plan, sops)) or "nobody"
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


@dataclass(frozen=True)
class MacReport:
    """What `verify_macs` found: files whose MAC sops checked, and files it could not."""

    findings: tuple[Finding, ...]
    verified: tuple[str, ...]
    not_verified: tuple[str, ...]  # no local age key is a recipient of these


def verify_macs(
    root: Path,
    plan: SecretsPlan,
    sops: Sops,
    *,
    jobs: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> MacReport:
    """Decrypt, in memory, every well-formed secret file one of our age keys opens.

    sops verifies the MAC over all values on decrypt, so a file changed outside sops (an
    altered value or MAC) fails here. Files no local key opens are listed, not passed."""
    # a key others can read stops the check once, not once per file
    require_private_key_file(age_key_file(sops.env))
    identities = {i.recipient for i in verify.local_identities(sops.env)}
    specs = {spec.path for spec in plan.with_backups(root).specs}
    candidates: list[str] = []
    not_verified: list[str] = []
    for rel in files_on_disk(root):
        if rel not in specs:
            continue  # audit already reports it as not belonging here
        try:
            meta = read_sops_file(root / rel)
        except SopsFormatError:
            continue  # audit reports it as broken
        if meta.problems:
            continue
        (candidates if identities & set(meta.recipients) else not_verified).append(rel)

    def one(rel: str) -> Finding | None:
        try:
            sops.decrypt(root / rel, shown_as=rel)
        except UserError as exc:
            return Finding(rel, f"does not verify: {str(exc).split(': ', 1)[-1]}")
        return None

    results: list[Finding | None] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for done, result in enumerate(pool.map(one, candidates), 1):
            results.append(result)
            if progress is not None:
                progress(done, len(candidates))
    findings = tuple(f for f in results if f is not None)
    bad = {f.path for f in findings}
    verified = tuple(rel for rel in candidates if rel not in bad)
    return MacReport(findings, verified, tuple(not_verified))


def mac_summary(report: MacReport) -> str:
    """One clause for the check's summary line: what was verified and what was not."""
    if not (report.verified or report.not_verified or report.findings):
        return "no file to decrypt, so no MAC verified"
    if not report.not_verified:
        return f"MACs verified ({len(report.verified)} files decrypted in memory)"
    if not report.verified and not report.findings:
        return "MAC not verified (no admin key)"
    return (
        f"MACs verified for {len(report.verified)} files; MAC not verified for "
        f"{len(report.not_verified)} (no admin key of yours opens them)"
    )
