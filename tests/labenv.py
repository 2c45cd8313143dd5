"""The lab tests' shared ground: each test module runs `tools lab` as a user would, under a
name prefix and directories of its own, so two runs (or a lab started by hand) never meet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TOOLS = str(Path(sys.executable).with_name("tools"))
# What every namespace lab runs: iproute2, nftables, util-linux and the real daemons.
LAB_PROGRAMS = ("ip", "nft", "setpriv", "unshare", "caddy", "dnsmasq", "psql")
POSTGRES = Path("/usr/lib/postgresql/15/bin/postgres")


def needs_the_lab(
    *more: str, reason: str = "caddy, dnsmasq, postgresql-15, nftables or iproute2 missing"
) -> list[pytest.MarkDecorator]:
    """The marks of a test module that brings a lab up: root, the lab's programs and
    ``more`` of them, and Debian's PostgreSQL 15."""
    return [
        pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
        pytest.mark.skipif(
            any(shutil.which(p) is None for p in (*LAB_PROGRAMS, *more)) or not POSTGRES.exists(),
            reason=reason,
        ),
    ]


@contextmanager
def lab_environment(name: str, prefix: str) -> Iterator[dict[str, str]]:
    """The environment for a lab of its own; taken down and removed afterwards.

    Not under pytest's tmp_path: that is closed to other users, and the daemons (and
    Chromium) run as caddy, postgres and nobody."""
    base = Path(f"/run/homestack-{name}-{os.getpid()}")
    base.mkdir(mode=0o755)
    environ = {
        **os.environ,
        "HOMESTACK_LAB_DIR": str(base / "run"),
        "HOMESTACK_LAB_PREFIX": prefix,
        "HOMESTACK_LAB_CACHE": str(base / "cache"),
    }
    try:
        yield environ
    finally:
        subprocess.run([TOOLS, "lab", "down"], env=environ, check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def run_lab(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`tools lab ARGS` in that environment, its output captured."""
    return subprocess.run(
        [TOOLS, "lab", *args], env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
