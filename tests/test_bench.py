"""bench/: the generated inventories stay valid, so the benchmarks measure a real plan."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import tomli_w
from artifact_checks import (
    PG_BIN,
    check_rendered,
    nft_check_many,
    pg_hba_check,
    require_programs,
    wireguard_check,
)
from conftest import REPO, requires_nix

from homestack.plan import check_inventory, load_plan


def _bench_plan() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plan", Path(REPO / "bench" / "plan.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_nix
def test_plan_benchmark_inventory_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(_bench_plan().inventory(12)))
    assert check_inventory(path) == []


@requires_nix
def test_plan_of_100_guests_passes_every_program(tmp_path: Path) -> None:
    """What bench/plan.py checks at 10 to 1,000 guests, at 100: every rendered file through
    the program that reads it (nft -c, caddy adapt, dnsmasq --test, PostgreSQL's hba parser,
    wg-quick strip and wg setconf)."""
    require_programs()
    if os.geteuid() != 0 or shutil.which("wg-quick") is None or not PG_BIN.exists():
        pytest.skip("needs root, wireguard-tools and postgresql-15 (scripts/bootstrap)")
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(_bench_plan().inventory(100)))
    plan = load_plan(path)
    work = tmp_path / "work"
    work.mkdir()
    # 100 guests' rule sets, the hypervisor's and the relay's, one bridge filter, the
    # Caddyfile, dnsmasq, pg_hba.conf and both ends of the tunnel.
    assert check_rendered(plan, work, pg=True) == 100 + 2 + 1 + 1 + 1 + 1 + 2
    # Two local lines, one per database, the final reject.
    assert pg_hba_check(plan["artifacts"]["pgHba"]) == 2 + 98 + 1


def test_artifact_checks_reject_what_their_programs_reject(tmp_path: Path) -> None:
    """The checks fail, with the program's own words, on a file the program refuses."""
    require_programs()
    with pytest.raises(AssertionError, match="comment too long"):
        nft_check_many(["table inet t {\n\tchain c {\n\t\taccept comment \"" + "x" * 129 +
                        "\"\n\t}\n}\n"], tmp_path)  # fmt: skip
    if os.geteuid() == 0 and PG_BIN.exists():
        with pytest.raises(AssertionError, match="line 2: end-of-line before role"):
            pg_hba_check("local all all peer\nhost bogus\n")
    if shutil.which("wg-quick") is not None:
        with pytest.raises(AssertionError, match="Line unrecognized"):
            wireguard_check("[Interface]\nListenPort = 51820\nBogus = 1\n", tmp_path)
        with pytest.raises(AssertionError, match=r"Address 10\.99\.0\.300/24"):
            wireguard_check("[Interface]\nAddress = 10.99.0.300/24\n", tmp_path)
