"""`tools lab test --browser`: a real Chromium loads every route of the lab from the LAN.

Headless Debian Chromium trusts only the lab's root; every route must load as "secure",
and the control run without the root must fail each one with an authority error. Run for
the example (home.arpa, a public suffix: explicit names only), a domain one level deeper
(lab.home.arpa: a wildcard is valid there) and an inventory with 30 routes.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLE, requires_nix
from labenv import lab_environment, needs_the_lab, run_lab

from homestack.lab import browser, lifecycle
from homestack.lab.state import LabPaths
from homestack.lab.topology import Topology
from homestack.plan import load_plan
from homestack.process import Runner

PREFIX = f"hsb{os.getpid()}-"
pytestmark = [
    requires_nix,
    *needs_the_lab(
        "chromium",
        "certutil",
        reason="the lab's daemons, chromium or certutil (libnss3-tools) missing",
    ),
]
AUTHORITY = "net::ERR_CERT_AUTHORITY_INVALID"


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with lab_environment("browser-test", PREFIX) as environ:
        yield environ


def lab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_lab(env, *args, timeout=300)


def deeper(tmp_path: Path) -> Path:
    text = EXAMPLE.read_text()
    assert 'domain = "home.arpa"' in text
    path = tmp_path / "inventory.toml"
    path.write_text(text.replace('domain = "home.arpa"', 'domain = "lab.home.arpa"', 1))
    return path


def thirty_routes(tmp_path: Path) -> Path:
    text = EXAMPLE.read_text()
    one = 'routes = [{ name = "id", port = 1411 }]'
    assert text.count(one) == 1
    more = ", ".join(f'{{ name = "app{i:02}", port = 1411 }}' for i in range(1, 29))
    path = tmp_path / "inventory.toml"
    path.write_text(text.replace(one, f'routes = [{{ name = "id", port = 1411 }}, {more}]'))
    return path


@pytest.mark.parametrize("variant", ["example", "deeper", "thirty"])
def test_every_route_loads_in_chromium_and_the_control_fails(
    env: dict[str, str], tmp_path: Path, variant: str
) -> None:
    inventory = {"example": lambda _: EXAMPLE, "deeper": deeper, "thirty": thirty_routes}[variant](
        tmp_path
    )
    plan = load_plan(inventory)
    domain = plan["domain"]
    fqdns = sorted({r["fqdn"] for r in plan["routes"]})
    names = plan["certificates"]["names"]
    if variant == "deeper":
        assert f"*.{domain}" in names  # a wildcard where browsers accept one
    else:
        assert not any(n.startswith("*.") for n in names)  # never *.home.arpa
    if variant == "thirty":
        assert len(fqdns) == 30
    up = lab(env, "up", "-i", str(inventory))
    assert up.returncode == 0, up.stdout + up.stderr
    shot = tmp_path / "shot.png"
    out = lab(env, "test", "--browser", "--json", "--screenshot", str(shot))
    report = json.loads(out.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert out.returncode == 0 and failed == [], json.dumps(failed, indent=1) + out.stderr
    pages = {c["name"]: c["detail"] for c in report["checks"] if c["group"] == "browser"}
    assert sorted(p.split("/")[2] for p in pages) == fqdns
    for url, detail in pages.items():
        assert detail.startswith("loaded, HTTP 200, secure, TLS 1.3, issuer Homestack CA"), (
            url,
            detail,
        )
    control = {c["name"]: c["detail"] for c in report["checks"] if c["group"] == "browser-control"}
    assert len(control) == len(fqdns)
    assert set(control.values()) == {AUTHORITY}
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    down = lab(env, "down")
    assert down.returncode == 0, down.stderr


def test_the_old_wildcard_only_leaf_is_refused_by_chromium(env: dict[str, str]) -> None:
    """Why the leaf names every route: Chromium refuses *.home.arpa (home.arpa is a public
    suffix) even with the root trusted, while trusting the root is what it lacks without."""
    plan = load_plan(EXAMPLE)
    plan["certificates"]["names"] = ["*.home.arpa", "home.arpa"]  # the leaf committed before
    paths = LabPaths(
        root=Path(env["HOMESTACK_LAB_DIR"]),
        prefix=env["HOMESTACK_LAB_PREFIX"],
        cache=Path(env["HOMESTACK_LAB_CACHE"]),
    )
    state = lifecycle.up(plan, paths, Runner(), inventory="wildcard-only", log=lambda _: None)
    try:
        client = Topology.from_plan(plan, paths.prefix).client.netns
        root = Path(str(state.info["root"]))
        result = browser.run(plan, client, root, paths.root / "browser", Runner())
    finally:
        lifecycle.down(paths, Runner(), log=lambda _: None)
    assert [(p.url, p.error) for p in result.trusted] == [
        ("https://id.home.arpa/", "net::ERR_CERT_COMMON_NAME_INVALID"),
        ("https://vpn.home.arpa/", "net::ERR_CERT_COMMON_NAME_INVALID"),
    ]
    assert {p.error for p in result.control} == {AUTHORITY}
