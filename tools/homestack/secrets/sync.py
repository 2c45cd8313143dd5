"""Re-key every secret file to the recipients the plan wants, all files or none.

1. stage copies and re-wrap their data keys with `sops updatekeys` (several files per
   sops call, two calls at a time), rotating the data key where a recipient was removed;
2. verify every copy: its metadata lists exactly the intended recipients, its values are
   unchanged, and `sops decrypt` opens it with the admin's key, checking its MAC, so a
   file changed outside sops is refused rather than re-keyed;
3. write a manifest (the commit point), then rename the copies into place.

A run killed before the manifest exists changed nothing; one killed after it is rolled
forward by the next run. Every rename is atomic, so each file is always the old or the
new version, decryptable by the old or the new set of recipients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.secrets.model import SecretSpec, SecretsPlan
from homestack.secrets.rules import render_rules
from homestack.secrets.sops import Sops
from homestack.secrets.sopsfile import SopsFile, read_sops_file
from homestack.secrets.staging import SECRETS_DIR, Stage, sha256_of

SYNC_DIR = ".sync"
MANIFEST = "MANIFEST.json"

Progress = Callable[[str, int, int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    """One file whose recipients differ from the plan."""

    path: str
    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def rotates(self) -> bool:
        # A removed recipient may have kept the data key: give the file a new one.
        return bool(self.removed)


@dataclass(frozen=True)
class SyncResult:
    changes: tuple[Change, ...]
    unchanged: int
    missing: tuple[str, ...]  # plan files that do not exist yet
    recovered: int  # files an interrupted run had left to rename


def pending_changes(root: Path, plan: SecretsPlan) -> tuple[list[Change], int, list[str]]:
    """(changes, number already in line, plan files that do not exist)."""
    changes, unchanged, missing = [], 0, []
    for spec in plan.specs:
        path = root / spec.path
        if not path.exists():
            missing.append(spec.path)
            continue
        current = read_sops_file(path)
        have = set(current.recipients)
        want = set(spec.recipients)
        extra_keys = current.pgp or any(g.other for g in current.key_groups)
        if have == want and len(current.key_groups) == 1 and not extra_keys:
            unchanged += 1
            continue
        removed = tuple(r for r in current.recipients if r not in want)
        if extra_keys or len(current.key_groups) > 1:
            removed += tuple(f"pgp:{fp}" for fp in current.pgp) or ("key groups",)
        changes.append(
            Change(spec.path, tuple(r for r in spec.recipients if r not in have), removed)
        )
    return changes, unchanged, missing


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    base = root / SECRETS_DIR
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)  # the directory itself is the lock
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(f"{base}: another `tools secrets sync` is running") from exc
        yield
    finally:
        os.close(fd)


def recover(root: Path) -> int:
    """Finish or discard what an interrupted sync left behind; the number of files moved."""
    directory = root / SECRETS_DIR / SYNC_DIR
    if not directory.exists():
        return 0
    stage = Stage(root, directory)
    manifest = directory / MANIFEST
    moved = 0
    if manifest.exists():  # past the commit point: roll forward
        for entry in json.loads(manifest.read_text())["files"]:
            rel = entry["path"]
            if sha256_of(stage.path(rel)) != entry["new"]:
                continue  # already moved (or not the verified copy: never install it)
            if sha256_of(root / rel) in (entry["old"], None):
                stage.commit(rel)
                moved += 1
    stage.remove()
    return moved


def _parallel(
    jobs: int, items: Sequence[T], work: Callable[[T], None], tick: Callable[[T], None]
) -> None:
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [(item, pool.submit(work, item)) for item in items]
        for item, future in futures:
            future.result()
            tick(item)


def _chunks(items: Sequence[str], count: int) -> list[list[str]]:
    size = max(1, -(-len(items) // count))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def verify_staged(
    stage: Stage,
    spec: SecretSpec,
    sops: Sops,
    original: SopsFile | None = None,
) -> None:
    """The copy's metadata names exactly the intended recipients, its values are the
    ``original``'s (re-keyed, not rotated), and `sops decrypt` opens it with the admin's
    key, which also verifies its MAC: a file changed outside sops is never re-keyed."""
    staged = read_sops_file(stage.path(spec.path))
    if staged.problems:
        raise UserError(f"{spec.path}: re-keyed copy is damaged: {staged.problems[0]}")
    if len(staged.key_groups) != 1 or set(staged.recipients) != set(spec.recipients):
        raise UserError(f"{spec.path}: re-keyed copy does not have the intended recipients")
    if original is not None:
        unchanged = (staged.values_digest, staged.mac, staged.lastmodified) == (
            original.values_digest,
            original.mac,
            original.lastmodified,
        )
        if not unchanged:
            raise UserError(f"{spec.path}: re-keying changed its values")
    try:
        sops.decrypt(stage.path(spec.path), config=stage.config, shown_as=spec.path)
    except UserError as exc:
        raise UserError(f"{exc}; not re-keyed, every file is unchanged") from exc


def _counter(report: Progress, step: str, total: int) -> Callable[[int], None]:
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        report(step, done, total)

    return tick


def _rekey_and_verify(
    stage: Stage,
    changes: Sequence[Change],
    plan: SecretsPlan,
    sops: Sops,
    *,
    jobs: int,
    report: Progress,
) -> None:
    """Steps 1 and 2 of the module doc, on the staged copies only."""
    specs = {spec.path: spec for spec in plan.specs}
    paths = [c.path for c in changes]
    originals = {rel: read_sops_file(stage.root / rel) for rel in paths}
    for rel in paths:
        stage.copy_in(rel)

    def rekey(batch: list[str]) -> None:
        try:
            sops.updatekeys([stage.path(rel) for rel in batch], config=stage.config, cwd=stage.dir)
        except UserError as exc:  # name the file, not its staged copy
            raise UserError(str(exc).replace(f"{stage.dir}/", "")) from exc

    # Several files per sops call (sops startup dominates), `jobs` calls at a time.
    tick = _counter(report, "re-keyed", len(paths))
    _parallel(jobs, _chunks(paths, jobs * 2), rekey, lambda batch: tick(len(batch)))

    rotating = {c.path for c in changes if c.rotates}
    tick = _counter(report, "rotated", len(rotating))
    _parallel(
        jobs,
        sorted(rotating),
        lambda rel: sops.rotate(stage.path(rel), config=stage.config, shown_as=rel),
        lambda _: tick(1),
    )

    def check_copy(rel: str) -> None:
        original = None if rel in rotating else originals[rel]
        verify_staged(stage, specs[rel], sops, original)

    tick = _counter(report, "verified", len(paths))
    _parallel(jobs, paths, check_copy, lambda _: tick(1))


def sync(
    root: Path,
    plan: SecretsPlan,
    sops: Sops,
    *,
    jobs: int = 2,
    progress: Progress | None = None,
) -> SyncResult:
    """Bring every secret file's recipients in line with ``plan`` (see the module doc)."""
    report = progress or (lambda _step, _done, _total: None)
    plan = plan.with_backups(root)  # backups follow their file's recipients too
    with _lock(root):
        recovered = recover(root)
        changes, unchanged, missing = pending_changes(root, plan)
        if not changes:
            return SyncResult((), unchanged, tuple(missing), recovered)
        stage = Stage.at(root, root / SECRETS_DIR / SYNC_DIR, render_rules(plan))
        paths = [c.path for c in changes]
        old = {rel: sha256_of(root / rel) for rel in paths}
        committed = False
        try:
            _rekey_and_verify(stage, changes, plan, sops, jobs=jobs, report=report)
            # The commit point: from here on a crash is rolled forward by the next run,
            # so the verified copies must be on disk before the manifest is.
            for rel in paths:
                stage.sync_to_disk(rel)
            files = [{"path": r, "old": old[r], "new": sha256_of(stage.path(r))} for r in paths]
            atomic_write(stage.dir / MANIFEST, json.dumps({"files": files}).encode(), 0o600)
            committed = True
            for count, rel in enumerate(paths, 1):
                stage.commit(rel)
                report("renamed", count, len(paths))
        except BaseException:
            if not committed:  # nothing was renamed: the old files stand
                stage.remove()
            raise  # past the commit point the next run rolls forward
        stage.remove()
        return SyncResult(tuple(changes), unchanged, tuple(missing), recovered)
