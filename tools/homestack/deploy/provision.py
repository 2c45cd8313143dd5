"""`tools provision HOST --target root@ADDR`: install a fresh machine with nixos-anywhere.

The host's partitioning script (from hosts/<host>/disko.nix) and its system are built
first, from the flake's `legacyPackages.<system>.install.<host>`; nixos-anywhere then
partitions the disks with that script, installs that exact system (`--store-paths`) and
reboots. Before that, the host's SSH host key is decrypted from
secrets/host-keys/<host>.yaml into a private tmpfs directory and handed over with
--extra-files, so the machine boots with the key its secrets are encrypted to (its age
recipient is derived from it) and can decrypt them on first boot.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from homestack.cliopts import inventory_option
from homestack.deploy.steps import build_command, built_path
from homestack.errors import UserError
from homestack.process import Runner, default_runner, error_line
from homestack.secrets.sops import Sops, index_of

KEY_NAME = "ssh_host_ed25519_key"
KEY_PATH = Path("etc/ssh") / KEY_NAME  # inside the --extra-files tree


@dataclass(frozen=True)
class Provision:
    """Everything needed to install one host, taken from the plan."""

    host: str
    target: str
    flake: Path
    secret: str  # secrets/host-keys/<host>.yaml, relative to the flake
    key: str  # the secret's key holding the private host key
    public_key: str  # hosts.<host>.host_key, what the decrypted key must match
    system: str = "x86_64-linux"  # hosts.<host>.system

    @classmethod
    def from_plan(cls, plan: Mapping[str, Any], host: str, target: str, flake: Path) -> Provision:
        hosts = plan.get("hosts", {})
        if host not in hosts:
            known = ", ".join(sorted(hosts)) or "none"
            raise UserError(
                f"inventory.toml: no host named {host!r} (hosts: {known}); "
                "guests are installed by their hypervisor"
            )
        if "@" not in target:
            raise UserError(f"--target {target}: expected user@address, e.g. root@192.0.2.7")
        secret = f"secrets/host-keys/{host}.yaml"
        keys = plan.get("secrets", {}).get(secret, {}).get("keys", [KEY_NAME])
        key = KEY_NAME if KEY_NAME in keys else keys[0]
        public = str(hosts[host].get("hostKey") or "")
        if not public:
            raise UserError(
                f"inventory.toml: hosts.{host}.host_key is not set "
                "(tools secrets bootstrap makes it)"
            )
        system = str(hosts[host].get("system") or "x86_64-linux")
        return cls(host, target, flake, secret, key, public, system)

    def decrypt_command(self) -> list[str]:
        """What `Sops.decrypt` runs (shown by --dry-run)."""
        return ["sops", "decrypt", "--extract", index_of(self.key), self.secret]

    @staticmethod
    def public_command(key_file: Path | str) -> list[str]:
        return ["ssh-keygen", "-y", "-f", str(key_file)]

    def build_command(self, what: str) -> list[str]:
        """Build the host's `diskoScript` or `toplevel` for nixos-anywhere --store-paths."""
        return build_command(f".#legacyPackages.{self.system}.install.{self.host}.{what}")

    def install_command(
        self, extra_files: Path | str, disko_script: str, toplevel: str
    ) -> list[str]:
        return [
            "nixos-anywhere",
            "--store-paths",
            disko_script,
            toplevel,
            "--extra-files",
            str(extra_files),
            "--target-host",
            self.target,
        ]


def private_dir_root() -> Path:
    """A tmpfs only this user can read: the key never touches a disk."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    for candidate in (runtime, "/dev/shm"):
        if candidate and Path(candidate).is_dir() and os.access(candidate, os.W_OK):
            return Path(candidate)
    raise UserError("no tmpfs to hold the decrypted host key (need $XDG_RUNTIME_DIR or /dev/shm)")


@contextmanager
def host_key_tree(job: Provision, runner: Runner, root: Path | None = None) -> Iterator[Path]:
    """A private directory holding etc/ssh/ssh_host_ed25519_key{,.pub}; wiped afterwards."""
    base = Path(
        tempfile.mkdtemp(prefix=f"homestack-provision-{job.host}-", dir=root or private_dir_root())
    )  # mode 0700
    key_file = base / KEY_PATH
    try:
        try:
            pem = Sops(runner=runner).decrypt(job.flake / job.secret, job.key, shown_as=job.secret)
        except UserError as exc:
            raise UserError(f"cannot decrypt {job.key}: {exc}") from None
        key_file.parent.mkdir(parents=True, mode=0o755)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(pem if pem.endswith("\n") else pem + "\n")
        derived = runner.run(job.public_command(key_file), check=False)
        if derived.returncode != 0 or derived.stdout.split()[:2] != job.public_key.split()[:2]:
            raise UserError(
                f"{job.secret}: {job.key} is not the private half of "
                f"hosts.{job.host}.host_key in inventory.toml"
            )
        pub = key_file.with_name(KEY_NAME + ".pub")
        pub.write_text(job.public_key.strip() + "\n")
        pub.chmod(0o644)
        yield base
    finally:
        if key_file.exists():
            key_file.write_bytes(b"\0" * key_file.stat().st_size)
        shutil.rmtree(base, ignore_errors=True)


def build(job: Provision, runner: Runner, what: str) -> str:
    """The store path of the host's `what` (diskoScript or toplevel), built locally."""
    result = runner.run(job.build_command(what), check=False, cwd=job.flake)
    path = built_path(result.stdout)
    if result.returncode != 0 or path is None:
        reason = error_line(result.stderr, f"exit code {result.returncode}")
        if result.returncode == 0:
            reason = "nix build printed no store path"
        raise UserError(f"hosts/{job.host}: cannot build its {what} for installing: {reason}")
    return path


def install(job: Provision, runner: Runner, say: Callable[[str], None]) -> None:
    # Build before the key is decrypted: a broken configuration stops here, with no secret
    # in memory and nothing touched on the target.
    say(f"building the disko script and the system of {job.host}")
    disko_script = build(job, runner, "diskoScript")
    toplevel = build(job, runner, "toplevel")
    with host_key_tree(job, runner) as tree:
        say(f"host key of {job.host} decrypted into {tree} (matches hosts.{job.host}.host_key)")
        say(f"installing {job.host} on {job.target} with nixos-anywhere (this erases its disks)")
        command = job.install_command(tree, disko_script, toplevel)
        result = runner.run(command, check=False, cwd=job.flake, capture=False)
    if result.returncode != 0:
        raise UserError(
            f"nixos-anywhere failed for {job.host} on {job.target} "
            f"(exit {result.returncode}); its output is above"
        )
    say(
        f"{job.host} installed; it boots with its own host key and can decrypt "
        f"secrets/{job.host}.yaml"
    )


def dry_run_lines(job: Provision) -> list[str]:
    import shlex  # noqa: PLC0415

    tree = "@private-tmpfs-dir@"
    return [
        f"# tools provision {job.host} --dry-run: the commands it runs, in order.",
        f"# 0. build the host's partitioning script (hosts/{job.host}/disko.nix) and system:",
        f"{shlex.join(job.build_command('diskoScript'))}  # outputs.out: @disko-script@",
        f"{shlex.join(job.build_command('toplevel'))}  # outputs.out: @toplevel@",
        f"# 1. decrypt the host key into a private tmpfs directory ({tree}, mode 0700):",
        f"{shlex.join(job.decrypt_command())} > {tree}/{KEY_PATH}  # mode 0600",
        f"# 2. check it is the private half of hosts.{job.host}.host_key:",
        shlex.join(job.public_command(f"{tree}/{KEY_PATH}")),
        f"#    and write {tree}/{KEY_PATH}.pub: {job.public_key}",
        "# 3. partition with the host's disko layout, install, reboot (ERASES THE DISKS):",
        shlex.join(job.install_command(tree, "@disko-script@", "@toplevel@")),
        f"# 4. overwrite and delete {tree}",
    ]


@click.command(name="provision", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("host")
@click.option(
    "--target",
    required=True,
    help="user@address of the machine, booted into any Linux with SSH (e.g. the NixOS installer).",
)
@click.option("--dry-run", is_flag=True, help="Print the commands; decrypt and install nothing.")
@inventory_option
def provision(host: str, target: str, dry_run: bool, inventory_path: Path | None) -> None:
    """Install HOST on a fresh machine with nixos-anywhere and its disko layout."""
    from homestack.deploy.cli import load  # noqa: PLC0415

    path, plan = load(inventory_path)
    job = Provision.from_plan(plan, host, target, path.parent)
    if dry_run:
        for line in dry_run_lines(job):
            click.echo(line)
        return
    if shutil.which("nixos-anywhere") is None:  # before the host key is decrypted
        raise UserError(
            "nixos-anywhere: command not found (use the flake's dev shell, or "
            "nix run github:nix-community/nixos-anywhere)"
        )
    install(job, default_runner, lambda line: click.echo(f"[{host}] {line}", err=True))
