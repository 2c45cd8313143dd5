"""Shared helpers for the secrets tests: a private repository with real sops files.

The repository is the example inventory plus secret files made by the library itself
(host keys imported from tests/keys, a few dummy secrets), encrypted by the real sops.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLE, REFERENCE, REPO

from homestack import cli
from homestack.inventory import set_inventory_value
from homestack.plan import load_plan
from homestack.secrets.agekeys import AgeIdentity
from homestack.secrets.keys import bootstrap_machine
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import write_rules
from homestack.secrets.sops import Sops
from homestack.secrets.store import set_secret

KEYS = REPO / "tests" / "keys"
# The sops test vectors ship with the tests (tests/reference/PROVENANCE.md says where from).


def _private_copy(source: Path) -> Path:
    """The vectors in a private directory, their key files 0600 as sops's users keep them
    (`tools` refuses an age key others can read); removed when the tests end."""
    target = Path(tempfile.mkdtemp(prefix="sops-vectors-")) / "sops-vectors"
    shutil.copytree(source, target)
    target.chmod(0o700)
    for path in target.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    atexit.register(shutil.rmtree, target.parent, True)
    return target


VECTORS = _private_copy(REFERENCE / "sops-vectors")
MACHINES = ("homelab", "cloud-relay", "auth", "vpn", "proxy", "db")
BOB_IDENTITY = AgeIdentity.generate()  # a second admin, made up per test run
BOB = BOB_IDENTITY.recipient

DUMMY_SECRETS = {
    "secrets/auth.yaml": {"pocket-id/encryption-key": "dummy-pocket-id-encryption-key"},
    "secrets/vpn.yaml": {
        "netbird/turn-password": "dummy-turn-password",
        "netbird/relay-secret": "dummy-relay-secret",
        "netbird/datastore-key": "dummy-datastore-key",
    },
    "secrets/shared/pg-pocketid.yaml": {"password": "dummy-pocketid-db-password"},
}


def copy_keys(target: Path) -> Path:
    """tests/keys with the 0600 modes git does not keep."""
    shutil.copytree(KEYS, target)
    for key in target.iterdir():
        key.chmod(0o600)
    return target


def secrets_plan(root: Path) -> SecretsPlan:
    return SecretsPlan.from_plan(load_plan(root / "inventory.toml"))


def build_repo(root: Path, keys: Path, sops: Sops) -> None:
    """The example inventory with every host key file and a few dummy secrets."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLE, root / "inventory.toml")
    plan = secrets_plan(root)
    write_rules(root, plan)

    def set_value(path: list[str], value: str) -> None:
        set_inventory_value(root / "inventory.toml", path, value)

    for machine in MACHINES:
        pem = (keys / f"host_{machine}").read_bytes()
        bootstrap_machine(root, plan, machine, sops, set_value, import_pem=pem)
    for rel, values in DUMMY_SECRETS.items():
        for key, value in values.items():
            set_secret(root, plan, rel, key, value, sops=sops)


def add_admin(inventory: Path, name: str, recipient: str) -> None:
    """Add an admin user to the inventory (the way an operator would)."""
    text = inventory.read_text()
    block = f'[users.{name}]\nadmin = true\nssh_keys = []\nage_key = "{recipient}"\n\n'
    inventory.write_text(text.replace("# The guest network", block + "# The guest network", 1))


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_keys(tmp_path_factory.mktemp("secrets-keys") / "keys")


@pytest.fixture(scope="session")
def bob_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bob") / "keys.txt"
    path.write_text(f"{BOB_IDENTITY}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def admin_sops(session_keys: Path) -> Sops:
    return Sops(env={"SOPS_AGE_KEY_FILE": str(session_keys / "admin_alice.agekey")})


@pytest.fixture(scope="session")
def built_repo(
    tmp_path_factory: pytest.TempPathFactory, session_keys: Path, admin_sops: Sops
) -> Path:
    root = tmp_path_factory.mktemp("secrets-repo") / "repo"
    build_repo(root, session_keys, admin_sops)
    return root


@pytest.fixture
def repo(
    built_repo: Path,
    tmp_path: Path,
    session_keys: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """A private copy of the built repository; the admin key is where sops looks."""
    root = tmp_path / "repo"
    shutil.copytree(built_repo, root)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(session_keys / "admin_alice.agekey"))
    monkeypatch.setenv("SOPS_DISABLE_VERSION_CHECK", "1")
    monkeypatch.delenv("HOMESTACK_INVENTORY", raising=False)
    monkeypatch.chdir(root)
    yield root


def tools(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `tools …` in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def sops_with(key_file: Path) -> Sops:
    key_file.chmod(0o600)  # as an age key is kept; `tools` refuses one others can read
    return Sops(env={"SOPS_AGE_KEY_FILE": str(key_file)})


def environ_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
