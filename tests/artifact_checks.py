"""The programs that read a plan's rendered artifacts, run on them: `caddy adapt` on the
Caddyfile, `dnsmasq --test` on the dnsmasq config, `nft -c` on every nftables rule set.
Shared by the example's plan tests, the live inventory's test and the property test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PROGRAMS = ("caddy", "dnsmasq", "nft", "unshare")


def require_programs() -> None:
    """Skip (with the names) where the programs are missing; scripts/bootstrap installs them."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/bootstrap installs them)")


def caddy_adapt(text: str, tmp_path: Path) -> dict[str, Any]:
    """The JSON config Caddy makes of a Caddyfile; fails with Caddy's own message."""
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    out = subprocess.run(
        ["caddy", "adapt", "--config", str(path), "--adapter", "caddyfile"],
        check=False, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, f"caddy adapt rejected the Caddyfile:\n{out.stderr}\n{text}"
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def dnsmasq_test(text: str, tmp_path: Path) -> None:
    path = tmp_path / "dnsmasq.conf"
    path.write_text(text)
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={path}"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, f"dnsmasq --test rejected the config:\n{out.stderr}\n{text}"
    assert "syntax check OK" in out.stderr


def nft_check(text: str, tmp_path: Path) -> None:
    """`nft -c` in a fresh user and network namespace: nothing is applied to this machine,
    no root is needed, and nft cannot resolve names over the network while parsing."""
    path = tmp_path / "rules.nft"
    path.write_text(text)
    out = subprocess.run(
        ["unshare", "-rn", "nft", "-c", "-f", str(path)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, f"nft -c rejected the rule set:\n{out.stderr}\n{text}"


def check_rendered(plan: dict[str, Any], tmp_path: Path) -> int:
    """Runs every rendered artifact of a plan through its program; returns how many ran."""
    artifacts = plan["artifacts"]
    checked = 0
    if artifacts.get("caddyfile") is not None:
        caddy_adapt(artifacts["caddyfile"], tmp_path)
        checked += 1
    if artifacts.get("dnsmasq") is not None:
        dnsmasq_test(artifacts["dnsmasq"], tmp_path)
        checked += 1
    rule_sets = [
        *artifacts["nftables"].values(),
        *artifacts["hostNftables"].values(),
        *(artifacts.get("bridgeNftablesByHost") or {}).values(),
    ]
    for text in rule_sets:
        nft_check(text, tmp_path)
    return checked + len(rule_sets)
