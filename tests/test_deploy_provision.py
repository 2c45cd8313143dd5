"""`tools provision`: the host key is decrypted by the real sops from a real sops file
into a private directory, checked against the inventory, handed to nixos-anywhere with
--extra-files, and wiped. nixos-anywhere itself is answered by the test (it would erase
a machine's disks); every other command is real."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from deployfakes import nix_build_json

from homestack.deploy import provision as prov
from homestack.errors import UserError
from homestack.process import RecordingRunner, Result, Runner

KEYS = Path(__file__).resolve().parent / "keys"
SOPS = shutil.which("sops") or str(Path(sys.executable).parent / "sops")
ALICE_AGE = "age1x0dtwwdnzcdvdtkvp05nnmxf25y5qq6g5gxd2j9jxp8a0yzhaflqyxs40k"

pytestmark = pytest.mark.skipif(
    not Path(SOPS).exists() and shutil.which("sops") is None, reason="needs sops"
)


def plan() -> dict[str, Any]:
    return {
        "hosts": {
            "homelab": {
                "name": "homelab",
                "hostKey": (KEYS / "host_homelab.pub").read_text().strip(),
            }
        },
        "guests": {},
        "secrets": {"secrets/host-keys/homelab.yaml": {"keys": ["ssh_host_ed25519_key"]}},
    }


def encrypt_host_key(flake: Path, private_key: Path) -> None:
    """secrets/host-keys/homelab.yaml, encrypted by sops to the admin's age key."""
    (flake / "secrets" / "host-keys").mkdir(parents=True)
    plain = flake / "plain.yaml"
    body = "".join(f"  {line}" for line in private_key.read_text().splitlines(keepends=True))
    plain.write_text(f"ssh_host_ed25519_key: |\n{body}")
    out = subprocess.run(
        [
            SOPS,
            "--encrypt",
            "--age",
            ALICE_AGE,
            "--input-type",
            "yaml",
            "--output-type",
            "yaml",
            str(plain),
        ],
        cwd=flake,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (flake / "secrets" / "host-keys" / "homelab.yaml").write_text(out)
    plain.unlink()


class Installer(RecordingRunner):
    """Real commands, except nixos-anywhere: it records what it was given."""

    def __init__(self) -> None:
        super().__init__(script=self.answer, otherwise=Runner())
        self.seen: dict[str, Any] = {}
        self.builds: list[str] = []

    def answer(self, args: tuple[str, ...]) -> Result | None:
        if args[0] == "nix" and "build" in args:
            what = args[args.index("build") + 1].rsplit(".", 1)[1]
            self.builds.append(args[args.index("build") + 1])
            built = nix_build_json(f"/nix/store/{what}-homelab", f"/nix/store/{what}.drv")
            return Result(args, 0, built, "")
        if args[0] == "nixos-anywhere":
            tree = Path(args[args.index("--extra-files") + 1])
            key = tree / "etc/ssh/ssh_host_ed25519_key"
            self.seen = {
                "args": list(args),
                "tree_mode": stat.S_IMODE(tree.stat().st_mode),
                "key_mode": stat.S_IMODE(key.stat().st_mode),
                "key": key.read_text(),
                "pub": key.with_name("ssh_host_ed25519_key.pub").read_text(),
                "tree": tree,
            }
            return Result(args, 0, "", "")
        return None


@pytest.fixture
def age_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = tmp_path / "alice.agekey"
    shutil.copy(KEYS / "admin_alice.agekey", identity)
    identity.chmod(0o600)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(identity))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def test_host_key_is_pre_seeded_and_wiped(tmp_path: Path, age_identity: None) -> None:
    flake = tmp_path / "flake"
    flake.mkdir()
    encrypt_host_key(flake, KEYS / "host_homelab")
    job = prov.Provision.from_plan(plan(), "homelab", "root@192.0.2.7", flake)
    runner = Installer()
    lines: list[str] = []
    prov.install(job, runner, lines.append)
    seen = runner.seen
    assert runner.builds == [
        ".#legacyPackages.x86_64-linux.install.homelab.diskoScript",
        ".#legacyPackages.x86_64-linux.install.homelab.toplevel",
    ]
    assert seen["args"][:4] == [
        "nixos-anywhere",
        "--store-paths",
        "/nix/store/diskoScript-homelab",
        "/nix/store/toplevel-homelab",
    ]
    assert seen["args"][-2:] == ["--target-host", "root@192.0.2.7"]
    assert seen["key"] == (KEYS / "host_homelab").read_text()
    assert seen["pub"].strip() == (KEYS / "host_homelab.pub").read_text().strip()
    assert (seen["tree_mode"], seen["key_mode"]) == (0o700, 0o600)
    assert seen["tree"].parent == tmp_path  # the private runtime directory, a tmpfs normally
    assert not seen["tree"].exists()  # wiped afterwards
    assert "installed" in lines[-1]


def test_a_key_that_does_not_match_the_inventory_is_refused(
    tmp_path: Path, age_identity: None
) -> None:
    flake = tmp_path / "flake"
    flake.mkdir()
    encrypt_host_key(flake, KEYS / "host_db")  # the wrong machine's key
    job = prov.Provision.from_plan(plan(), "homelab", "root@192.0.2.7", flake)
    runner = Installer()
    with pytest.raises(UserError, match=r"is not the private half of hosts\.homelab\.host_key"):
        prov.install(job, runner, lambda _: None)
    assert runner.seen == {}
    assert [p for p in tmp_path.iterdir() if p.name.startswith("homestack-provision")] == []


def test_undecryptable_file_is_a_user_error(
    tmp_path: Path, age_identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    flake = tmp_path / "flake"
    flake.mkdir()
    encrypt_host_key(flake, KEYS / "host_homelab")
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "missing"))
    job = prov.Provision.from_plan(plan(), "homelab", "root@192.0.2.7", flake)
    # sops's own reason, through the one sops wrapper, naming the file and the key
    with pytest.raises(UserError) as exc:
        prov.install(job, Installer(), lambda _: None)
    assert str(exc.value) == (
        "cannot decrypt ssh_host_ed25519_key: secrets/host-keys/homelab.yaml: sops decrypt "
        f"failed: SOPS_AGE_KEY_FILE={tmp_path / 'missing'} does not exist"
    )


def test_dry_run_decrypts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "homestack.deploy.cli.load", lambda _: (Path("/flake/inventory.toml"), plan())
    )
    result = CliRunner().invoke(
        prov.provision, ["homelab", "--target", "root@192.0.2.7", "--dry-run"]
    )
    assert result.exit_code == 0
    commands = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert commands[2].startswith(
        "sops decrypt --extract '[\"ssh_host_ed25519_key\"]' "
        "secrets/host-keys/homelab.yaml > @private-tmpfs-dir@/"
    )
    assert commands[0] == (
        "nix --extra-experimental-features 'nix-command "
        "flakes' build "
        "'.#legacyPackages.x86_64-linux.install.homelab.diskoScript'"
        " --no-link --json  # outputs.out: @disko-script@"
    )
    assert commands[-1] == (
        "nixos-anywhere --store-paths @disko-script@ @toplevel@ "
        "--extra-files @private-tmpfs-dir@ --target-host root@192.0.2.7"
    )


def test_guests_and_bad_targets_are_refused() -> None:
    with pytest.raises(UserError, match="no host named 'db'"):
        prov.Provision.from_plan(plan(), "db", "root@x", Path())
    with pytest.raises(UserError, match="expected user@address"):
        prov.Provision.from_plan(plan(), "homelab", "192.0.2.7", Path())


def test_private_directory_is_never_on_disk_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert prov.private_dir_root() == Path("/dev/shm")
    assert os.statvfs("/dev/shm")  # exists here


def test_missing_nixos_anywhere_is_found_before_decrypting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "homestack.deploy.cli.load", lambda _: (tmp_path / "inventory.toml", plan())
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no nixos-anywhere, no sops
    monkeypatch.setattr(prov, "host_key_tree", lambda *_: pytest.fail("decrypted the key"))
    with pytest.raises(UserError, match=r"^nixos-anywhere: command not found"):
        CliRunner().invoke(
            prov.provision, ["homelab", "--target", "root@192.0.2.7"], catch_exceptions=False
        )
