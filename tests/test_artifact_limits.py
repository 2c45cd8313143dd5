"""The limits of the programs that read the rendered artifacts, each from its source or
manual, and a plan that reaches the inventory's own limits staying inside them:

- nftables: a comment holds at most 128 bytes (libnftnl include/libnftnl/udata.h,
  NFTNL_UDATA_COMMENT_MAXLEN; tests/test_plan.py renders 34 guests of 63-character names);
  table, chain and set names at most 255 (the kernel's include/uapi/linux/netfilter/
  nf_tables.h, NFT_NAME_MAXLEN 256 with the NUL); an interface name in a set element at
  most 15 (include/uapi/linux/if.h, IFNAMSIZ 16). Sets have no size limit unless they
  declare one (nft(8), SETS: "size: maximum number of elements in the set"), and ours
  declare none.
- dnsmasq reads its configuration with fgets(buff, MAXDNAME, f) (src/option.c, read_file;
  MAXDNAME is 1025 in src/dns-protocol.h): a longer line is cut and its rest read as the
  next line, so every rendered line stays under 1,024 bytes.
- PostgreSQL keeps names in NAMEDATALEN - 1 = 63 bytes (src/include/pg_config_manual.h)
  and cuts longer ones; a pg_hba.conf token may be 10,240 bytes (src/backend/libpq/hba.c,
  MAX_TOKEN). The inventory's database names stop at 63.
- Caddy's Caddyfile lexer has no length limit on a token (caddyconfig/caddyfile/lexer.go);
  a site address is a DNS name: labels of 63, names of 253 (RFC 1035, 2.3.4), which the
  inventory enforces.
- wg(8) reads a configuration line by line with getline (src/config.c), without a limit;
  keys are 44 characters of base64 and the tunnel has one peer whatever the inventory.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from artifact_checks import caddy_adapt, dnsmasq_test, nft_check_many, require_programs
from conftest import REPO, requires_nix

from homestack.plan import check_inventory, load_plan

pytestmark = requires_nix

NAME = "n" * 60  # + a three-digit suffix: 63, the longest label


def longest(guests: int) -> dict[str, Any]:
    """bench/plan.py's homelab with 63-character guest, route and database names under a
    domain that makes each route's name 253 characters long."""
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "bench" / "plan.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    inv: dict[str, Any] = bench.inventory(guests)
    inv["domain"] = ".".join(["d" * 63, "e" * 63, "f" * 61])  # 189 + 1 + 63 = 253
    renamed: dict[str, Any] = {}
    for i, (name, guest) in enumerate(inv["guests"].items()):
        if not name.startswith("app"):
            renamed[name] = guest
            continue
        long = f"{NAME}{i:03d}"
        guest["routes"] = [{**r, "name": long} for r in guest["routes"]]
        guest["databases"] = [{**d, "name": long.replace("n", "d")} for d in guest["databases"]]
        guest["tap"] = f"vm{i:03d}"
        renamed[long] = guest
    inv["guests"] = renamed
    return inv


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("limits") / "inventory.toml"
    path.write_text(tomli_w.dumps(longest(40)))
    assert check_inventory(path) == []
    return load_plan(path)


def test_names_at_the_inventorys_limits_fit_every_program(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    require_programs()
    art = plan["artifacts"]
    routes = [r["fqdn"] for r in plan["routes"]]
    assert max(len(f) for f in routes) == 253
    caddy_adapt(art["caddyfile"], tmp_path)
    dnsmasq_test(art["dnsmasq"], tmp_path)
    assert max(len(line) for line in art["dnsmasq"].splitlines()) < 1024
    texts = [
        *art["nftables"].values(),
        *art["hostNftables"].values(),
        *art["bridgeNftablesByHost"].values(),
    ]
    nft_check_many(texts, tmp_path)
    for text in texts:
        for name in re.findall(r"^\s*(?:table \w+|set|chain) (\S+) \{", text, re.MULTILINE):
            assert len(name) <= 255
        for ifname in re.findall(r'"([^"]*)" \.', text):
            assert len(ifname) <= 15
        for c in re.findall(r'comment "([^"]*)"', text):
            assert len(c.encode()) <= 128
    assert max(len(d["name"]) for d in plan["databases"]) == 63
    assert max(len(line) for line in art["pgHba"].splitlines()) < 10240


def test_the_inventory_refuses_names_past_those_limits(tmp_path: Path) -> None:
    inv = longest(4)
    app = next(g for n, g in inv["guests"].items() if n.startswith(NAME))
    app["databases"][0]["name"] = "d" * 64
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    problems = check_inventory(path)
    assert any("databases[0].name" in p for p in problems), problems


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed")
def test_dnsmasq_cuts_a_line_at_1024_bytes(tmp_path: Path) -> None:
    """Why the line limit matters: the rest of a longer line is read as an option."""
    conf = tmp_path / "split.conf"
    conf.write_text("# " + "x" * 1030 + "\n")
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={conf}"], check=False, capture_output=True, text=True
    )
    assert out.returncode != 0 and "line 2" in out.stderr, out.stderr
    conf.write_text("# " + "x" * 1000 + "\n")
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={conf}"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
