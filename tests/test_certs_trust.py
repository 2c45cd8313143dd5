"""tools ca trust: the platform is recognised, the steps fit it, --install puts the root there."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from homestack.certs.ca import init_ca
from homestack.certs.issue import issue
from homestack.certs.settings import CertSettings
from homestack.certs.trust import Platform, detect_platform, install, steps
from homestack.errors import UserError
from homestack.process import RecordingRunner, Runner

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def plan(example_plan: dict[str, Any]) -> dict[str, Any]:
    return example_plan


@pytest.fixture
def settings(
    admin_repo: Path, plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> CertSettings:
    monkeypatch.chdir(admin_repo)
    settings = CertSettings.from_plan(plan, admin_repo)
    init_ca(settings, Runner(), now=datetime.now(UTC))
    return settings


@pytest.mark.parametrize(
    ("os_release", "expected"),
    [
        ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', Platform.DEBIAN),
        ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', Platform.DEBIAN),
        ('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n', Platform.DEBIAN),
        ("NAME=Fedora\nID=fedora\n", Platform.FEDORA),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', Platform.FEDORA),
        ("ID=nixos\n", Platform.NIXOS),
        ("ID=arch\n", Platform.OTHER),
        ("", Platform.OTHER),
    ],
)
def test_detect_linux(tmp_path: Path, os_release: str, expected: Platform) -> None:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    assert detect_platform(path, "Linux") is expected


def test_detect_others(tmp_path: Path) -> None:
    assert detect_platform(tmp_path / "missing", "Darwin") is Platform.MACOS
    assert detect_platform(tmp_path / "missing", "Linux") is Platform.OTHER
    assert detect_platform(tmp_path / "missing", "Windows") is Platform.OTHER


def test_steps_per_platform(settings: CertSettings) -> None:
    debian = steps(settings, Platform.DEBIAN)
    assert debian[0].lines == (
        "sudo cp certs/ca.crt /usr/local/share/ca-certificates/homestack-home.arpa.crt",
        "sudo update-ca-certificates",
    )
    assert debian[0].installable
    assert "certutil -d sql:$HOME/.pki/nssdb" in debian[1].lines[0]
    fedora = steps(settings, Platform.FEDORA)
    assert fedora[0].lines[1] == "sudo update-ca-trust extract"
    macos = steps(settings, Platform.MACOS)
    assert macos[0].lines == (
        (
            "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "
            "certs/ca.crt"
        ),
    )
    assert "security.enterprise_roots.enabled" in macos[1].lines[0]
    nixos = steps(settings, Platform.NIXOS)
    assert nixos[0].lines[0] == (
        f"security.pki.certificateFiles = [ {settings.root}/certs/ca.crt ];"
    )
    assert not nixos[0].installable
    assert steps(settings, Platform.OTHER)[0].lines == ("sudo trust anchor --store certs/ca.crt",)


@pytest.mark.parametrize(
    ("platform", "store", "refresh"),
    [
        (
            Platform.DEBIAN,
            "usr/local/share/ca-certificates",
            ("update-ca-certificates",),
        ),
        (
            Platform.FEDORA,
            "etc/pki/ca-trust/source/anchors",
            ("update-ca-trust", "extract"),
        ),
    ],
)
def test_install_into_a_system_store(
    settings: CertSettings,
    tmp_path: Path,
    platform: Platform,
    store: str,
    refresh: tuple[str, ...],
) -> None:
    runner = RecordingRunner()
    done = install(settings, platform, runner, prefix=tmp_path / "sysroot")
    anchor = tmp_path / "sysroot" / store / "homestack-home.arpa.crt"
    assert anchor.read_bytes() == settings.path("certs/ca.crt").read_bytes()
    assert oct(anchor.stat().st_mode & 0o777) == "0o644"
    assert runner.calls == [refresh]
    assert done == [f"copied certs/ca.crt to {anchor}", f"ran {' '.join(refresh)}"]


def test_install_on_macos_and_elsewhere(settings: CertSettings) -> None:
    runner = RecordingRunner()
    assert install(settings, Platform.MACOS, runner) == [
        "added Homestack CA home.arpa to /Library/Keychains/System.keychain"
    ]
    assert runner.calls == [
        (
            "security", "add-trusted-cert", "-d", "-r", "trustRoot",
            "-k", "/Library/Keychains/System.keychain", str(settings.path("certs/ca.crt")),
        )
    ]  # fmt: skip
    with pytest.raises(UserError, match="nothing to install automatically on nixos"):
        install(settings, Platform.NIXOS, runner)


def test_install_refuses_a_leaf(settings: CertSettings, tmp_path: Path) -> None:
    issue(settings, Runner())
    shutil.copy(settings.path("certs/wildcard.crt"), settings.path("certs/ca.crt"))
    with pytest.raises(
        UserError, match=r"certs/ca\.crt: not a CA certificate: refusing to trust it"
    ):
        install(settings, Platform.DEBIAN, RecordingRunner(), prefix=tmp_path)
