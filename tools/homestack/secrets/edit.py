"""`tools secrets edit`: `sops edit` with its plaintext on a private tmpfs.

sops edits a staged copy; the editor it runs is ours (`homestack.secrets.editor`), which
runs the user's editor and refuses invalid documents, so sops leaves the copy alone. Only
a changed, verified copy replaces the file.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from homestack.errors import UserError
from homestack.secrets.editor import REAL_EDITOR
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import render_rules
from homestack.secrets.sops import EDITOR_FAILED, FILE_NOT_MODIFIED, Sops
from homestack.secrets.sopsfile import read_sops_file
from homestack.secrets.staging import Stage


class Outcome(Enum):
    CHANGED = "changed"
    CREATED = "created"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class EditResult:
    path: str
    outcome: Outcome


def user_editor() -> str:
    return (
        os.environ.get("SOPS_EDITOR")
        or os.environ.get("VISUAL")
        or os.environ.get("EDITOR")
        or "vi"
    )


def edit_secret(
    root: Path, plan: SecretsPlan, rel: str, sops: Sops, editor: str | None = None
) -> EditResult:
    plan.spec(rel)
    exists = (root / rel).exists()
    stage = Stage.create(root, "edit", render_rules(plan))
    mountpoint = tempfile.mkdtemp(prefix="homestack-edit-")
    try:
        staged = stage.copy_in(rel) if exists else stage.path(rel)
        staged.parent.mkdir(parents=True, exist_ok=True)
        wrapper = shlex.join([sys.executable, "-m", "homestack.secrets.editor"])
        result = sops.run(
            [
                "--config",
                str(stage.config),
                "edit",
                str(staged),
            ],
            env={"SOPS_EDITOR": wrapper, "EDITOR": wrapper, REAL_EDITOR: editor or user_editor()},
            capture=False,
            cwd=stage.dir,
            wrap=[sys.executable, "-m", "homestack.secrets.privtmp", mountpoint, "--"],
        )
        if result.returncode == FILE_NOT_MODIFIED:
            return EditResult(rel, Outcome.UNCHANGED)
        what = "the old file is kept" if exists else "nothing was created"
        if result.returncode == EDITOR_FAILED:
            raise UserError(
                f"{rel}: not saved ({what}): the editor failed or left an invalid document"
            )
        if result.returncode != 0 or not staged.exists():
            raise UserError(f"{sops.fail('edit', rel, result)}; {what}")
        problems = read_sops_file(staged).problems
        if problems:
            raise UserError(
                f"{rel}: the edited copy is damaged ({problems[0]}); the old file is kept"
            )
        stage.commit(rel)
        return EditResult(rel, Outcome.CHANGED if exists else Outcome.CREATED)
    finally:
        stage.remove()
        Path(mountpoint).rmdir()
