"""Making the admin's own machine trust the root: instructions, and doing it where we can.

NixOS hosts and guests trust the root declaratively (security.pki.certificateFiles);
this is for laptops and desktops. Browsers are left to their owner: we print the steps.
"""

from __future__ import annotations

import os
import platform
import shlex
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509

from homestack.certs.ca import load_root
from homestack.certs.certfile import common_name
from homestack.certs.settings import CertSettings
from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.process import Runner


class Platform(Enum):
    """Families of trust stores."""

    DEBIAN = "debian"
    FEDORA = "fedora"
    MACOS = "macos"
    NIXOS = "nixos"
    OTHER = "other"


@dataclass(frozen=True)
class Step:
    """One way to trust the root: a title, shell lines for a human, and whether we can run it."""

    title: str
    lines: tuple[str, ...]
    installable: bool = False


@dataclass(frozen=True)
class Store:
    """Where a system keeps extra anchors, and the command that rebuilds its bundle."""

    directory: str
    refresh: tuple[str, ...]


STORES = {
    Platform.DEBIAN: Store("/usr/local/share/ca-certificates", ("update-ca-certificates",)),
    Platform.FEDORA: Store("/etc/pki/ca-trust/source/anchors", ("update-ca-trust", "extract")),
}
MACOS_KEYCHAIN = "/Library/Keychains/System.keychain"


# os-release ID / ID_LIKE values, most specific first.
FAMILIES = (
    ({"nixos"}, Platform.NIXOS),
    ({"debian", "ubuntu"}, Platform.DEBIAN),
    ({"fedora", "rhel", "centos"}, Platform.FEDORA),
)


def detect_platform(
    os_release: Path = Path("/etc/os-release"), system: str | None = None
) -> Platform:
    """The trust-store family of the machine this runs on."""
    system = system or platform.system()
    if system == "Darwin":
        return Platform.MACOS
    try:
        text = os_release.read_text() if system == "Linux" else ""
    except OSError:
        text = ""
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    ids = {fields.get("ID", "").strip('"'), *fields.get("ID_LIKE", "").strip('"').split()}
    return next((p for names, p in FAMILIES if ids & names), Platform.OTHER)


def anchor_name(settings: CertSettings) -> str:
    """The file name the root gets in a system store (Debian insists on .crt)."""
    return f"homestack-{settings.domain}.crt"


def steps(settings: CertSettings, target: Platform) -> list[Step]:
    """What to do on `target`, system store first, then browsers."""
    cert = shown_path(settings.path(settings.ca_certificate))
    nick = f"Homestack CA {settings.domain}"
    q = shlex.quote
    result: list[Step] = []
    store = STORES.get(target)
    if store is not None:
        dest = f"{store.directory}/{anchor_name(settings)}"
        result.append(
            Step(
                "System trust store (curl, wget, git, Python, Go: all that use the system bundle)",
                (f"sudo cp {q(cert)} {dest}", f"sudo {shlex.join(store.refresh)}"),
                installable=True,
            )
        )
    elif target is Platform.MACOS:
        result.append(
            Step(
                "System keychain (Safari, Chrome, curl and everything using the macOS store)",
                (f"sudo security add-trusted-cert -d -r trustRoot -k {MACOS_KEYCHAIN} {q(cert)}",),
                installable=True,
            )
        )
        result.append(
            Step(
                "Firefox (reads the macOS store once enterprise roots are on)",
                (
                    "about:config → security.enterprise_roots.enabled = true",
                    "or Settings → Privacy & Security → View Certificates → Authorities → "
                    f"Import {cert}, tick 'Trust this CA to identify websites'",
                ),
            )
        )
        return result
    elif target is Platform.NIXOS:
        result.append(
            Step(
                "NixOS: add it to your configuration and rebuild (the fleet already does this)",
                (
                    "security.pki.certificateFiles = "
                    f"[ {settings.path(settings.ca_certificate)} ];",
                    "sudo nixos-rebuild switch",
                ),
            )
        )
    else:
        result.append(
            Step(
                "System trust store (p11-kit based distributions: Arch, openSUSE, ...)",
                (f"sudo trust anchor --store {q(cert)}",),
            )
        )
    result.append(
        Step(
            "Firefox and Chromium (own NSS databases on Linux; certutil: libnss3-tools/nss-tools)",
            (
                f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n {q(nick)} -i {q(cert)}",
                "for p in ~/.mozilla/firefox/*.default*/; do "
                f'certutil -d "sql:$p" -A -t C,, -n {q(nick)} -i {q(cert)}; done',
                "or in Firefox: Settings → Privacy & Security → View Certificates → "
                f"Authorities → Import {cert}",
            ),
        )
    )
    return result


def shown_path(path: Path) -> str:
    """A path as the reader would type it from here: relative below the cwd, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def install(
    settings: CertSettings,
    target: Platform,
    runner: Runner,
    *,
    prefix: Path = Path("/"),
) -> list[str]:
    """Put the root into the system store of `target`; returns what was done, one line each.

    `prefix` relocates the store directory (for tests and image builds).
    """
    root = load_root(settings)
    if not _is_ca(root):
        raise UserError(f"{settings.ca_certificate}: not a CA certificate: refusing to trust it")
    source = settings.path(settings.ca_certificate)
    store = STORES.get(target)
    if store is not None:
        directory = prefix / store.directory.lstrip("/")
        nearest = next(p for p in (directory, *directory.parents) if p.exists())
        if not os.access(nearest, os.W_OK):
            raise UserError(f"{store.directory}: not writable: run `sudo tools ca trust --install`")
        directory.mkdir(parents=True, exist_ok=True)
        dest = directory / anchor_name(settings)
        atomic_write(dest, source.read_bytes(), 0o644)
        runner.run(list(store.refresh), check=True)
        return [f"copied {settings.ca_certificate} to {dest}", f"ran {shlex.join(store.refresh)}"]
    if target is Platform.MACOS:
        cmd = [
            "security",
            "add-trusted-cert",
            "-d",
            "-r",
            "trustRoot",
            "-k",
            MACOS_KEYCHAIN,
            str(source),
        ]
        runner.run(cmd, check=True, capture=False)
        return [f"added {common_name(root)} to {MACOS_KEYCHAIN}"]
    raise UserError(
        f"tools ca trust --install: nothing to install automatically on {target.value}; "
        "follow the printed steps"
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
