"""What a change to the inventory means: two plans in, a list of classified changes out.

Both plans come from lib/ (`homestack.plan.load_plan`); this module only compares them.
Each change has a kind (what happened), a risk class (info, exposure, access, destructive)
and the machines it is about, so guards (`homestack.guards`) can match it as data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.plan import lib_dir, load_plan
from homestack.process import Runner, default_runner, error_line

Plan = Mapping[str, Any]


class Risk(Enum):
    """How much a change can hurt, from least to most."""

    INFO = "info"  # nothing new can be reached, read or lost
    EXPOSURE = "exposure"  # newly reachable from the LAN or the internet
    ACCESS = "access"  # a machine or person gains network access or a secret
    DESTRUCTIVE = "destructive"  # state would be lost


RISK_ORDER = {r: i for i, r in enumerate(Risk)}

# Every kind of change compare() reports; guards select on these names.
KINDS = (
    "machine-added", "machine-removed", "machine-moved", "machine-changed",
    "dataset-created", "dataset-resized", "dataset-destroyed",
    "flow-opened", "flow-closed", "public-opened", "public-closed",
    "route-added", "route-removed", "route-changed",
    "secret-gained", "secret-lost", "secret-key-changed",
    "user-added", "user-removed", "user-key-added", "user-admin", "user-key-changed",
    "certificate-changed", "config-changed",
)  # fmt: skip


@dataclass(frozen=True)
class Change:
    """One thing a change means. ``source`` and ``target`` name machines ("lan", "internet",
    a person "admin:NAME", a secret file) so guards can select on them."""

    kind: str
    risk: Risk
    summary: str
    target: str
    source: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "risk": self.risk.value,
            "summary": self.summary,
            "source": self.source,
            "target": self.target,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class PlanDiff:
    """Every change between two plans, in a stable order, and its hash."""

    changes: tuple[Change, ...]
    old: str  # what the old side was: "HEAD", a file, "deployed", "nothing"
    new: str

    @property
    def digest(self) -> str:
        """sha256 over the canonical JSON of the changes: the same changes, the same hash."""
        canonical = json.dumps(
            [c.to_json() for c in self.changes], sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def risk(self) -> Risk:
        return max((c.risk for c in self.changes), key=RISK_ORDER.__getitem__, default=Risk.INFO)

    def to_json(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "hash": self.digest,
            "risk": self.risk.value,
            "changes": [c.to_json() for c in self.changes],
        }

    def lines(self) -> list[str]:
        """One line per change, riskiest class first, for people."""
        if not self.changes:
            return [f"no changes between {self.old} and {self.new}"]
        count = f"{len(self.changes)} change(s), highest risk {self.risk.value}"
        out = [f"{self.old} -> {self.new}: {count}"]
        for risk in sorted(Risk, key=RISK_ORDER.__getitem__, reverse=True):
            chosen = [c for c in self.changes if c.risk is risk]
            if chosen:
                out.append(f"{risk.value}:")
                out += [f"  {c.summary}" for c in chosen]
        out.append(f"diff {self.digest}")
        return out


# --- comparing two plans -----------------------------------------------------------------


def _machines(plan: Plan) -> dict[str, dict[str, Any]]:
    # "machine" says host or guest (a guest's own "kind" is its Incus instance type).
    out = {n: {**h, "machine": "host"} for n, h in (plan.get("hosts") or {}).items()}
    out |= {n: {**g, "machine": "guest"} for n, g in (plan.get("guests") or {}).items()}
    return out


def _runs(plan: Plan, machine: str) -> list[str]:
    guest = (plan.get("guests") or {}).get(machine)
    return list(guest["services"]) if guest else []


def _flow_key(f: Mapping[str, Any]) -> tuple[str, str, int, str]:
    return (f["from"], f["to"], int(f["port"]), f["proto"])


def _flows(plan: Plan) -> dict[tuple[str, str, int, str], str]:
    """Each allowed flow and why it exists (the first reason lib gives)."""
    out: dict[tuple[str, str, int, str], str] = {}
    for f in plan.get("allow") or []:
        out.setdefault(_flow_key(f), f.get("reason", ""))
    return out


def _public(plan: Plan) -> set[tuple[str, int, str]]:
    relay = plan.get("relay") or {}
    return {(f["guest"], int(f["port"]), f["proto"]) for f in relay.get("forwards") or []}


def _from_internet(plan: Plan, guest: str, port: int, proto: str) -> bool:
    return (guest, port, proto) in _public(plan)


def _route_key(r: Mapping[str, Any]) -> tuple[str, str]:
    return (r["fqdn"], r["path"])


def _route_sources(plan: Plan) -> list[str]:
    """Who reaches the routes: whoever may reach the proxy on 443 (LAN, internet)."""
    proxy = plan.get("proxy")
    sources = []
    if any(f[0] == "lan" and f[1] == proxy and f[2] == 443 for f in _flows(plan)):
        sources.append("lan")
    if proxy and _from_internet(plan, proxy, 443, "tcp"):
        sources.append("internet")
    return sources


def _secret_readers(plan: Plan) -> dict[str, dict[str, str | None]]:
    """For each secret file: the machines that can decrypt it -> their age key. Admins
    decrypt every file by design; a change of admins shows as a change of people."""
    keys = {n: m.get("ageKey") for n, m in _machines(plan).items()}
    return {
        path: {m: keys.get(m) for m in spec.get("machines") or []}
        for path, spec in (plan.get("secrets") or {}).items()
    }


def _unit_configs(plan: Plan) -> dict[tuple[str, str], Any]:
    """(machine, unit) -> the rendered artifacts that unit reads, from the plan."""
    art = plan.get("artifacts") or {}
    guests = plan.get("guests") or {}
    out: dict[tuple[str, str], Any] = {}

    def running(service: str) -> list[str]:
        return sorted(n for n, g in guests.items() if service in g.get("services", []))

    for machine in running("caddy"):
        out[(machine, "caddy.service")] = art.get("caddyfile")
    for machine in running("dnsmasq"):
        out[(machine, "dnsmasq.service")] = art.get("dnsmasq")
    for machine in running("postgresql"):
        # pg_hba and the databases it serves (postgresql-setup creates them).
        out[(machine, "postgresql.service")] = [art.get("pgHba"), art.get("postgresqlInit")]
    for machine, text in (art.get("nftables") or {}).items():
        out[(machine, "nftables.service")] = text
    for machine, text in (art.get("hostNftables") or {}).items():
        out[(machine, "nftables.service")] = [
            text,
            (art.get("bridgeNftablesByHost") or {}).get(machine),
        ]
    wg = art.get("wireguard") or {}
    for side in ("home", "relay"):
        if isinstance(wg.get(side), Mapping) and wg[side].get("host"):
            unit = f"wireguard-{wg[side]['interface']}.service"
            out[(wg[side]["host"], unit)] = wg[side]
    return out


_GUEST_FIELDS = ("address", "mac", "vcpu", "memory", "services", "ports", "hypervisor", "kind")
_HOST_FIELDS = ("role", "system", "target", "publicAddress", "engine")


def _machine_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = _machines(old), _machines(new)
    for name in sorted(b.keys() - a.keys()):
        m = b[name]
        where = f" on {m['host']}" if m["machine"] == "guest" else ""
        yield Change(
            "machine-added",
            Risk.INFO,
            f"{m['machine']} {name} added{where}",
            name,
            detail={"machine": m["machine"], "host": m.get("host")},
        )
    for name in sorted(a.keys() - b.keys()):
        m = a[name]
        yield Change(
            "machine-removed",
            Risk.INFO,
            f"{m['machine']} {name} removed",
            name,
            detail={"machine": m["machine"], "host": m.get("host")},
        )
    for name in sorted(a.keys() & b.keys()):
        was, now = a[name], b[name]
        if was["machine"] != now["machine"]:
            yield Change(
                "machine-changed",
                Risk.INFO,
                f"{name} is now a {now['machine']} (was a {was['machine']})",
                name,
            )
            continue
        if was["machine"] == "guest" and was["host"] != now["host"]:
            yield Change(
                "machine-moved",
                Risk.INFO,
                f"guest {name} moves from {was['host']} to {now['host']}",
                name,
                detail={"from": was["host"], "to": now["host"]},
            )
        fields = _GUEST_FIELDS if was["machine"] == "guest" else _HOST_FIELDS
        changed = {
            k: {"old": was.get(k), "new": now.get(k)} for k in fields if was.get(k) != now.get(k)
        }
        if changed:
            what = ", ".join(
                f"{k} {_short(v['old'])} -> {_short(v['new'])}" for k, v in changed.items()
            )
            restart = f"; restarts microvm@{name}.service" if was["machine"] == "guest" else ""
            yield Change(
                "machine-changed", Risk.INFO, f"{name}: {what}{restart}", name, detail=changed
            )


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, Mapping) and "port" in value:
        return f"{value['port']}/{value.get('proto', 'tcp')}"
    return str(value)


def _state_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a = {n: g for n, g in (old.get("guests") or {}).items() if g.get("state")}
    b = {n: g for n, g in (new.get("guests") or {}).items() if g.get("state")}
    for name in sorted(a):
        was = a[name]["state"]
        where = f"{a[name]['host']}:{was['dataset']}"
        if name not in (new.get("guests") or {}):
            yield Change(
                "dataset-destroyed",
                Risk.DESTRUCTIVE,
                f"{name}'s state {where} ({was['size']} MiB) is destroyed: the guest is removed",
                name,
                detail={"dataset": where},
            )
        elif name not in b:
            yield Change(
                "dataset-destroyed",
                Risk.DESTRUCTIVE,
                f"{name}'s state {where} is no longer kept (state_size removed)",
                name,
                detail={"dataset": where},
            )
        else:
            now = b[name]["state"]
            there = f"{b[name]['host']}:{now['dataset']}"
            if there != where:
                yield Change(
                    "dataset-destroyed",
                    Risk.DESTRUCTIVE,
                    f"{name}'s state moves from {where} to {there}: the new dataset starts empty",
                    name,
                    detail={"dataset": where, "new": there},
                )
            elif was.get("size") != now.get("size"):
                yield Change(
                    "dataset-resized",
                    Risk.INFO,
                    f"{name}'s state {where}: {was['size']} -> {now['size']} MiB",
                    name,
                    detail={"dataset": where},
                )
    for name in sorted(b.keys() - a.keys()):
        if name in (old.get("guests") or {}):
            continue  # a guest that gained state: its dataset is new, nothing is lost
        now = b[name]["state"]
        yield Change(
            "dataset-created",
            Risk.INFO,
            f"{name} gets state {b[name]['host']}:{now['dataset']} ({now['size']} MiB)",
            name,
            detail={"dataset": f"{b[name]['host']}:{now['dataset']}"},
        )


def _flow_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = _flows(old), _flows(new)
    for key in sorted(b.keys() - a.keys(), key=str):
        src, dst, port, proto = key
        exposed = src == "lan"
        risk = Risk.EXPOSURE if exposed else Risk.ACCESS
        mark = " (newly reachable from the LAN)" if exposed else ""
        yield Change(
            "flow-opened",
            risk,
            f"{src} -> {dst} {port}/{proto} opened: {b[key]}{mark}",
            dst,
            src,
            {"port": port, "proto": proto, "reason": b[key]},
        )
    for key in sorted(a.keys() - b.keys(), key=str):
        src, dst, port, proto = key
        yield Change(
            "flow-closed",
            Risk.INFO,
            f"{src} -> {dst} {port}/{proto} closed: {a[key]}",
            dst,
            src,
            {"port": port, "proto": proto, "reason": a[key]},
        )


def _public_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = _public(old), _public(new)
    for guest, port, proto in sorted(b - a):
        yield Change(
            "public-opened",
            Risk.EXPOSURE,
            f"internet -> {guest} {port}/{proto} forwarded by the relay "
            "(newly reachable from the internet)",
            guest,
            "internet",
            {"port": port, "proto": proto},
        )
    for guest, port, proto in sorted(a - b):
        yield Change(
            "public-closed",
            Risk.INFO,
            f"internet -> {guest} {port}/{proto} no longer forwarded",
            guest,
            "internet",
            {"port": port, "proto": proto},
        )


def _route_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a = {_route_key(r): r for r in old.get("routes") or []}
    b = {_route_key(r): r for r in new.get("routes") or []}
    proxy = new.get("proxy") or old.get("proxy")
    for key in sorted(b.keys() - a.keys()):
        r = b[key]
        sources = _route_sources(new)
        reach = f" (reachable from {' and '.join(sources)} through {proxy})" if sources else ""
        yield Change(
            "route-added",
            Risk.EXPOSURE if sources else Risk.INFO,
            f"route https://{_url(r)} -> {r['guest']}:{r['port']} added{reach}",
            r["guest"],
            proxy,
            {"url": _url(r), "port": r["port"], "from": sources},
        )
    for key in sorted(a.keys() - b.keys()):
        r = a[key]
        yield Change(
            "route-removed",
            Risk.INFO,
            f"route https://{_url(r)} -> {r['guest']}:{r['port']} removed",
            r["guest"],
            proxy,
            {"url": _url(r)},
        )
    for key in sorted(a.keys() & b.keys()):
        was, now = a[key], b[key]
        if (was["guest"], was["upstream"], was.get("h2c")) != (
            now["guest"],
            now["upstream"],
            now.get("h2c"),
        ):
            yield Change(
                "route-changed",
                Risk.EXPOSURE,
                f"route https://{_url(now)} now -> {now['guest']} {now['upstream']}"
                f" (was {was['guest']} {was['upstream']})",
                now["guest"],
                proxy,
                {"url": _url(now), "was": was["guest"]},
            )


def _url(route: Mapping[str, Any]) -> str:
    return route["fqdn"] + ("" if route["path"] == "/" else route["path"])


def _secret_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = _secret_readers(old), _secret_readers(new)
    for path in sorted(a.keys() | b.keys()):
        was, now = a.get(path, {}), b.get(path, {})
        for reader in sorted(now.keys() - was.keys()):
            yield Change(
                "secret-gained",
                Risk.ACCESS,
                f"{reader} can now decrypt {path}",
                path,
                reader,
                {"new_file": path not in a},
            )
        for reader in sorted(was.keys() - now.keys()):
            yield Change(
                "secret-lost",
                Risk.INFO,
                f"{reader} can no longer decrypt {path}",
                path,
                reader,
                {"file_removed": path not in b},
            )
        for reader in sorted(was.keys() & now.keys()):
            if was[reader] != now[reader] and now[reader] is not None:
                yield Change(
                    "secret-key-changed",
                    Risk.ACCESS,
                    f"{path}: {reader}'s age key changes: whoever holds "
                    f"{now[reader]} can decrypt it",
                    path,
                    reader,
                    {"old": was[reader], "new": now[reader]},
                )


def _config_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = _unit_configs(old), _unit_configs(new)
    added = _machines(new).keys() - _machines(old).keys()
    for machine, unit in sorted(a.keys() & b.keys()):
        if a[(machine, unit)] != b[(machine, unit)] and machine not in added:
            yield Change(
                "config-changed",
                Risk.INFO,
                f"{machine}: {unit} reloads with a new rendered configuration",
                machine,
                detail={"unit": unit},
            )


_CERT_FIELDS = ("mode", "names", "includeNetwork", "acmeEmail", "caSource", "certSource")


def _certificate_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = old.get("certificates") or {}, new.get("certificates") or {}
    changed = {k: {"old": a.get(k), "new": b.get(k)} for k in _CERT_FIELDS if a.get(k) != b.get(k)}
    if not changed or not a or not b:
        return
    # A new CA or mode changes what every client trusts; names alone only widen a leaf.
    trust = {"mode", "caSource", "includeNetwork"} & changed.keys()
    what = ", ".join(f"{k} {_short(v['old'])} -> {_short(v['new'])}" for k, v in changed.items())
    yield Change(
        "certificate-changed",
        Risk.ACCESS if trust else Risk.INFO,
        f"certificates: {what}",
        "certificates",
        detail=changed,
    )


def _people_changes(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = old.get("users") or {}, new.get("users") or {}
    for name in sorted(b.keys() - a.keys()):
        role = "admin" if b[name].get("admin") else "user"
        yield Change(
            "user-added",
            Risk.ACCESS,
            f"{role} {name} added: may log in everywhere"
            + (" and decrypt every secret file" if b[name].get("admin") else ""),
            f"user:{name}",
            detail={"admin": bool(b[name].get("admin"))},
        )
    for name in sorted(a.keys() - b.keys()):
        yield Change("user-removed", Risk.INFO, f"user {name} removed", f"user:{name}")
    for name in sorted(a.keys() & b.keys()):
        new_keys = set(b[name].get("sshKeys") or []) - set(a[name].get("sshKeys") or [])
        if new_keys:
            yield Change(
                "user-key-added",
                Risk.ACCESS,
                f"user {name}: {len(new_keys)} new SSH key(s)",
                f"user:{name}",
            )
        if b[name].get("admin") and not a[name].get("admin"):
            yield Change(
                "user-admin",
                Risk.ACCESS,
                f"user {name} becomes an admin: may decrypt every secret file",
                f"user:{name}",
            )
        if b[name].get("ageKey") and b[name].get("ageKey") != a[name].get("ageKey"):
            admin = bool(b[name].get("admin"))
            reads = "every secret file" if admin else "no secret file (not an admin)"
            yield Change(
                "user-key-changed",
                Risk.ACCESS if admin else Risk.INFO,
                f"user {name}: age key becomes {b[name]['ageKey']}: whoever holds it decrypts "
                f"{reads}",
                f"user:{name}",
            )


def compare(old: Plan, new: Plan, *, old_label: str = "old", new_label: str = "new") -> PlanDiff:
    """Every change that turns plan ``old`` into plan ``new``."""
    changes = [
        *_machine_changes(old, new),
        *_state_changes(old, new),
        *_flow_changes(old, new),
        *_public_changes(old, new),
        *_route_changes(old, new),
        *_secret_changes(old, new),
        *_people_changes(old, new),
        *_certificate_changes(old, new),
        *_config_changes(old, new),
    ]
    return PlanDiff(tuple(changes), old_label, new_label)


# --- where the old plan comes from -------------------------------------------------------


def plan_at_revision(inventory: Path, rev: str, runner: Runner = default_runner) -> dict[str, Any]:
    """The plan of ``inventory`` as it was at git revision ``rev``, computed by the lib/ of
    that same revision: the plan that revision would have deployed, rendered artifacts
    included, even when lib/ changed since (a new lib may not accept an old inventory)."""
    if not rev or rev.startswith("-"):  # git would read it as an option
        raise UserError(f"{rev!r}: not a git revision")
    inventory = Path(inventory).resolve()
    repo = inventory.parent
    top = runner.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], check=False)
    if top.returncode != 0:
        raise UserError(f"{repo}: not a git repository: {error_line(top.stderr, 'git failed')}")
    toplevel = Path(top.stdout.strip())
    prefix = repo.relative_to(toplevel).as_posix()
    where = "" if prefix == "." else f"{prefix}/"
    shown = runner.run(
        ["git", "-C", str(toplevel), "show", f"{rev}:{where}{inventory.name}"], check=False
    )
    if shown.returncode != 0:
        raise UserError(
            f"{rev}:{where}{inventory.name}: {error_line(shown.stderr, 'not in that revision')}"
        )
    with tempfile.TemporaryDirectory(prefix="homestack-diff-") as tmp:
        base = Path(tmp)
        archive = base / "lib.tar"
        out = runner.run(
            [
                "git",
                "-C",
                str(toplevel),
                "archive",
                "--format=tar",
                "-o",
                str(archive),
                rev,
                f"{where}lib",
            ],
            check=False,
        )
        if out.returncode != 0:
            raise UserError(f"{rev}:{where}lib: {error_line(out.stderr, 'git archive failed')}")
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4, and security backports
                tar.extractall(base / "tree", filter="data")
            else:  # git archive of our own repository: regular files and directories only
                tar.extractall(base / "tree", members=[m for m in tar if m.isreg() or m.isdir()])  # noqa: S202
        copy = base / "tree" / where / inventory.name
        copy.write_text(shown.stdout)
        try:
            return load_plan(copy, runner)
        except (KeyError, TypeError):
            # That lib/ predates the eval.nix answer tools read today: judge the old
            # inventory with the current lib/ instead (its artifacts are then today's).
            shutil.rmtree(copy.parent / "lib")
            copy.parent.joinpath("lib").symlink_to(lib_dir(inventory))
            return load_plan(copy, runner)


def deployed_record(inventory: Path) -> Path:
    """Where `tools deploy` records the plan it deployed (see homestack.guards)."""
    return Path(inventory).resolve().parent / ".homestack" / "deployed.json"


@dataclass(frozen=True)
class DeployedRecord:
    """What a complete deploy recorded: the plan, when (UTC), the revision it deployed and
    who ran it. A checkout keeps one in .homestack/deployed.json and every deployed host
    one in /var/lib/homestack/deployed.json. Records written before `when` and `commit`
    were kept still load: they count as older than any record that has a time."""

    plan: dict[str, Any]
    when: datetime | None = None
    commit: str | None = None
    who: str | None = None
    where: str = ""  # the file it was read from, for messages

    @classmethod
    def parse(cls, text: str, where: str) -> DeployedRecord:
        """The record in ``text``; UserError naming ``where`` when it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{where}: not a deployed record (not JSON: {exc})") from exc
        if not isinstance(data, dict):
            raise UserError(f"{where}: not a deployed record (not a JSON object)")
        plan = data.get("plan")
        if not isinstance(plan, dict):
            raise UserError(f"{where}: plan: missing")
        when = data.get("when")
        stamp = None
        if when is not None:
            try:
                stamp = datetime.fromisoformat(str(when))
            except ValueError as exc:
                raise UserError(f"{where}: when: {when!r} is not an ISO 8601 time") from exc
            stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        extra = {k: data.get(k) for k in ("commit", "who")}
        for key, value in extra.items():
            if value is not None and not isinstance(value, str):
                raise UserError(f"{where}: {key}: must be a string")
        return cls(plan, stamp, extra["commit"], extra["who"], where)

    def newer_than(self, other: DeployedRecord | None) -> bool:
        """Whether this record is strictly newer than ``other`` (None: no record at all)."""
        if other is None:
            return True
        if self.when is None:
            return False
        return other.when is None or self.when > other.when

    def describe(self) -> str:
        """ "2026-11-29T11:02:03+00:00, commit 1a2b3c4d5e6f, by root@vm" """
        when = self.when.isoformat(timespec="seconds") if self.when else "time not recorded"
        commit = f"commit {self.commit[:12]}" if self.commit else "commit not recorded"
        return f"{when}, {commit}" + (f", by {self.who}" if self.who else "")

    def summary(self) -> dict[str, Any]:
        """Where the record is from and what it says, without the plan (for --json)."""
        return {
            "from": self.where,
            "when": self.when.isoformat(timespec="seconds") if self.when else None,
            "commit": self.commit,
            "who": self.who,
        }

    def dumps(self) -> bytes:
        """The file's bytes: what parse reads back."""
        canonical = json.dumps(self.plan, sort_keys=True, separators=(",", ":"))
        record = {
            "when": self.when.isoformat(timespec="seconds") if self.when else None,
            "who": self.who,
            "commit": self.commit,
            "plan_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
            "plan": self.plan,
        }
        return json.dumps(record, sort_keys=True).encode()


def read_deployed(inventory: Path) -> DeployedRecord | None:
    """This checkout's record of the last complete deploy, or None when it has none."""
    path = deployed_record(inventory)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the deployed record: {exc}") from exc
    try:
        return DeployedRecord.parse(text, str(path))
    except UserError as exc:
        raise UserError(
            f"{exc}; delete it and `tools deploy --fetch-record` fetches the hosts' record"
        ) from None


def load_deployed(inventory: Path) -> dict[str, Any] | None:
    """The plan the last complete deploy recorded, or None when none was."""
    record = read_deployed(inventory)
    return None if record is None else record.plan


def resolve_against(
    inventory: Path, against: str, runner: Runner = default_runner
) -> tuple[dict[str, Any], str]:
    """The old plan that ``against`` names, and a label: "deployed" (what `tools deploy`
    recorded), a path to another inventory file, or a git revision."""
    if against == "deployed":
        plan = load_deployed(inventory)
        if plan is None:
            raise UserError(
                f"{deployed_record(inventory)}: no deployed record in this checkout; "
                "`tools deploy --fetch-record` fetches the newest from the hosts"
            )
        return plan, "deployed"
    candidate = Path(against)
    if candidate.suffix == ".toml" or ("/" in against and candidate.is_file()):
        return load_plan(candidate, runner), against
    return plan_at_revision(inventory, against, runner), against


def diff_inventory(
    inventory: Path, against: str = "HEAD", runner: Runner = default_runner
) -> PlanDiff:
    """What ``inventory`` changes compared with ``against`` (see resolve_against)."""
    old, label = resolve_against(inventory, against, runner)
    new = load_plan(inventory, runner)
    return compare(old, new, old_label=label, new_label=str(inventory))
