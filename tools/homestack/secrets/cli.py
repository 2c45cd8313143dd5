"""`tools secrets …`: the click layer over homestack.secrets. It parses and prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import update_wrapper
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import click

from homestack.cliopts import inventory_path, shared_inventory_option
from homestack.errors import CheckFailed, UserError
from homestack.fsutil import read_regular, require_plain
from homestack.inventory import set_inventory_value
from homestack.plan import load_plan
from homestack.secrets import audit as audit_mod
from homestack.secrets import generate as generate_mod
from homestack.secrets import keys as keys_mod
from homestack.secrets import sync as sync_mod
from homestack.secrets.agekeys import HostKey
from homestack.secrets.edit import Outcome, edit_secret
from homestack.secrets.model import Kind, SecretsPlan
from homestack.secrets.rules import CONFIG_NAME, rules_are_current, write_rules
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.store import (
    MAX_VALUE,
    key_problem,
    relative,
    rotate_file,
    set_secret,
    value_from_input,
)


@dataclass(frozen=True)
class Repo:
    inventory: Path

    @property
    def root(self) -> Path:
        return self.inventory.resolve().parent

    @property
    def shown(self) -> str:
        """The inventory as messages name it: relative to here when it is below here."""
        try:
            return str(self.inventory.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(self.inventory)

    def plan(self) -> SecretsPlan:
        return SecretsPlan.from_plan(load_plan(self.inventory))

    def set_value(self, keys: list[str], value: str) -> None:
        set_inventory_value(self.inventory, keys, value)

    def rel(self, file: str) -> str:
        return relative(self.root, file)

    def locate(self, file: str) -> Path:
        """An existing sops file: FILE as given (relative to here), else in the repository."""
        given = Path(file)
        for candidate in (given, self.root / given):
            if candidate.exists() or candidate.is_symlink():
                require_plain(candidate.parent, candidate.name, what="sops file", shown=file)
                return candidate
        raise UserError(f"{file}: no such file (here or in {self.root})")


P = ParamSpec("P")
R = TypeVar("R")


def pass_repo(f: Callable[Concatenate[Repo, P], R]) -> Callable[P, R]:
    """Give the command the repository of the inventory named on the group or the command.

    Resolved only when the command runs, so `--help` never evaluates anything."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return f(Repo(inventory_path(click.get_current_context())), *args, **kwargs)

    return shared_inventory_option(update_wrapper(wrapper, f))


@click.group()
@shared_inventory_option
def secrets() -> None:
    """Manage sops secrets and machine keys.

    Which files exist and who may decrypt each comes from the inventory's plan; sops does
    all encryption. Secret files live under secrets/ next to inventory.toml.
    """


def _progress(step: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        click.echo(f"\r{step} {done}/{total}", err=True, nl=False)
        click.echo(end, err=True, nl=False)
    elif done == total or done % 10 == 0:
        click.echo(f"{step} {done}/{total}", err=True)


def _sync(repo: Repo, plan: SecretsPlan, jobs: int) -> sync_mod.SyncResult:
    result = sync_mod.sync(repo.root, plan, Sops(), jobs=jobs, progress=_progress)
    if result.recovered:
        click.echo(f"finished an interrupted sync: {result.recovered} file(s) moved into place")
    return result


@secrets.command(short_help="Create your admin age key and record it in the inventory.")
@click.option("--user", help="The inventory user whose age_key this is (default: the only admin).")
@click.option("--force", is_flag=True, help="Replace a different age_key already in the inventory.")
@pass_repo
def init(repo: Repo, user: str | None, force: bool) -> None:
    """Create your admin age identity where sops finds it, and record it in the inventory."""
    plan = repo.plan()
    admins = [p for p in plan.principals if p.kind is Kind.ADMIN]
    if user is None:
        if len(admins) != 1:
            raise UserError(f"{repo.shown}: say which user this key belongs to with --user NAME")
        user = admins[0].name
    principal = plan.principal(user)
    if principal is None or principal.is_machine:
        raise UserError(f"{repo.shown}: users.{user}: no such user (add [users.{user}] first)")
    key = keys_mod.init_admin_key(keys_mod.admin_key_path())
    verb = "created" if key.created else "exists, kept"
    click.echo(f"{key.path}: {verb} (mode 0600)")
    click.echo(f"recipient: {key.identity.recipient}")
    held = {i.recipient for i in keys_mod.read_identities(key.path.read_text())}
    if principal.recipient == key.identity.recipient or (principal.recipient in held and not force):
        click.echo(f"{repo.shown}: users.{user}.age_key already names this key")
        return
    if principal.recipient and not force:
        raise UserError(
            f"{repo.shown}: users.{user}.age_key is {principal.recipient}, a key {key.path} does "
            "not hold; pass --force to replace it (then run `tools secrets sync` with the old key)"
        )
    repo.set_value(["users", user, "age_key"], key.identity.recipient)
    click.echo(f"{repo.shown}: users.{user}.age_key set")
    plan = repo.plan()
    write_rules(repo.root, plan)
    click.echo(f"{CONFIG_NAME}: updated from the inventory")
    changes, _, _ = sync_mod.pending_changes(repo.root, plan)
    if changes:
        click.echo(f"next: `tools secrets sync` re-keys {len(changes)} file(s) for this key")


@secrets.command(short_help="Give machines SSH host keys before they first boot.")
@click.argument("machines", nargs=-1)
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Import this existing OpenSSH ed25519 private key instead of generating one.",
)
@click.option("--force", is_flag=True, help="Replace an existing host key.")
@click.option("--no-sync", is_flag=True, help="Do not re-key the files the new keys should open.")
@pass_repo
def bootstrap(
    repo: Repo, machines: tuple[str, ...], key_file: Path | None, force: bool, no_sync: bool
) -> None:
    """Give machines SSH host keys before they first boot (default: every machine).

    The public key and its age recipient go into the inventory; the private key into
    secrets/host-keys/MACHINE.yaml, readable by the admins and the guest's hypervisor.
    """
    if key_file is not None and len(machines) != 1:
        raise UserError("--key imports one key: name exactly one machine")
    pem = None
    if key_file is not None:
        pem = read_regular(key_file, what="private key file")  # never hang on a pipe
        try:
            HostKey.load(pem, "")
        except (UserError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{key_file}: {exc}") from None
    sops = Sops()
    hosts, guests = keys_mod.bootstrap_order(repo.plan(), list(machines))
    for group in (hosts, guests):
        plan = repo.plan()  # guests' files are encrypted to their host's (new) key
        for machine in group:
            result = keys_mod.bootstrap_machine(
                repo.root, plan, machine, sops, repo.set_value, force=force, import_pem=pem
            )
            click.echo(
                f"{machine}: {result.outcome.value} {keys_mod.host_key_file(machine)}  "
                f"{result.age_recipient}"
            )
    plan = repo.plan()
    if write_rules(repo.root, plan):
        click.echo(f"{CONFIG_NAME}: updated from the inventory")
    if no_sync:
        return
    synced = _sync(repo, plan, jobs=2)
    if synced.changes:
        click.echo(f"re-keyed {len(synced.changes)} file(s) for the new keys")


@secrets.command()
@click.option("--check", is_flag=True, help="Only check: exit 2 if .sops.yaml is stale.")
@pass_repo
def rules(repo: Repo, check: bool) -> None:
    """Write .sops.yaml from the inventory (never edit it by hand)."""
    plan = repo.plan()
    if check:
        if not rules_are_current(repo.root, plan):
            raise UserError(f"{CONFIG_NAME}: stale; run `tools secrets rules`")
        click.echo(f"{CONFIG_NAME}: up to date ({len(plan.specs)} rules)")
        return
    changed = write_rules(repo.root, plan)
    click.echo(f"{CONFIG_NAME}: {'written' if changed else 'unchanged'} ({len(plan.specs)} rules)")


@secrets.command()
@click.argument("file")
@pass_repo
def edit(repo: Repo, file: str) -> None:
    """Edit FILE with `sops edit`, its plaintext on a private tmpfs."""
    result = edit_secret(repo.root, repo.plan(), repo.rel(file), Sops())
    messages = {
        Outcome.CHANGED: "saved (re-encrypted)",
        Outcome.CREATED: "created",
        Outcome.UNCHANGED: "no change, file untouched",
    }
    click.echo(f"{result.path}: {messages[result.outcome]}")


@secrets.command(short_help="Print FILE, or one KEY of it, decrypted.")
@click.argument("file")
@click.argument("key", required=False)
@pass_repo
def show(repo: Repo, file: str, key: str | None) -> None:
    """Print FILE decrypted (exactly as `sops decrypt` does), or one KEY (a/b for nested)."""
    if key is not None and (problem := key_problem(key, frozenset())) is not None:
        raise UserError(f"{file}: {key}: {problem}")
    text = Sops().decrypt(repo.locate(file), key, shown_as=file)
    click.echo(text, nl=key is not None and not text.endswith("\n"))


@secrets.command(name="set", short_help="Set KEY in FILE to a value read from stdin.")
@click.argument("file")
@click.argument("key")
@click.option("--keep-newline", is_flag=True, help="Keep a final newline of the value.")
@click.option("--allow-empty", is_flag=True, help="Store an empty value (refused otherwise).")
@pass_repo
def set_(repo: Repo, file: str, key: str, keep_newline: bool, allow_empty: bool) -> None:
    """Set KEY (a/b for nested) in FILE to the value read from stdin (never from argv).

    The value must be UTF-8 text and not empty: an empty stdin is what a failed command
    before the pipe leaves, so it is refused unless --allow-empty says it is meant.
    """
    rel = repo.rel(file)
    problem = key_problem(key, frozenset())  # before reading a value for a key that cannot be
    if problem is not None:
        shown = key if key.isprintable() else repr(key)  # the message stays one line
        raise UserError(f"{rel}: {shown}: {problem}; the file is unchanged")
    if sys.stdin.isatty():
        value = click.prompt(f"{key}", hide_input=True, err=True)
    else:
        stream = getattr(sys.stdin, "buffer", None)
        # one byte more than allowed is enough to know it is too much
        raw = stream.read(MAX_VALUE + 2) if stream else sys.stdin.read().encode()
        value = value_from_input(
            raw, f"{rel}: {key}", keep_newline=keep_newline, allow_empty=allow_empty
        )
    plan = repo.plan()
    created = set_secret(repo.root, plan, rel, key, value, sops=Sops(), allow_empty=allow_empty)
    click.echo(f"{rel}: {'created with' if created else 'set'} {key}")
    if key.strip("/") not in plan.spec(rel).keys:
        declared = ", ".join(plan.spec(rel).keys) or "nothing"
        click.echo(f"note: no NixOS module reads {key} from {rel} (they read: {declared})")


@secrets.command()
@click.argument("file")
@pass_repo
def rotate(repo: Repo, file: str) -> None:
    """Give FILE a new data key and re-encrypt every value."""
    rel = repo.rel(file)
    rotate_file(repo.root, repo.plan(), rel, Sops())
    click.echo(f"{rel}: rotated (new data key)")


@secrets.command(short_help="Re-key every secret file for the recipients it should have.")
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True,
    help="sops processes at a time.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@pass_repo
def sync(repo: Repo, jobs: int, as_json: bool) -> None:
    """Re-key every secret file to the recipients the inventory wants: all files or none."""
    plan = repo.plan()
    result = _sync(repo, plan, jobs)
    # only once every file is in line: a refused sync leaves every file as it was
    if write_rules(repo.root, plan) and not as_json:
        click.echo(f"{CONFIG_NAME}: updated from the inventory")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "changed": [
                        {
                            "path": c.path,
                            "added": list(c.added),
                            "removed": list(c.removed),
                            "rotated": c.rotates,
                        }
                        for c in result.changes
                    ],
                    "unchanged": result.unchanged,
                    "missing": list(result.missing),
                    "recovered": result.recovered,
                },
                indent=2,
            )
        )
        return
    names = plan.by_recipient()

    def name(recipient: str) -> str:
        known = names.get(recipient)
        return known.name if known else recipient[:16] + "…"

    for change in result.changes:
        parts = [f"+{name(r)}" for r in change.added] + [f"-{name(r)}" for r in change.removed]
        rotated = ", new data key" if change.rotates else ""
        click.echo(f"{change.path}: {' '.join(parts)}{rotated}")
    click.echo(
        f"sync: {len(result.changes)} re-keyed, {result.unchanged} already in line"
        + (f", {len(result.missing)} not created yet" if result.missing else "")
    )


@secrets.command(short_help="Audit every secret file against the inventory.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--values",
    "values",
    is_flag=True,
    help="Also decrypt (in memory; needs an admin key) and check every value's format.",
)
@click.option(
    "--metadata-only", is_flag=True,
    help="Do not decrypt: skip the MAC check (it then says the MACs were not verified).",
)  # fmt: skip
@pass_repo
def check(repo: Repo, as_json: bool, values: bool, metadata_only: bool) -> None:
    """Audit every secret file against the inventory.

    Reports machines that can decrypt a file they should not, machines or admins that
    cannot decrypt a file they should, declared secrets no file contains, and files whose
    format is broken, from metadata alone. Then, where your age key opens a file, sops
    decrypts it in memory, which verifies its MAC: a file changed outside sops is a
    finding. Files no key of yours opens are named as not verified. Exit code 2 on any
    finding, one line each.
    """
    if values and metadata_only:
        raise UserError("secrets check: --values decrypts every value, --metadata-only none")
    if values:
        check_values(repo, as_json)
        return
    plan = repo.plan()
    findings = audit_mod.audit(repo.root, plan)
    macs = audit_mod.MacReport((), (), ())
    if not metadata_only:  # files audit found broken are not decrypted again
        shown = sys.stderr.isatty()  # a counter on a terminal; logs get the findings only
        macs = audit_mod.verify_macs(
            repo.root, plan, Sops(),
            progress=(lambda done, total: _progress("decrypted", done, total)) if shown else None,
        )  # fmt: skip
        findings += macs.findings
    note = "MAC not verified (--metadata-only)" if metadata_only else audit_mod.mac_summary(macs)
    if as_json:
        click.echo(json.dumps([{"path": f.path, "message": f.message} for f in findings], indent=2))
        click.echo(f"secrets: {note}", err=True)
        if findings:
            sys.exit(2)
        return
    if findings:
        raise CheckFailed(f"secrets: {len(findings)} finding(s)", [str(f) for f in findings])
    click.echo(f"secrets: {len(plan.specs)} files match the inventory; {note}")
    for rel in macs.not_verified if macs.verified else ():
        click.echo(f"  {rel}: MAC not verified (no admin key of yours opens it)")


def check_values(repo: Repo, as_json: bool) -> None:
    """`check --values`: every declared secret missing or not of its format (lib/secrets.nix)."""
    slots = generate_mod.Slot.all_from_plan(load_plan(repo.inventory))
    findings = generate_mod.check_values(repo.root, slots, Sops())
    if as_json:
        click.echo(
            json.dumps(
                [{"path": f.file, "key": f.key, "message": f.message} for f in findings], indent=2
            )
        )
        if findings:
            sys.exit(2)
        return
    if findings:
        raise CheckFailed(
            f"secrets: {len(findings)} value(s) missing or malformed", [str(f) for f in findings]
        )
    click.echo(f"secrets: {len(slots)} values match their formats")


@secrets.command(short_help="Fill every missing secret with a fresh value of its format.")
@click.option(
    "--replace-invalid",
    is_flag=True,
    help="Also replace values not of their format (decrypts: needs an admin key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was made as JSON.")
@pass_repo
def generate(repo: Repo, replace_invalid: bool, as_json: bool) -> None:
    """Fill every secret the plan declares and no file holds yet with a fresh value of its
    format; existing values are kept (unless --replace-invalid and not of their format).
    A new WireGuard key's public half is written to the inventory. Secrets only a person or
    another command can make are listed with what to do."""
    plan = load_plan(repo.inventory)

    def progress(slot: generate_mod.Slot) -> None:
        if not as_json:
            click.echo(f"{slot.file}: {slot.key}: new {slot.format} value", err=True)

    result = generate_mod.generate(
        repo.root,
        plan,
        Sops(),
        set_inventory=repo.set_value,
        replace_invalid=replace_invalid,
        progress=progress,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "made": [{"path": s.file, "key": s.key} for s in result.made],
                    "left": [
                        {"path": s.file, "key": s.key, "generator": s.generator.value, "why": why}
                        for s, why in result.left
                    ],
                    "inventory": [{"key": ".".join(k), "value": v} for k, v in result.inventory],
                },
                indent=2,
            )
        )
        return
    for keys, _ in result.inventory:
        click.echo(f"{repo.shown}: {'.'.join(keys)}: set to the new key's public half")
    for slot, why in result.left:
        click.echo(f"{slot.file}: {slot.key}: {why}; {generate_mod.HOW[slot.generator]}")
    click.echo(f"secrets: {len(result.made)} generated, {len(result.left)} left to do")


@secrets.command(short_help="List who can decrypt FILE.")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_repo
def recipients(repo: Repo, file: str, as_json: bool) -> None:
    """List who can decrypt FILE (any sops file), naming inventory machines and users."""
    sops_file = read_sops_file(repo.locate(file))
    if sops_file.problems:
        # a damaged file's metadata cannot be trusted to say who reads it
        raise CheckFailed(
            f"{file}: damaged sops file ({len(sops_file.problems)} problem(s))",
            [f"{file}: {problem}" for problem in sops_file.problems],
        )
    try:
        plan: SecretsPlan | None = repo.plan()
    except UserError:
        plan = None
    rows: list[dict[str, Any]] = []
    for index, group in enumerate(sops_file.key_groups):
        for recipient in group.recipients:
            rows.append(
                {
                    "group": index,
                    "recipient": recipient,
                    "who": audit_mod.who(plan, recipient) if plan else "unknown",
                }
            )
        rows += [{"group": index, "recipient": f"pgp:{fp}", "who": "pgp key"} for fp in group.pgp]
        rows += [{"group": index, "recipient": kind, "who": f"{kind} key"} for kind in group.other]
    if as_json:
        click.echo(json.dumps({**sops_file.to_json(), "recipients": rows}, indent=2))
        return
    click.echo(f"{file}: sops {sops_file.version}, last modified {sops_file.lastmodified}")
    if len(sops_file.key_groups) > 1:
        groups, threshold = len(sops_file.key_groups), sops_file.shamir_threshold
        click.echo(f"  {groups} key groups, any {threshold} together decrypt")
    width = max((len(r["recipient"]) for r in rows), default=0)
    for row in rows:
        label = f"[group {row['group'] + 1}] " if len(sops_file.key_groups) > 1 else ""
        click.echo(f"  {label}{row['recipient']:<{width}}  {row['who']}")
