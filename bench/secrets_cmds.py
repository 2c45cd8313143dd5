"""Benchmark `tools secrets`: `check` over 200 files and `sync` over 50 files.

    .venv/bin/python bench/secrets_cmds.py

`check` reads metadata only (target: under 1 s for 200 files). `sync` is compared with
the plain loop it replaces, `sops updatekeys -y` on each file in sequence, which neither
verifies nor protects against interruption (target: at most 1.2x that loop).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from homestack.plan import load_plan
from homestack.secrets.audit import audit
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import render_rules
from homestack.secrets.sops import Sops
from homestack.secrets.sync import sync

CHECK_FILES = 200
SYNC_FILES = 50
ROUNDS = 3


def bench_plan(base: dict[str, Any], count: int, machines: list[str]) -> dict[str, Any]:
    """The example plan with ``count`` generated secret files instead of its own."""
    admin = base["users"]["alice"]["ageKey"]
    secrets = {}
    for i in range(count):
        machine = machines[i % len(machines)]
        age = base["guests"].get(machine, base["hosts"].get(machine, {})).get("ageKey")
        path = f"secrets/bench/file-{i:03d}.yaml"
        secrets[path] = {
            "path": path,
            "machines": [machine],
            "admins": ["alice"],
            "recipients": [admin, age],
            "keys": ["password"],
            "purpose": f"benchmark file {i}",
        }
    return {**base, "secrets": secrets}


def admins_only(plan: dict[str, Any]) -> dict[str, Any]:
    admin = plan["users"]["alice"]["ageKey"]
    secrets = {p: {**s, "machines": [], "recipients": [admin]} for p, s in plan["secrets"].items()}
    return {**plan, "secrets": secrets}


def make_files(root: Path, plan: SecretsPlan, sops: Sops) -> None:
    """One real sops file per plan entry, encrypted in parallel."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".sops.yaml").write_text(render_rules(plan))

    def one(path: str) -> None:
        text = sops.encrypt(
            f'{{"password": "dummy-{path}"}}',
            path,
            config=root / ".sops.yaml",
            cwd=root,
        )
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [s.path for s in plan.specs]))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="homestack-bench-"))
    try:
        keys = work / "keys"
        shutil.copytree(REPO / "tests" / "keys", keys)
        for key in keys.iterdir():
            key.chmod(0o600)
        sops = Sops(env={"SOPS_AGE_KEY_FILE": str(keys / "admin_alice.agekey")})
        base = load_plan(REPO / "inventory.toml")
        machines = sorted(base["guests"]) + sorted(base["hosts"])

        # check: 200 files, metadata only
        check_plan = SecretsPlan.from_plan(bench_plan(base, CHECK_FILES, machines))
        check_root = work / "check"
        make_files(check_root, SecretsPlan.from_plan(bench_plan(base, 24, machines)), sops)
        sources = sorted((check_root / "secrets/bench").glob("*.yaml"))
        for i, spec in enumerate(
            check_plan.specs
        ):  # 24 distinct files (4 per machine), copied to 200 names
            target = check_root / spec.path
            if not target.exists():
                shutil.copyfile(sources[i % len(sources)], target)
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            findings = audit(check_root, check_plan)
            times.append(time.perf_counter() - start)
        # the whole command too: Python start, plan evaluation by Nix, 200 extra files
        cli_root = work / "cli"
        cli_root.mkdir()
        shutil.copyfile(REPO / "inventory.toml", cli_root / "inventory.toml")
        shutil.copytree(check_root / "secrets", cli_root / "secrets")
        tools = Path(sys.executable).parent / "tools"
        start = time.perf_counter()
        subprocess.run(
            [str(tools), "secrets", "check"],
            cwd=cli_root,
            capture_output=True,
            check=False,
        )
        cli = time.perf_counter() - start
        print(
            f"check: {CHECK_FILES} files in {min(times):.3f} s (best of {ROUNDS}; "
            f"{len(findings)} findings; target < 1 s)"
        )

        # sync: 50 files gain their machine's recipient
        wanted = bench_plan(base, SYNC_FILES, machines)
        target_plan = SecretsPlan.from_plan(wanted)
        originals = work / "originals"
        make_files(originals, SecretsPlan.from_plan(admins_only(wanted)), sops)
        print(f"check: `tools secrets check` over the same 200 files as a command: {cli:.3f} s")
        loop_times, sync_times = [], []
        for round_ in range(ROUNDS):
            loop_root, sync_root = work / f"loop-{round_}", work / f"sync-{round_}"
            for root in (loop_root, sync_root):
                shutil.copytree(originals, root)
                (root / ".sops.yaml").write_text(render_rules(target_plan))
            files = [str(loop_root / s.path) for s in target_plan.specs]
            env = {"SOPS_DISABLE_VERSION_CHECK": "1", **sops.env}
            start = time.perf_counter()
            for path in files:
                subprocess.run(
                    [sops.binary, "updatekeys", "-y", path],
                    cwd=loop_root,
                    env=env,
                    capture_output=True,
                    check=True,
                )
            loop_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = sync(sync_root, target_plan, sops, jobs=2)
            sync_times.append(time.perf_counter() - start)
            assert len(result.changes) == SYNC_FILES
        loop, ours = statistics.median(loop_times), statistics.median(sync_times)
        print(
            f"sync: {SYNC_FILES} files in {ours:.3f} s (median of {ROUNDS}; "
            "staged, verified with the admin key, renamed into place)"
        )
        print(f"loop: {SYNC_FILES} x `sops updatekeys -y` in {loop:.3f} s (median of {ROUNDS})")
        print(f"sync / loop = {ours / loop:.2f} (target <= 1.2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
