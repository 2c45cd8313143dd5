"""`tools lab` at 30 guests: the example grown by 26 small web apps (bench/lab.py's `grown`),
up and tested end to end with 0 wrong, as a homelab that has grown would run it.

Own name prefix and state directory, like tests/test_lab.py. Needs root and the Debian
daemons.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, requires_nix
from labenv import lab_environment, needs_the_lab, run_lab

PREFIX = f"hs30{os.getpid()}-"
pytestmark = [requires_nix, *needs_the_lab()]


def grown(guests: int) -> str:
    spec = importlib.util.spec_from_file_location("bench_lab", REPO / "bench" / "lab.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text: str = bench.grown(guests)
    return text


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    with lab_environment("lab-test30", PREFIX) as environ:
        yield environ


def lab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_lab(env, *args, timeout=600)


def test_thirty_guests(env: dict[str, str], tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(grown(30))
    up = lab(env, "up", "-i", str(inventory))
    assert up.returncode == 0, up.stderr
    # The guests, the hypervisor, the LAN client, the internet and the relay.
    assert len(list(Path("/run/netns").glob(f"{PREFIX}*"))) == 30 + 4
    test = lab(env, "test", "-i", str(inventory), "--json")
    assert test.stdout.startswith("{"), test.stderr
    report: dict[str, Any] = json.loads(test.stdout)
    wrong = [c for c in report["checks"] if not c["ok"]]
    assert test.returncode == 0 and report["failures"] == 0, json.dumps(wrong, indent=1)
    https = {c["name"] for c in report["checks"] if c["group"] == "https"}
    assert any("app25" in name for name in https), "the last app's route is checked"
    both = {
        (r["src"], r["dst"], r["port"], r["proto"]): r["outcome"]
        for r in report["matrix"]["both"]
        if r["path"] == "direct"
    }
    assert both[("app25", "db", 5432, "tcp")] == "open"
    assert both[("proxy", "app25", 3000, "tcp")] == "open"
    assert both[("app25", "proxy", 443, "tcp")] == "open"
    assert both[("proxy", "db", 5432, "tcp")] != "open"
    # Every app is probed from a guest it has no flow with, on the app's own port.
    for i in range(26):
        strangers = {
            s
            for (s, d, p, _), o in both.items()
            if d == f"app{i}"
            and p == 3000
            and s not in {"proxy", "db"}
            and s.startswith(("app", "auth", "vpn"))
        }
        assert strangers, f"app{i} is probed from no stranger"
        assert all(both[(s, f"app{i}", 3000, "tcp")] != "open" for s in strangers)
