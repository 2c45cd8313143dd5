"""Work on copies: a private directory next to the secret files, holding staged copies
under their real relative paths and a `.sops.yaml` with the plan's rules, so sops picks
the same creation rule for a copy as for the file itself. Renames into place are atomic
because the copies live on the same filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from homestack.fsutil import fsync_dir, read_regular, require_plain
from homestack.secrets.rules import CONFIG_NAME

SECRETS_DIR = "secrets"


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Stage:
    root: Path  # the repository: where inventory.toml and .sops.yaml live
    dir: Path

    @classmethod
    def create(cls, root: Path, prefix: str, rules_text: str) -> Stage:
        base = root / SECRETS_DIR
        base.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(dir=base, prefix=f".{prefix}-"))
        return cls.at(root, directory, rules_text)

    @classmethod
    def at(cls, root: Path, directory: Path, rules_text: str) -> Stage:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(rules_text)
        return cls(root, directory)

    @property
    def config(self) -> Path:
        return self.dir / CONFIG_NAME

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def copy_in(self, rel: str) -> Path:
        staged = self.path(rel)
        staged.parent.mkdir(parents=True, exist_ok=True)
        # never through a link: the copy must be of the file that is then replaced
        require_plain(self.root, rel, what="secret file")
        data = read_regular(self.root / rel, rel, what="secret file")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return staged

    def write(self, rel: str, data: str) -> Path:
        staged = self.path(rel)
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(data)
        return staged

    def sync_to_disk(self, rel: str) -> None:
        with self.path(rel).open("rb") as handle:
            os.fsync(handle.fileno())

    def commit(self, rel: str) -> None:
        """Move one staged file into place: readers see the old file or the new one."""
        staged, target = self.path(rel), self.root / rel
        self.sync_to_disk(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        staged.chmod(mode)
        staged.replace(target)
        fsync_dir(target.parent)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
