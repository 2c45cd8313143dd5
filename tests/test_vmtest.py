"""`tools test`: listing, running and summarising the NixOS VM tests, and the one-line
messages where Nix or KVM is missing. Nix is scripted through the runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from homestack import vmtest
from homestack.errors import UserError
from homestack.process import RecordingRunner, Result

CHECKS = {"lib-eval": False, "rollback": True, "stack": True}
NESTED = ["hypervisor"]


def fake_nix(failing: tuple[str, ...] = ()) -> RecordingRunner:
    def script(call: tuple[str, ...]) -> Result | None:
        if "--expr" in call:
            return Result(call, 0, "x86_64-linux", "")
        if "eval" in call and any(a.endswith(".nestedChecks") for a in call):
            return Result(call, 0, json.dumps(NESTED), "")
        if "eval" in call and "--apply" in call:
            return Result(call, 0, json.dumps(CHECKS), "")
        if "build" in call and any(call[4].endswith(f".{name}") for name in failing):
            return Result(call, 1, "", "")
        return None

    return RecordingRunner(script=script)


@pytest.fixture
def nix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingRunner:
    runner = fake_nix(failing=("stack",))
    monkeypatch.setattr(vmtest, "default_runner", runner)
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    monkeypatch.setattr(vmtest, "KVM", kvm)
    monkeypatch.setattr(vmtest, "require_nix", lambda: None)
    return runner


def test_list_names_each_check_and_its_kind(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, ["--list"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "lib-eval                 build check",
        "rollback                 NixOS VM test",
        "stack                    NixOS VM test",
        "hypervisor               NixOS VM test (nested virtualisation; run only when named)",
    ]
    assert nix.calls[1][3:] == (
        "eval",
        "--json",
        ".#checks.x86_64-linux",
        "--apply",
        vmtest.IS_VM_TEST,
    )


def test_runs_every_vm_test_and_summarises(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, [])
    assert result.exit_code == 1  # stack failed
    builds = [c[3:] for c in nix.calls if "build" in c]
    # The nested-virtualisation test is not run unless named.
    assert builds == [
        ("build", ".#checks.x86_64-linux.rollback", "-L", "--no-link"),
        ("build", ".#checks.x86_64-linux.stack", "-L", "--no-link"),
    ]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("rollback  passed")
    assert lines[1].startswith("stack     FAILED")
    assert lines[2] == "1 of 2 passed"


def test_a_nested_test_runs_when_named(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, ["hypervisor"])
    assert result.exit_code == 0, result.output
    builds = [c[3:] for c in nix.calls if "build" in c]
    assert builds == [
        ("build", ".#legacyPackages.x86_64-linux.nestedChecks.hypervisor", "-L", "--no-link")
    ]


def test_says_what_it_is_doing_while_it_works(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, [])
    progress = result.stderr.splitlines()
    assert progress[0].startswith("test: evaluating checks.x86_64-linux of ")
    assert "test: running 2 test(s): rollback, stack" in progress
    started = progress.index("== [1/2] rollback: building and running it (Nix's log follows)")
    ended = next(
        i for i, line in enumerate(progress) if line.startswith("== [1/2] rollback: passed in ")
    )
    assert started < ended and "1 to go" in progress[ended]
    assert any(line.startswith("== [2/2] stack: FAILED (nix exit 1) in ") for line in progress)


def test_runs_named_tests_only(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, ["rollback"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "1 of 1 passed"


def test_unknown_name_is_a_user_error(nix: RecordingRunner) -> None:
    with pytest.raises(UserError, match="no check named nope"):
        CliRunner().invoke(vmtest.test, ["nope"], catch_exceptions=False)


def test_interactive_starts_the_driver(nix: RecordingRunner) -> None:
    result = CliRunner().invoke(vmtest.test, ["--interactive", "rollback"])
    assert result.exit_code == 0
    assert nix.calls[-1][3:] == ("run", ".#checks.x86_64-linux.rollback.driverInteractive")
    with pytest.raises(UserError, match="name exactly one test"):
        CliRunner().invoke(vmtest.test, ["--interactive"], catch_exceptions=False)


def test_missing_kvm_is_one_line_and_exit_2(
    nix: RecordingRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vmtest, "KVM", tmp_path / "no-kvm")
    from homestack.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "rollback"])
    assert exit_info.value.code == 2
    assert not any("build" in c for c in nix.calls)
    # listing needs no KVM
    assert CliRunner().invoke(vmtest.test, ["--list"]).exit_code == 0


def test_missing_nix_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no nix on it
    from homestack.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--list"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: nix: command not found; the NixOS VM tests need Nix with flakes "
        "(https://nixos.org/download) and KVM\n"
    )


def test_the_flake_is_the_repository_found_from_a_subdirectory(
    nix: RecordingRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "inventory.toml").write_text("")
    monkeypatch.delenv("HOMESTACK_INVENTORY", raising=False)
    monkeypatch.chdir(repo / "docs")
    seen: list[Path] = []

    def current_system(_runner: object, flake: Path) -> str:
        seen.append(flake)
        return "x86_64-linux"

    monkeypatch.setattr(vmtest, "current_system", current_system)
    assert CliRunner().invoke(vmtest.test, ["--list"]).exit_code == 0
    assert seen == [repo]


def test_a_nix_evaluation_error_is_its_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = (
        "warning: unable to download 'https://cache.nixos.org/nix-cache-info'\n"
        "error: attribute 'checks' missing\n"
        "(use '--show-trace' to show detailed location information)\n"
    )
    runner = RecordingRunner(script=lambda call: Result(call, 1, "", stderr))
    with pytest.raises(UserError) as exc:
        vmtest.list_checks(runner, Path("/flake"), "x86_64-linux")
    assert str(exc.value) == (
        "/flake: cannot evaluate checks.x86_64-linux: attribute 'checks' missing"
    )


def test_vm_test_names_are_read_without_nixpkgs() -> None:
    """`tools test --list` falls back to this when the flake's checks cannot be evaluated."""
    import shutil as _shutil

    from conftest import REPO

    from homestack.process import Runner
    from homestack.vmtest import vm_test_names

    if _shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate is not installed")
    checks = {c.name: c for c in vm_test_names(Runner(), REPO)}
    assert {"guests", "relay", "hypervisor", "rollback"} <= set(checks)
    assert checks["hypervisor"].nested and not checks["guests"].nested
