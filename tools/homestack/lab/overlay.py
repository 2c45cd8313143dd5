"""Lab-only additions, all in one place, wrapped AROUND the artifacts `lib/` rendered.

The rendered text is never edited, with one stated exception: in the Caddyfile's
`tls <cert> <key>` line, the two path tokens that name the plan's `certificates.certFile`
and `certificates.keyFile` are replaced by the lab's files, because those paths exist only
on the proxy guest. No other token of any artifact is changed.
Everything else is added before or after the rendered text, or passed on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path

_TLS_LINE = re.compile(r"^(?P<indent>\s*)tls\s+(?P<cert>\S+)\s+(?P<key>\S+)\s*$")


def caddyfile(
    rendered: str,
    *,
    cert: Path,
    key: Path,
    storage: Path,
    rendered_cert: str | None = None,
    rendered_key: str | None = None,
) -> str:
    """The rendered Caddyfile with the lab's global options and certificate paths.

    Lab-only global options: no admin endpoint, no automatic HTTPS (no ACME, no OCSP
    fetches: the lab has no way out), storage in the lab directory.
    """
    lab_options = [
        "\t# homestack lab: lab-only global options (not part of the rendered Caddyfile)",
        "\tadmin off",
        "\tauto_https off",
        "\tocsp_stapling off",
        f"\tstorage file_system {storage}",
    ]
    lines = [
        _lab_tls_paths(line, cert, key, rendered_cert, rendered_key)
        for line in rendered.splitlines()
    ]
    first = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")),
        None,
    )
    if first is not None and lines[first].strip() == "{":
        # The rendered file has a global options block: the lab's lines go first inside it.
        return "\n".join([*lines[: first + 1], *lab_options, *lines[first + 1 :]]) + "\n"
    return "\n".join(["{", *lab_options, "}", "", *lines]) + "\n"


def _lab_tls_paths(
    line: str, cert: Path, key: Path, rendered_cert: str | None, rendered_key: str | None
) -> str:
    match = _TLS_LINE.match(line)
    if not match or match["cert"].startswith("{") or "@" in match["cert"]:
        return line
    if rendered_cert is not None and (match["cert"], match["key"]) != (rendered_cert, rendered_key):
        return line
    return f"{match['indent']}tls {cert} {key}"


def dnsmasq(rendered_file: Path, *, pid_file: Path) -> str:
    """A wrapper config that includes the rendered one unchanged.

    Lab-only: our PID file, logs to stderr, and neither the lab machine's /etc/hosts nor its
    /etc/resolv.conf (the guest would use its own; the lab has no way out anyway).
    """
    return "\n".join(
        [
            "# homestack lab: lab-only dnsmasq options around the rendered config",
            f"conf-file={rendered_file}",
            f"pid-file={pid_file}",
            "user=dnsmasq",
            "log-facility=-",
            "no-hosts",
            "no-resolv",
            "",
        ]
    )


def pg_hba(rendered: str) -> str:
    """The rendered pg_hba lines after one lab line: the superuser over the Unix socket only,
    which the lab needs to create the databases. Remote (`host`) rules are the rendered ones.
    """
    return "\n".join(
        [
            "# homestack lab: lab-only local superuser access for setup",
            "local all postgres peer",
            "# rendered by lib/:",
            rendered.rstrip("\n"),
            "",
        ]
    )


def postgres_options(*, address: str, port: int, socket_dir: Path, hba: Path) -> list[str]:
    """Server options the guest's NixOS module sets, plus lab-only speed settings."""
    settings = {
        "listen_addresses": address,
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "hba_file": str(hba),
        "password_encryption": "scram-sha-256",
        # lab-only: a throw-away cluster needs no durability and little memory
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "16MB",
        "max_connections": "30",
        "dynamic_shared_memory_type": "sysv",
        "logging_collector": "off",
    }
    return [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]


def passwords_sql(roles: dict[str, str]) -> str:
    """SQL giving each role its lab password (the guests read theirs from sops instead)."""
    out = []
    for role, password in sorted(roles.items()):
        quoted = password.replace("'", "''")
        out.append(f"ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '{quoted}';")
    return "\n".join(out) + "\n"
