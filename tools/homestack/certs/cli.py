"""`tools ca` and `tools certs`: parse options, call the library, print."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
from cryptography import x509

from homestack.certs import trust
from homestack.certs.ca import init_ca, load_root
from homestack.certs.certfile import (
    common_name,
    days_left,
    dns_names,
    fingerprint,
    load_chain,
    permitted_subtrees,
)
from homestack.certs.check import Finding, check, key_unreadable
from homestack.certs.issue import issue, renew
from homestack.certs.settings import CertSettings, Mode, SecretRef
from homestack.cliopts import inventory_path, shared_inventory_option
from homestack.errors import CheckFailed
from homestack.plan import load_plan
from homestack.process import default_runner

days_option = click.option(
    "--days",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Treat certificates expiring within this many days as due.",
)


def load_settings(ctx: click.Context) -> CertSettings:
    """The certificate settings of the plan of the inventory the command was given."""
    path = inventory_path(ctx)
    return CertSettings.from_plan(load_plan(path), path.resolve().parent)


def _acme_note(settings: CertSettings) -> str:
    return (
        f"certificates.mode = {settings.mode.value}: the proxy obtains and renews "
        f"{', '.join(settings.names)} itself through security.acme (lego, DNS-01 via "
        f"Cloudflare, token in {settings.acme_token}); Caddy serves the files"
    )


def _readers(settings: CertSettings, ref: SecretRef) -> str:
    spec = settings.secrets.spec(ref.file)
    admins = f"admins ({', '.join(spec.admins)})" if spec.admins else "no admin"
    machines = f"{', '.join(spec.machines)} and " if spec.machines else ""
    return f"readable by {machines}{admins}"


def _validity(cert: x509.Certificate, now: datetime) -> str:
    return f"valid until {cert.not_valid_after_utc:%Y-%m-%d} ({round(days_left(cert, now))} days)"


@click.group()
@shared_inventory_option
def ca() -> None:
    """The private certificate authority (certificates.mode = "private-ca")."""


@ca.command("init")
@shared_inventory_option
@click.option("--force", is_flag=True, help="Replace an existing CA (the old one is backed up).")
@click.pass_context
def ca_init(ctx: click.Context, force: bool) -> None:
    """Create the name-constrained root CA; its key goes only into sops."""
    settings = load_settings(ctx)
    now = datetime.now(UTC)
    result = init_ca(settings, default_runner, force=force, now=now)
    cert = result.authority.certificate
    for backup in result.backups:
        click.echo(f"kept the old one as {backup.relative_to(settings.root)}")
    click.echo(f"created {common_name(cert)} (ECDSA P-384)")
    click.echo(f"  certificate  {settings.ca_certificate}, {_validity(cert, now)}")
    click.echo(f"  SHA-256      {fingerprint(cert)}")
    click.echo(f"  permits      {', '.join(permitted_subtrees(cert))}")
    click.echo(f"  private key  {settings.ca_key}, {_readers(settings, settings.ca_key)}")
    click.echo("next: `tools certs issue`, then `tools ca trust` on your machines")


@ca.command("trust")
@shared_inventory_option
@click.option("--install", is_flag=True, help="Add the root to this machine's system store.")
@click.option(
    "--platform",
    "target",
    type=click.Choice([p.value for p in trust.Platform]),
    default=None,
    help="Show the steps for another platform (default: this machine's).",
)
@click.pass_context
def ca_trust(ctx: click.Context, install: bool, target: str | None) -> None:
    """How to trust the root CA here (and do it with --install)."""
    settings = load_settings(ctx)
    platform = trust.Platform(target) if target else trust.detect_platform()
    root = load_root(settings)
    now = datetime.now(UTC)
    click.echo(f"{common_name(root)}  ({trust.shown_path(settings.path(settings.ca_certificate))})")
    click.echo(f"  SHA-256  {fingerprint(root)}")
    click.echo(f"  permits  {', '.join(permitted_subtrees(root))}; {_validity(root, now)}")
    if install:
        for line in trust.install(settings, platform, default_runner):
            click.echo(line)
        return
    for step in trust.steps(settings, platform):
        click.echo("")
        click.echo(f"{step.title}:")
        for line in step.lines:
            click.echo(f"  {line}")
        if step.installable:
            click.echo("  (`sudo tools ca trust --install` does this)")


@click.group()
@shared_inventory_option
def certs() -> None:
    """Issue, check and renew the proxy's certificate."""


@certs.command("issue")
@shared_inventory_option
@click.pass_context
def certs_issue(ctx: click.Context) -> None:
    """Issue the leaf for every name of the plan; its key goes into sops."""
    settings = load_settings(ctx)
    now = datetime.now(UTC)
    issued = issue(settings, default_runner, now=now)
    if issued is None:
        click.echo(_acme_note(settings))
        return
    _print_issued(settings, issued.certificate, now)


def _print_issued(settings: CertSettings, cert: x509.Certificate, now: datetime) -> None:
    click.echo(f"issued {', '.join(dns_names(cert))} (ECDSA P-256, serverAuth)")
    click.echo(f"  certificate  {settings.leaf_certificate} (+ root), {_validity(cert, now)}")
    click.echo(f"  private key  {settings.leaf_key}, {_readers(settings, settings.leaf_key)}")


@certs.command("check", short_help="Check every certificate the plan needs.")
@shared_inventory_option
@days_option
@click.option(
    "--keys",
    is_flag=True,
    help="Fail unless the proxy's key can be decrypted and matched (by default it is "
    "matched when an age key here can decrypt it, else reported as not verified).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def certs_check(ctx: click.Context, days: int, keys: bool, as_json: bool) -> None:
    """Check every certificate the plan needs; one line per problem, exit 2 if any."""
    settings = load_settings(ctx)
    now = datetime.now(UTC)
    unreadable = None if keys or settings.mode is not Mode.PRIVATE_CA else key_unreadable(settings)
    runner = default_runner if unreadable is None else None
    findings = check(settings, days=days, now=now, runner=runner)
    if as_json:
        report = _check_json(settings, findings, now)
        if settings.mode is Mode.PRIVATE_CA:
            report["keyVerified"] = unreadable is None and not findings
            report["keyNotVerified"] = unreadable
        click.echo(json.dumps(report, indent=2))
        if findings:
            sys.exit(2)
        return
    if findings:
        raise CheckFailed(f"{len(findings)} certificate problem(s)", [str(f) for f in findings])
    if settings.mode is Mode.ACME_DNS01:
        click.echo(_acme_note(settings))
        click.echo(f"ok: acme_email and {settings.acme_token} are set")
        return
    root = load_root(settings)
    leaf = load_chain(settings.path(settings.leaf_certificate), settings.leaf_certificate)[0]
    click.echo(f"{settings.ca_certificate}: {common_name(root)}, {_validity(root, now)}")
    click.echo(f"{settings.leaf_certificate}: {', '.join(dns_names(leaf))}, {_validity(leaf, now)}")
    if settings.route_names:
        click.echo(f"  covers {', '.join(settings.route_names)} for browsers")
    if unreadable is None:
        click.echo(f"{settings.leaf_key}: matches {settings.leaf_certificate}")
    else:
        click.echo(f"{settings.leaf_key}: not verified: {unreadable}")
    checked = " and key" if unreadable is None else ""
    click.echo(f"ok: chain{checked} valid, nothing expires within {days} days")


def _check_json(
    settings: CertSettings, findings: list[Finding], now: datetime
) -> dict[str, object]:
    certificates: list[dict[str, object]] = []
    if settings.mode is Mode.PRIVATE_CA and not findings:
        root = load_root(settings)
        leaf = load_chain(settings.path(settings.leaf_certificate), settings.leaf_certificate)[0]
        for path, cert in ((settings.ca_certificate, root), (settings.leaf_certificate, leaf)):
            certificates.append(
                {
                    "path": path,
                    "names": list(dns_names(cert)) or [common_name(cert)],
                    "notAfter": cert.not_valid_after_utc.isoformat(),
                    "daysLeft": round(days_left(cert, now)),
                }
            )
    return {
        "mode": settings.mode.value,
        "ok": not findings,
        "findings": [
            {
                "subject": f.subject,
                "problem": f.problem,
                "renewable": f.renewable,
                "hint": f.hint,
            }
            for f in findings
        ],
        "certificates": certificates,
    }


@certs.command("renew")
@shared_inventory_option
@days_option
@click.pass_context
def certs_renew(ctx: click.Context, days: int) -> None:
    """Re-issue the leaf if it is missing, wrong or due within --days."""
    settings = load_settings(ctx)
    now = datetime.now(UTC)
    result = renew(settings, default_runner, days=days, now=now)
    if result is None:
        click.echo(_acme_note(settings))
        return
    for reason in result.reasons:
        click.echo(f"due: {reason.subject}: {reason.problem}")
    if result.issued is not None:
        _print_issued(settings, result.issued.certificate, now)
    else:
        leaf = load_chain(settings.path(settings.leaf_certificate), settings.leaf_certificate)[0]
        click.echo(f"{settings.leaf_certificate}: {_validity(leaf, now)}; nothing to renew")
    if result.problems:
        raise CheckFailed(
            f"{len(result.problems)} problem(s) renewing cannot fix",
            [str(p) for p in result.problems],
        )
