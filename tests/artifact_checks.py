"""The programs that read a plan's rendered artifacts, run on them: `caddy adapt` on the
Caddyfile, `dnsmasq --test` on the dnsmasq config, `nft -c` on every nftables rule set,
PostgreSQL's own hba parser on pg_hba.conf and `wg`/`ip` on the WireGuard configs.
Shared by the example's plan tests, the live inventory's test, the property test and
bench/plan.py (which runs them at 10 to 1,000 guests; the assertions carry each program's
own message)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
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


# `for f; do nft -c -f "$f"; done` in one namespace: a thousand rule sets cost a thousand
# nft runs, not a thousand namespaces. A fixed script; the files are its arguments.
_NFT_EACH = 'for f; do nft -c -f "$f" || { echo "in $f" >&2; exit 1; }; done'


def nft_check_many(texts: list[str], tmp_path: Path) -> None:
    """nft_check on every text, in one network namespace. As root, a plain new network
    namespace: nft sends a rule set as one netlink batch and raises its socket's send
    buffer to the batch's size with SO_SNDBUFFORCE (nftables 1.0.6, src/mnl.c
    mnl_set_sndbuffer), which the kernel grants only with CAP_NET_ADMIN in the initial user
    namespace (socket(7)). In a user namespace the buffer stays at net.core.wmem_default
    (208 KiB), and the hypervisor's rule sets of 1,000 guests fail there with "Message too
    long" although the real host (root) loads them."""
    folder = tmp_path / "nft"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = folder / f"rules-{i}.nft"
        path.write_text(text)
        paths.append(str(path))
    namespace = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    out = subprocess.run(
        [*namespace, "sh", "-c", _NFT_EACH, "nft-each", *paths],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, f"nft -c rejected a rule set:\n{out.stderr}"


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_hba_check(text: str) -> int:
    """PostgreSQL's own parser on a pg_hba.conf: a throwaway cluster's single-user backend
    reads it through the pg_hba_file_rules view (the parser the postmaster uses on start
    and reload; PostgreSQL 15 manual, 54.9 "pg_hba_file_rules"). Returns the number of
    rules; fails with PostgreSQL's message for every line it rejects. Needs root (initdb
    runs as the postgres user) and Debian's postgresql-15."""
    with tempfile.TemporaryDirectory(prefix="hs-hba-") as tmp:
        root = Path(tmp)
        shutil.chown(root, "postgres", "postgres")
        (root / "pg_hba.conf").write_text(text)
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(root / "data"),
             "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-A", "peer"],
            check=True, capture_output=True, cwd=root,
        )  # fmt: skip
        query = (
            "SELECT count(*) AS rules, coalesce(string_agg('line ' || line_number || ': ' "
            "|| error, '; '), 'none') AS errors FROM pg_hba_file_rules\n"
        )
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "--single",
             "-D", str(root / "data"), "-c", f"hba_file={root / 'pg_hba.conf'}",
             "-c", "fsync=off", "postgres"],
            check=False, capture_output=True, text=True, input=query, cwd=root,
        )  # fmt: skip
    rules = re.search(r'rules = "(\d+)"', out.stdout)
    errors = re.search(r'errors = "(.*)"\t', out.stdout)
    assert out.returncode == 0 and rules and errors, f"postgres --single failed:\n{out.stderr}"
    assert errors.group(1) == "none", f"PostgreSQL rejected pg_hba.conf: {errors.group(1)}"
    return int(rules.group(1))


def wireguard_check(text: str, tmp_path: Path) -> None:
    """A wg-quick config (what lib/render/wireguard.nix gives people) as its programs read
    it: `wg-quick strip` removes wg-quick's own keys, `wg setconf` parses the rest (no
    kernel module is needed to parse: without one it fails only after "Unable to modify
    interface", which a parse error never reaches), and `ip address add` takes each Address
    (on `lo` of a fresh network namespace), as wg-quick hands it over (wg-quick(8))."""
    conf = tmp_path / "wg-check.conf"  # wg-quick names the interface after the file
    conf.write_text(text)
    conf.chmod(0o600)
    strip = subprocess.run(
        ["wg-quick", "strip", str(conf)], check=False, capture_output=True, text=True
    )
    assert strip.returncode == 0, f"wg-quick strip rejected the config:\n{strip.stderr}\n{text}"
    stripped = tmp_path / "wg-check.stripped"
    stripped.write_text(strip.stdout)
    out = subprocess.run(
        ["unshare", "-rn", "wg", "setconf", "wg-check", str(stripped)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    parsed = out.returncode == 0 or (
        "Unable to modify interface" in out.stderr and "parsing error" not in out.stderr
    )
    assert parsed, f"wg setconf rejected the config:\n{out.stderr}\n{strip.stdout}"
    for address in re.findall(r"^Address = (.+)$", text, flags=re.MULTILINE):
        for one in address.split(","):
            ip = subprocess.run(
                ["unshare", "-rn", "sh", "-c",
                 'ip address add "$1" dev lo', "ip", one.strip()],
                check=False, capture_output=True, text=True,
            )  # fmt: skip
            assert ip.returncode == 0, f"ip address add rejected Address {one}:\n{ip.stderr}"


def check_rendered(plan: dict[str, Any], tmp_path: Path, *, pg: bool = False) -> int:
    """Runs every rendered artifact of a plan through its program; returns how many ran.
    pg_hba.conf (and WireGuard, where its tools are installed) only with `pg`: PostgreSQL's
    parse needs root and a second of initdb."""
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
    nft_check_many(rule_sets, tmp_path)
    checked += len(rule_sets)
    if pg and artifacts.get("pgHba") is not None:
        pg_hba_check(artifacts["pgHba"])
        checked += 1
    wireguard = artifacts.get("wireguard")
    if pg and wireguard is not None:
        for key in ("relayText", "homeText"):
            wireguard_check(wireguard[key], tmp_path)
            checked += 1
    return checked
