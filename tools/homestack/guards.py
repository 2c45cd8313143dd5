"""Guards: rules a change must pass before it is deployed, and approvals bound to one diff.

A guard is data: which kinds of change it stops, optionally only to or from which
machines. The built-in guards below always apply; `policy.toml` next to the inventory adds
more under `[[policy.guard]]`. A change that breaks a guard deploys only with an approval
token for that exact diff: an HMAC of the diff's hash under a key only this user holds
(`tools plan approve` prints it), so a token cannot be replayed for another change and an
agent that sees the diff cannot forge one.
"""

from __future__ import annotations

import fnmatch
import functools
import getpass
import hmac
import os
import secrets
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.plandiff import (
    KINDS,
    Change,
    DeployedRecord,
    PlanDiff,
    compare,
    deployed_record,
    read_deployed,
)
from homestack.process import default_runner

POLICY_FILE = "policy.toml"

# The guards every Homestack deploy checks. Same shape as `[[policy.guard]]` in policy.toml.
DEFAULT_POLICY = """
[[policy.guard]]
name = "database-stays-private"
why = "PostgreSQL is reached only by the guests that own a database on it"
kinds = ["flow-opened", "public-opened", "route-added", "route-changed"]
to = ["db", "service:postgresql"]
from = ["lan", "internet", "role:proxy"]

[[policy.guard]]
name = "public-only-through-the-proxy"
why = "the internet reaches guests through the proxy's TLS and routes only"
kinds = ["public-opened"]
except_to = ["role:proxy"]

[[policy.guard]]
name = "state-is-kept"
why = "destroying a guest's dataset loses its data"
kinds = ["dataset-destroyed"]

[[policy.guard]]
name = "new-secret-access"
why = "whoever can decrypt a secret file reads every value in it"
kinds = ["secret-gained", "secret-key-changed", "user-added", "user-admin", "user-key-changed"]
"""


@dataclass(frozen=True)
class Guard:
    """One rule: a change matching it needs an approval."""

    name: str
    why: str
    kinds: tuple[str, ...]
    to: tuple[str, ...] = ()  # selectors; empty means any
    from_: tuple[str, ...] = ()
    except_to: tuple[str, ...] = ()
    origin: str = "built-in"

    @classmethod
    def parse(cls, data: Mapping[str, Any], origin: str, index: int) -> Guard:
        where = f"{origin}: policy.guard[{index}]"
        known = {"name", "why", "kinds", "to", "from", "except_to"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})"
            )

        def names(key: str, required: bool = False) -> tuple[str, ...]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}.{key}: must be a list of strings")
            if required and not value:
                raise UserError(f"{where}.{key}: must name at least one kind of change")
            return tuple(value)

        unknown_kinds = sorted(set(names("kinds", required=True)) - set(KINDS))
        if unknown_kinds:
            raise UserError(
                f"{where}.kinds: {unknown_kinds[0]!r} is not a kind of change "
                f"(kinds: {', '.join(KINDS)})"
            )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}.name: must be a non-empty string")
        return cls(
            name,
            str(data.get("why", "")),
            names("kinds", required=True),
            names("to"),
            names("from"),
            names("except_to"),
            origin,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "why": self.why,
            "kinds": list(self.kinds),
            "to": list(self.to),
            "from": list(self.from_),
            "except_to": list(self.except_to),
            "origin": self.origin,
        }


def _parse_policy(text: str, origin: str) -> list[Guard]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin}: not valid TOML: {exc}") from exc
    policy = data.get("policy", {})
    extra = sorted(set(data) - {"policy"}) + sorted(set(policy) - {"guard"})
    if extra:
        raise UserError(f"{origin}: {extra[0]}: unknown key (guards go under [[policy.guard]])")
    return [Guard.parse(g, origin, i) for i, g in enumerate(policy.get("guard", []))]


def load_policy(inventory: Path) -> list[Guard]:
    """The built-in guards plus those in policy.toml next to ``inventory``."""
    guards = _parse_policy(DEFAULT_POLICY, "built-in")
    path = Path(inventory).resolve().parent / POLICY_FILE
    if path.is_file():
        guards += _parse_policy(path.read_text(), POLICY_FILE)
    return guards


def _selects(selector: str, name: str | None, plans: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``selector`` names ``name``: a name or glob, "guests", "service:S" (a guest
    running S), "role:proxy" (the plan's proxy), "role:R" (a host of role R)."""
    if name is None:
        return False
    for plan in plans:
        guests = plan.get("guests") or {}
        hosts = plan.get("hosts") or {}
        if selector == "guests" and name in guests:
            return True
        if selector.startswith("service:") and selector[8:] in (guests.get(name) or {}).get(
            "services", []
        ):
            return True
        if selector == "role:proxy" and plan.get("proxy") == name:
            return True
        if selector.startswith("role:") and (hosts.get(name) or {}).get("role") == selector[5:]:
            return True
    return fnmatch.fnmatchcase(name, selector)


def _any(selectors: Sequence[str], name: str | None, plans: Sequence[Mapping[str, Any]]) -> bool:
    return any(_selects(s, name, plans) for s in selectors)


@dataclass(frozen=True)
class Violation:
    guard: Guard
    change: Change

    def __str__(self) -> str:
        why = f" ({self.guard.why})" if self.guard.why else ""
        return f"guard {self.guard.name}: {self.change.summary}{why}"

    def to_json(self) -> dict[str, Any]:
        return {"guard": self.guard.name, "why": self.guard.why, "change": self.change.to_json()}


def breaks(violations: Sequence[Violation]) -> str:
    """ "3 change(s) break 1 guard" """
    guards = {v.guard.name for v in violations}
    return f"{len(violations)} change(s) break {len(guards)} guard{'s' if len(guards) > 1 else ''}"


def violation_lines(violations: Sequence[Violation]) -> list[str]:
    """The broken guards for people: each guard once, with why, then its changes."""
    out: list[str] = []
    for name in dict.fromkeys(v.guard.name for v in violations):
        mine = [v for v in violations if v.guard.name == name]
        why = f" ({mine[0].guard.why})" if mine[0].guard.why else ""
        out.append(f"guard {name} broken{why}:")
        out += [f"  {v.change.summary}" for v in mine]
    return out


def check(
    diff: PlanDiff, guards: Sequence[Guard], old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[Violation]:
    """Every (guard, change) pair where the change breaks the guard."""
    plans = (new, old)
    found = []
    for change in diff.changes:
        for guard in guards:
            if change.kind not in guard.kinds:
                continue
            if guard.to and not _any(guard.to, change.target, plans):
                continue
            if guard.from_ and not _any(guard.from_, change.source, plans):
                continue
            if guard.except_to and _any(guard.except_to, change.target, plans):
                continue
            found.append(Violation(guard, change))
    return found


# --- approvals ---------------------------------------------------------------------------


def approval_key_file() -> Path:
    """This user's approval key: $HOMESTACK_APPROVAL_KEY, else in ~/.config/homestack."""
    env = os.environ.get("HOMESTACK_APPROVAL_KEY")
    if env:
        return Path(env)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "homestack" / "approval.key"


def _approval_key(create: bool) -> bytes:
    path = approval_key_file()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            raise UserError(
                f"{path}: no approval key on this machine; `tools plan approve` creates it"
            ) from None
    except ValueError as exc:
        raise UserError(f"{path}: not an approval key (64 hex digits)") from exc
    key = secrets.token_bytes(32)
    atomic_write(path, (key.hex() + "\n").encode(), mode=0o600)
    return key


def approval_token(diff_hash: str, *, create: bool = False) -> str:
    """The token that approves the diff whose hash is ``diff_hash``, for this user."""
    mac = hmac.new(_approval_key(create), f"homestack-approve:{diff_hash}".encode(), "sha256")
    return mac.hexdigest()[:32]


def approves(token: str | None, diff_hash: str) -> bool:
    """Whether ``token`` approves exactly the diff ``diff_hash``."""
    if not token:
        return False
    try:
        expected = approval_token(diff_hash)
    except UserError:
        return False
    return hmac.compare_digest(token.strip().lower(), expected)


# --- the deploy hook ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the guards say about deploying ``diff``."""

    diff: PlanDiff | None  # None when nothing was recorded as deployed yet
    violations: tuple[Violation, ...]
    approved: bool
    hosts_read: bool = False  # whether the hosts' records were read, not only this checkout's

    @property
    def allowed(self) -> bool:
        return not self.violations or self.approved

    def lines(self) -> list[str]:
        if self.diff is None and self.hosts_read:
            return [
                "no deploy recorded yet, in this checkout or on the hosts that answered: "
                "this one is not checked; a complete deploy records what later ones are "
                "checked against"
            ]
        if self.diff is None:
            return [
                "no deploy recorded in this checkout (.homestack/deployed.json): this one "
                "is not checked; `tools deploy --fetch-record` fetches the hosts' record"
            ]
        out = self.diff.lines()
        out += violation_lines(self.violations)
        if self.violations and self.approved:
            out.append(f"{breaks(self.violations)}, approved for diff {self.diff.digest}")
        elif self.violations:
            out.append(
                f"refused: {breaks(self.violations)}; after reviewing this "
                f"diff, a person runs `tools plan approve --against deployed --diff "
                f"{self.diff.digest}` and deploys with --approve TOKEN"
            )
        return out


def evaluate(
    inventory: Path,
    plan: Mapping[str, Any],
    approve: str | None,
    deployed: DeployedRecord | None = None,
    *,
    hosts_read: bool = False,
) -> Verdict:
    """The guards' verdict on deploying ``plan`` over what was last recorded as deployed:
    ``deployed`` when the hosts' records were read (``hosts_read``), else this checkout's."""
    old = deployed if hosts_read else read_deployed(inventory)
    if old is None:
        return Verdict(None, (), False, hosts_read)
    diff = compare(old.plan, plan, old_label="deployed", new_label=str(inventory))
    violations = tuple(check(diff, load_policy(inventory), old.plan, plan))
    return Verdict(diff, violations, approves(approve, diff.digest), hosts_read)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def new_record(inventory: Path, plan: Mapping[str, Any]) -> DeployedRecord:
    """The record of deploying ``plan`` now, from this checkout's revision."""
    return DeployedRecord(
        dict(plan),
        _now(),
        _git_head(Path(inventory).resolve().parent),
        f"{getpass.getuser()}@{socket.gethostname()}",
    )


def store_record(inventory: Path, record: DeployedRecord) -> Path | None:
    """Write ``record`` as this checkout's, next to the inventory; None when there is no
    such directory (nothing is created outside the repository)."""
    path = deployed_record(inventory)
    if not path.parent.parent.is_dir():
        return None
    path.parent.mkdir(exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():  # local state of this checkout, like .venv/
        atomic_write(ignore, b"*\n")
    atomic_write(path, record.dumps(), mode=0o644)
    return path


def record_deployed(inventory: Path, plan: Mapping[str, Any]) -> Path | None:
    """Remember ``plan`` as deployed now, next to the inventory (see store_record)."""
    return store_record(inventory, new_record(inventory, plan))


def _git_head(directory: Path) -> str | None:
    # Best effort, for people reading the record; never a reason to fail a deploy.
    try:
        out = default_runner.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], check=False, timeout=10
        )
    except UserError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


Echo = Callable[[str], None]


def before_deploy(
    inventory: Path,
    plan: Mapping[str, Any],
    *,
    approve: str | None,
    dry_run: bool,
    echo: Echo,
    deployed: DeployedRecord | None = None,
    hosts_read: bool = False,
) -> Verdict:
    """The deploy's guard: show the diff against what is deployed and raise UserError when a
    broken guard is not approved (a dry run only says so)."""
    from homestack import auditlog  # noqa: PLC0415 - the audit log is optional here

    verdict = evaluate(inventory, plan, approve, deployed, hosts_read=hosts_read)
    if verdict.diff is not None:
        auditlog.annotate(diff=verdict.diff.digest, approved=verdict.approved)
    for line in verdict.lines():
        echo(line)
    if not verdict.allowed and not dry_run:
        assert verdict.diff is not None
        raise UserError(
            f"deploy refused: {breaks(verdict.violations)} in diff "
            f"{verdict.diff.digest[:12]}; nothing was deployed"
        )
    return verdict


class _Report(Protocol):
    @property
    def ok(self) -> bool: ...


R = TypeVar("R", bound=_Report)


def guarded(
    inventory: Path,
    plan: Mapping[str, Any],
    run: Callable[[Callable[[], DeployedRecord] | None], R],
    *,
    approve: str | None,
    dry_run: bool,
    build_only: bool,
    selected: Sequence[str],
    echo: Echo,
    deployed: DeployedRecord | None = None,
    hosts_read: bool = False,
) -> R:
    """Run a deploy (``run``) behind the guards, compared with ``deployed`` when the hosts'
    records were read (``hosts_read``), else with this checkout's record.

    ``run`` gets, when it deploys every machine, what makes the record of this deploy
    once it finished (for the hosts to keep), else None; after a complete, successful
    deploy this checkout keeps the same record."""
    before_deploy(
        inventory,
        plan,
        approve=approve,
        dry_run=dry_run or build_only,
        echo=echo,
        deployed=deployed,
        hosts_read=hosts_read,
    )
    started = None if build_only or selected else new_record(inventory, plan)
    # Stamped when first asked, at the end of the deploy: of two overlapping deploys, the
    # one that finished last is the newest record.
    finished = functools.cache(lambda: replace(started, when=_now())) if started else None
    report = run(finished)
    if report.ok and finished is not None and not dry_run:
        where = store_record(inventory, finished())
        if where is not None:
            echo(f"recorded the deployed plan in {where}")
    return report
