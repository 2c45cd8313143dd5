"""Rendering is safe on its own: lib/render/* and lib/quote.nix fed hostile values directly,
with no validation in front, and read back by the real programs that read the artifacts.

- Caddyfile: `caddy adapt` must see exactly the routes of a harmless plan, the hostile path
  a literal matcher value, nothing added; what Caddy cannot hold literally is refused.
- pg_hba.conf and the init SQL: a throwaway PostgreSQL 15 (own network namespace, loopback
  only) reads the rendered file; its `pg_hba_file_rules` view must show the literal names,
  and real connections must match the quoted line only for that exact database and role
  (the view cannot tell a quoted `all` from the keyword; a connection can).
- dnsmasq and WireGuard have no quoting: anything outside their alphabets must be refused
  with a one-line message naming the value.
- The connection strings of the modules: libpq's own parser (PQconninfoParse) must read
  the quoted DSN and the percent-encoded URL back to the literal names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, requires_nix
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = requires_nix

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Filtered strategies are slow to draw on a busy machine; the health check would call that
# a problem of the test.
QUIET = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Pieces that mean something to one of the formats, joined with arbitrary text.
FRAGMENTS = [
    "\n", "\r", "\t", " ", "}", "{", '"', "\\", "`", "'", "#", ",", ";", "=", "@", "+", "/",
    "\x01", "\x1b", "\x7f", "é", "import", "all", "postgres", "sameuser", "samerole",
    "replication", "--", "-c", "respond 200", "{$HOME}", "{http.request.uri}", "$(id)",
]  # fmt: skip
TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=8
)
HOSTILE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), TEXT), min_size=1, max_size=4).map("".join)
EXPLICIT = [
    "all", "postgres", "sameuser", "samerole", "replication", "+postgres", "@postgres",
    "a b", "a,b", 'a"b', "a#b", "a\tb", "-c", "--help", "x\\", "a'b", "\x01x", "é",
]  # fmt: skip


def nix(expr: str, data: Any, work: Path) -> subprocess.CompletedProcess[str]:
    """Evaluate ``expr`` with ``data`` (any JSON) bound to `data` and lib/quote.nix to `q`."""
    fd, name = tempfile.mkstemp(suffix=".json", dir=work)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    full = (
        f'let data = builtins.fromJSON (builtins.readFile "{name}"); '
        f"q = import {REPO}/lib/quote.nix; render = {REPO}/lib/render; in {expr}"
    )
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode", "--expr", full],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NIX_PATH": ""},
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], label: str, value: Any) -> None:
    """A throw, as one clean line naming ``label`` and showing ``value`` (as JSON)."""
    assert result.returncode != 0, f"{value!r} was rendered: {result.stdout[:300]}"
    lines = [
        ln
        for ln in result.stderr.splitlines()
        if ln and not ln.startswith(("warning:", "(use '--show-trace'"))
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    message = lines[0]
    assert label in message, message
    start = message.index(label) + len(label)
    at = message.index(" ", start) + 1
    shown, _ = json.JSONDecoder().raw_decode(message, at)
    assert shown == value, message


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hs-render-safety-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def base(example_plan: dict[str, Any]) -> dict[str, Any]:
    """The example's plan without its artifacts: what default.nix hands the renderers."""
    return {k: v for k, v in example_plan.items() if k != "artifacts"}


# ---------------------------------------------------------------------------------------
# Caddyfile


def caddy_config(text: str, work: Path) -> dict[str, Any]:
    fd, name = tempfile.mkstemp(suffix=".Caddyfile", dir=work)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    env = {**os.environ, "XDG_CONFIG_HOME": str(work), "XDG_DATA_HOME": str(work)}
    out = subprocess.run(
        ["caddy", "adapt", "--config", name, "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert out.returncode == 0, f"caddy adapt failed: {out.stderr}\n{text}"
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def handlers(node: Any, matches: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every terminal handler of Caddy's JSON with the matchers on its way down."""
    found: list[tuple[tuple[str, ...], str]] = []
    for route in node.get("routes", []):
        match = json.dumps(route.get("match"), sort_keys=True)
        for handler in route.get("handle", []):
            if handler.get("handler") == "subroute":
                found += handlers(handler, (*matches, match))
            else:
                found.append(((*matches, match), json.dumps(handler, sort_keys=True)))
    return found


def shape(config: dict[str, Any]) -> tuple[list[Any], str]:
    """The handlers of every server (sorted: Caddy orders handle blocks by specificity) and
    everything else of the configuration."""
    servers = config["apps"]["http"]["servers"]
    found = sorted(h for s in servers.values() for h in handlers(s))
    rest = {name: {k: v for k, v in s.items() if k != "routes"} for name, s in servers.items()}
    return found, json.dumps(rest, sort_keys=True)


def replace_strings(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, str):
        return mapping.get(node, node)
    if isinstance(node, list):
        return [replace_strings(x, mapping) for x in node]
    if isinstance(node, dict):
        return {k: replace_strings(v, mapping) for k, v in node.items()}
    return node


def count_strings(node: Any, value: str) -> int:
    if isinstance(node, str):
        return int(node == value)
    if isinstance(node, list):
        return sum(count_strings(x, value) for x in node)
    if isinstance(node, dict):
        return sum(count_strings(x, value) for x in node.values())
    return 0


def with_paths(base: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The example plan with one more route on vpn.home.arpa per path."""
    vpn = next(r for r in base["routes"] if r["fqdn"] == "vpn.home.arpa")
    extra = [{**vpn, "path": p, "upstream": "192.168.100.11:33073", "h2c": False} for p in paths]
    return {**base, "routes": base["routes"] + extra}


def caddy_can_hold(path: str) -> bool:
    """What lib/quote.nix's caddy must render: no brace or line break, not both \\ and `."""
    return not re.search(r"[{}\n]", path) and not ("\\" in path and "`" in path)


requires_caddy = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy not installed")


@requires_caddy
@QUIET
@given(st.lists(HOSTILE.map(lambda s: "/" + s), min_size=1, max_size=8, unique=True))
@example(["/a b", '/q"x', "/b\\s", "/t`ick", "/#c", "/\tt", "/\rr", "/x\n", "/{$HOME}"])
def test_caddy_paths_stay_literal_matchers(
    base: dict[str, Any], work: Path, paths: list[str]
) -> None:
    taken = {r["path"] for r in base["routes"]}
    paths = [p for p in paths if p not in taken]
    held = [p for p in paths if caddy_can_hold(p)]
    refused_paths = [p for p in paths if not caddy_can_hold(p)]
    # Those Caddy cannot hold literally are refused, each one alone.
    tried = ok(
        nix(
            'map (p: (builtins.tryEval (import (render + "/caddy.nix") p)).success) data',
            [with_paths(base, [p]) for p in refused_paths],
            work,
        )
    )
    assert tried == [False] * len(refused_paths)
    if not held:
        return
    placeholders = {p: f"/placeholder-{i}" for i, p in enumerate(held)}
    hostile, harmless = ok(
        nix(
            'map (import (render + "/caddy.nix")) data',
            [with_paths(base, held), with_paths(base, list(placeholders.values()))],
            work,
        )
    )
    got = caddy_config(hostile, work)
    for p in held:
        assert count_strings(got, p) == 1, f"{p!r} is not one literal value in Caddy's JSON"
    # Put back the harmless names: then it must be the harmless plan's config exactly.
    assert shape(replace_strings(got, placeholders)) == shape(caddy_config(harmless, work))


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        ("path", "/a{$HOME}", "path"),
        ("path", "/x}\n\trespond 200", "path"),
        ("path", "/a\\`b", "path"),
        ("path", "api", "path"),
        ("path", "*", "path"),
        ("fqdn", "evil.home.arpa {\n\trespond 200\n}\nx", "route name"),
        ("fqdn", "(snippet)", "route name"),
        ("fqdn", "a.home.arpa, b.home.arpa", "route name"),
        ("fqdn", "-x.home.arpa", "route name"),
        ("upstream", "192.168.100.11:8080\n\trespond 200", "upstream"),
        ("upstream", "{http.request.header.X}:80", "upstream"),
        ("upstream", "unix//run/x.sock", "upstream"),
    ],
)
def test_caddy_refuses_what_it_cannot_quote(
    base: dict[str, Any], work: Path, field: str, value: str, label: str
) -> None:
    routes = [dict(r) for r in base["routes"]]
    target = next(r for r in routes if r["path"] != "/")
    target[field] = value
    plan = {**base, "routes": routes}
    if field == "fqdn":
        plan["certificates"] = {**base["certificates"], "routeNames": [r["fqdn"] for r in routes]}
    refused(nix('import (render + "/caddy.nix") data', plan, work), label, value)


@requires_caddy
def test_caddy_proxy_address_is_checked(base: dict[str, Any], work: Path) -> None:
    guests = {**base["guests"], "proxy": {**base["guests"]["proxy"], "address": "1.2.3.4 x"}}
    refused(
        nix('import (render + "/caddy.nix") data', {**base, "guests": guests}, work),
        "guests.proxy.address",
        "1.2.3.4 x",
    )


# ---------------------------------------------------------------------------------------
# PostgreSQL: pg_hba.conf and the init SQL in a real PostgreSQL 15


@dataclass
class Postgres:
    root: Path
    ns: str
    pid: int  # the postmaster's (runuser stays its parent)

    @property
    def hba(self) -> Path:
        return self.root / "hba.conf"

    def sql(self, query: str, *, script: bool = False) -> str:
        """Run SQL as the superuser over the Unix socket (peer, as the rendered hba says);
        a script goes through psql's own reader on standard input, as `psql -f` would."""
        args = ["-f", "-"] if script else ["-c", query]
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-X", "-q", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-d", "postgres", *args],
            input=query if script else None, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def load(self, text: str) -> list[dict[str, Any]]:
        """Install ``text`` as pg_hba.conf and reload; the rules PostgreSQL read from it."""
        self.hba.write_text(text)
        rules = json.loads(
            self.sql("SELECT json_agg(r ORDER BY line_number) FROM pg_hba_file_rules r")
        )
        before = self.sql("SELECT pg_conf_load_time()")
        os.kill(self.pid, signal.SIGHUP)
        for _ in range(200):
            # The postmaster rereads the configuration and the hba in one SIGHUP handler and
            # forks sessions only outside it: a session that sees a new time has the new rules.
            if self.sql("SELECT pg_conf_load_time()") != before:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("PostgreSQL did not reload its configuration")
        return list(rules)

    def login(self, user: str, database: str) -> str:
        """What a network login from 127.0.0.1 meets: "password" or "reject"."""
        env = {**os.environ, "PGUSER": user, "PGDATABASE": database, "PGCONNECT_TIMEOUT": "5"}
        env.pop("PGPASSWORD", None)
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, str(PG_BIN / "psql"), "-X", "-w",
             "-h", "127.0.0.1", "-p", "5432", "-c", "SELECT 1"],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        if "no password supplied" in out.stderr:
            return "password"
        if "pg_hba.conf rejects connection" in out.stderr:
            return "reject"
        raise AssertionError(f"unexpected answer for {user!r}@{database!r}: {out.stderr}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if os.geteuid() != 0 or not (PG_BIN / "postgres").exists() or shutil.which("ip") is None:
        pytest.skip("needs root (a network namespace) and Debian's postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="hs-render-pg-"))
    shutil.chown(root, "postgres", "postgres")
    ns = f"hs-render-{os.getpid()}"
    proc = None
    try:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(root / "data"),
             "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-A", "peer"],
            check=True, capture_output=True,
        )  # fmt: skip
        (root / "hba.conf").write_text("local all postgres peer\n")
        shutil.chown(root / "hba.conf", "postgres", "postgres")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        options = {
            "listen_addresses": "127.0.0.1",
            "port": "5432",
            "unix_socket_directories": str(root),
            "hba_file": str(root / "hba.conf"),
            "fsync": "off",
            "shared_buffers": "16MB",
            "max_connections": "20",
            "logging_collector": "off",
            "password_encryption": "scram-sha-256",
        }
        args = [a for k, v in options.items() for a in ("-c", f"{k}={v}")]
        with (root / "log").open("wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "runuser", "-u", "postgres", "--",
                 str(PG_BIN / "postgres"), "-D", str(root / "data"), *args],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        for _ in range(200):
            ready = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(root)], check=False)
            if ready.returncode == 0:
                break
            assert proc.poll() is None, (root / "log").read_text()
            time.sleep(0.05)
        else:
            raise AssertionError(f"PostgreSQL did not start: {(root / 'log').read_text()}")
        pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
        yield Postgres(root, ns, pid)
    finally:
        if proc is not None:
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                 str(root / "data"), "-m", "immediate", "stop"],
                check=False, capture_output=True,
            )  # fmt: skip
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def hba_plan(base: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """One database per (name, role) on the server "db", its owner at 127.0.0.1."""
    template = base["databases"][0]
    dbs = [{**template, "name": n, "role": r, "ownerAddress": "127.0.0.1"} for n, r in pairs]
    return {**base, "databases": dbs}


def _noncharacter(c: str) -> bool:
    """Unicode noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF): PostgreSQL's
    pg_hba_file_rules view shows a name made of them as "", so the oracle cannot read
    them back (the renderer still writes them as they are; lib never accepts them)."""
    o = ord(c)
    return 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE


def pg_can_hold(name: str) -> bool:
    """What lib/quote.nix's pgHbaName must render: one line, not empty."""
    return (
        name != ""
        and "\n" not in name
        and "\r" not in name
        and not any(_noncharacter(c) for c in name)
    )


def check_hba(pg: Postgres, text: str, name: str, role: str) -> None:
    rules = pg.load(text)
    assert [r["error"] for r in rules] == [None] * len(rules), rules
    host = [r for r in rules if r["type"] == "host"]
    assert [(r["database"], r["user_name"], r["address"], r["auth_method"]) for r in host] == [
        ([name], [role], "127.0.0.1", "scram-sha-256"),
        (["all"], ["all"], "0.0.0.0", "reject"),  # noqa: S104 (an hba address, nothing binds)
    ]
    # The view shows a quoted "all" and the keyword alike; logins tell them apart.
    probes = {
        (role, name),
        ("postgres", "postgres"),
        ("postgres", name),
        (role, "postgres"),
        (role, role),
        (name, name),
        ("nobody", "template1"),
    }
    for user, database in sorted(probes):
        expected = "password" if (user, database) == (role, name) else "reject"
        assert pg.login(user, database) == expected, (user, database, text)


def render_hba(base: dict[str, Any], work: Path, pairs: list[tuple[str, str]]) -> list[str]:
    texts: list[str] = ok(
        nix(
            'map (p: (import (render + "/postgresql.nix")).hba p "db") data',
            [hba_plan(base, [pair]) for pair in pairs],
            work,
        )
    )
    return texts


@pytest.mark.parametrize("name", EXPLICIT)
def test_pg_hba_keywords_and_specials_are_literal(
    postgres: Postgres, base: dict[str, Any], work: Path, name: str
) -> None:
    (text,) = render_hba(base, work, [(name, name)])
    check_hba(postgres, text, name, name)


def test_pg_hba_database_all_is_not_every_database(
    postgres: Postgres, base: dict[str, Any], work: Path
) -> None:
    """The case that once let a guest log in to every database as the superuser."""
    (text,) = render_hba(base, work, [("all", "postgres")])
    check_hba(postgres, text, "all", "postgres")
    assert postgres.login("postgres", "template1") == "reject"


NAMES = HOSTILE.filter(lambda s: pg_can_hold(s) and len(s.encode()) <= 63)


@settings(QUIET, max_examples=8)  # seven logins per pair
@given(st.lists(st.tuples(NAMES, NAMES), min_size=1, max_size=3))
@example([("all", "postgres"), ("replication", "all"), ("sameuser", "+postgres")])
def test_pg_hba_hostile_names(
    postgres: Postgres, base: dict[str, Any], work: Path, pairs: list[tuple[str, str]]
) -> None:
    for (name, role), text in zip(pairs, render_hba(base, work, pairs), strict=True):
        check_hba(postgres, text, name, role)


@pytest.mark.parametrize("name", ["a\nhost all all 0.0.0.0/0 trust", "x\r", ""])
def test_pg_hba_refuses_what_one_line_cannot_hold(
    base: dict[str, Any], work: Path, name: str
) -> None:
    plan = hba_plan(base, [(name, "r")])
    refused(nix('(import (render + "/postgresql.nix")).hba data "db"', plan, work), "name", name)


def test_pg_hba_refuses_a_bad_address(base: dict[str, Any], work: Path) -> None:
    plan = hba_plan(base, [("d", "r")])
    plan["databases"][0]["ownerAddress"] = "0.0.0.0/0 trust\nhost"
    refused(
        nix('(import (render + "/postgresql.nix")).hba data "db"', plan, work),
        "owner address",
        "0.0.0.0/0 trust\nhost",
    )


@settings(QUIET, max_examples=4)  # CREATE DATABASE takes a while
@given(
    st.lists(
        HOSTILE.filter(lambda s: len(s.encode()) <= 63 and not s.startswith("pg_")),
        min_size=1,
        max_size=3,
        unique=True,
    )
)
def test_init_sql_creates_exactly_the_named_roles_and_databases(
    postgres: Postgres, base: dict[str, Any], work: Path, names: list[str]
) -> None:
    names = [n for n in names if n not in ("postgres", "template0", "template1")]
    if not names:
        return
    sql = ok(
        nix(
            '(import (render + "/postgresql.nix")).init data "db"',
            hba_plan(base, [(n, n) for n in names]),
            work,
        )
    )
    postgres.sql(sql, script=True)
    try:
        roles = json.loads(
            postgres.sql(
                "SELECT coalesce(json_agg(rolname), '[]') FROM pg_roles "
                "WHERE rolname <> 'postgres' AND rolname NOT LIKE 'pg\\_%'"
            )
        )
        dbs = json.loads(
            postgres.sql(
                "SELECT coalesce(json_agg(datname), '[]') FROM pg_database "
                "WHERE datname NOT IN ('postgres', 'template0', 'template1')"
            )
        )
        assert sorted(roles) == sorted(names) and sorted(dbs) == sorted(names)
    finally:
        for n in names:
            ident = '"' + n.replace('"', '""') + '"'
            postgres.sql(f"DROP DATABASE IF EXISTS {ident}")
            postgres.sql(f"DROP ROLE IF EXISTS {ident}")


# ---------------------------------------------------------------------------------------
# dnsmasq and WireGuard: no quoting, so only their alphabets pass

DNS_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def dns_plan(base: dict[str, Any], name: str, address: str = "192.168.100.2") -> dict[str, Any]:
    dns = [*base["dns"], {"name": name, "address": address, "kind": "route"}]
    return {**base, "dns": dns, "dnsGuestNames": ["proxy"]}


@QUIET
@given(
    st.lists(
        st.one_of(HOSTILE, st.from_regex(DNS_NAME, fullmatch=True).filter(lambda s: len(s) <= 253)),
        min_size=1,
        max_size=10,
    )
)
def test_dnsmasq_renders_dns_names_and_refuses_the_rest(
    base: dict[str, Any], work: Path, names: list[str]
) -> None:
    results = ok(
        nix(
            'map (p: let r = builtins.tryEval (import (render + "/dnsmasq.nix") p); in '
            "if r.success then r.value else null) data",
            [dns_plan(base, n) for n in names],
            work,
        )
    )
    for name, text in zip(names, results, strict=True):
        plain = DNS_NAME.fullmatch(name) is not None and len(name) <= 253
        assert (text is not None) == plain, name
        if text is not None:
            assert text.splitlines()[-1] == f"host-record={name},192.168.100.2"


@pytest.mark.parametrize(
    ("change", "label", "value"),
    [
        (
            {"name": "x.home.arpa\naddress=/#/1.2.3.4"},
            "dns name",
            "x.home.arpa\naddress=/#/1.2.3.4",
        ),
        ({"name": "-x.home.arpa"}, "dns name", "-x.home.arpa"),
        ({"address": "1.2.3.4\nserver=6.6.6.6"}, "address", "1.2.3.4\nserver=6.6.6.6"),
        ({"domain": "home.arpa/\nlocal=/"}, "domain", "home.arpa/\nlocal=/"),
    ],
)
def test_dnsmasq_refusal_names_the_value(
    base: dict[str, Any], work: Path, change: dict[str, str], label: str, value: str
) -> None:
    plan = dns_plan(
        base, change.get("name", "ok.home.arpa"), change.get("address", "192.168.100.2")
    )
    if "domain" in change:
        plan["domain"] = change["domain"]
    refused(nix('import (render + "/dnsmasq.nix") data', plan, work), label, value)


def test_dnsmasq_example_still_passes_dnsmasq(base: dict[str, Any], work: Path) -> None:
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed")
    text = ok(
        nix('import (render + "/dnsmasq.nix") data', {**base, "dnsGuestNames": ["proxy"]}, work)
    )
    path = work / "dnsmasq.conf"
    path.write_text(text)
    out = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={path}"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "syntax check OK" in out.stderr, out.stderr


WG_FIELDS = [
    (("publicKey",), "hosts.cloud-relay.wireguard.public_key"),
    (("peer", "publicKey"), "hosts.homelab.wireguard.public_key"),
    (("address",), "hosts.cloud-relay.wireguard.address"),
    (("peer", "address"), "hosts.homelab.wireguard.address"),
    (("publicAddress",), "hosts.cloud-relay.public_address"),
    (("host",), "relay host"),
    (("peer", "host"), "relay peer host"),
]


@pytest.mark.parametrize(("field", "label"), WG_FIELDS, ids=[".".join(f) for f, _ in WG_FIELDS])
@pytest.mark.parametrize(
    "value",
    [
        "bXf8BWhoPhtkyXpn8BnuiPzmRTb9Fpo5yeEq+pUSvjw=\nEndpoint = 6.6.6.6:1",
        "10.99.0.1\n[Peer]",
        "a b",
        "x#",
        "",
    ],
)
def test_wireguard_refuses_values_outside_their_alphabet(
    base: dict[str, Any], work: Path, field: tuple[str, ...], label: str, value: str
) -> None:
    relay = json.loads(json.dumps(base["relay"]))
    target = relay
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    refused(
        nix(
            '(import (render + "/wireguard.nix") data).homeText + '
            '(import (render + "/wireguard.nix") data).relayText',
            {**base, "relay": relay},
            work,
        ),
        label,
        value,
    )


def test_wireguard_refuses_a_bad_allowed_ip_and_port(base: dict[str, Any], work: Path) -> None:
    relay = json.loads(json.dumps(base["relay"]))
    relay["peer"]["allowedIPs"] = ["10.99.0.2/32\nEndpoint = 6.6.6.6:1"]
    refused(
        nix('(import (render + "/wireguard.nix") data).relayText', {**base, "relay": relay}, work),
        "allowed IPs",
        "10.99.0.2/32\nEndpoint = 6.6.6.6:1",
    )
    relay = json.loads(json.dumps(base["relay"]))
    relay["port"] = 70000
    refused(
        nix('(import (render + "/wireguard.nix") data).homeText', {**base, "relay": relay}, work),
        "port",
        70000,
    )


def test_wireguard_example_is_unchanged(
    base: dict[str, Any], example_plan: dict[str, Any], work: Path
) -> None:
    assert (
        ok(nix('import (render + "/wireguard.nix") data', base, work))
        == example_plan["artifacts"]["wireguard"]
    )


# ---------------------------------------------------------------------------------------
# Connection strings (modules/services/pocket-id.nix, netbird-server.nix) read by libpq


class _Option(ctypes.Structure):
    _fields_ = [
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    ]


def conninfo(text: str) -> dict[str, str]:
    """libpq's own reading of a connection string (PQconninfoParse)."""
    name = ctypes.util.find_library("pq")
    if name is None:
        pytest.skip("libpq not installed")
    libpq = ctypes.CDLL(name)
    libpq.PQconninfoParse.restype = ctypes.POINTER(_Option)
    libpq.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    error = ctypes.c_char_p()
    options = libpq.PQconninfoParse(text.encode(), ctypes.byref(error))
    assert options, f"libpq cannot parse {text!r}: {error.value!r}"
    found = {}
    i = 0
    while options[i].keyword is not None:
        if options[i].val is not None:
            found[options[i].keyword.decode()] = options[i].val.decode()
        i += 1
    libpq.PQconninfoFree(options)
    return found


LIBPQ_NAMES = HOSTILE.filter(lambda s: all(ord(c) < 128 for c in s))


@QUIET
@given(st.lists(LIBPQ_NAMES, min_size=2, max_size=6))
@example(["a b", "x' host=evil", "\\", "q?x=1&y", "@:/#%"])
def test_dsn_and_url_read_back_as_the_literal_names(work: Path, names: list[str]) -> None:
    """The quoting the modules use for NetBird's DSN and PocketID's URL, read by libpq."""
    pairs = list(zip(names[::2], names[1::2], strict=False))
    texts = ok(
        nix(
            'map (p: { dsn = "host=${q.libpq "192.168.100.20"} port=5432 user=${q.libpq p.role} '
            'password=${q.libpq "pw"} dbname=${q.libpq p.name} sslmode=disable"; '
            'url = "postgres://${q.url "role" p.role}:pw@192.168.100.20:5432/'
            '${q.url "name" p.name}?sslmode=disable"; }) data',
            [{"role": r, "name": n} for r, n in pairs],
            work,
        )
    )
    for (role, name), text in zip(pairs, texts, strict=True):
        for form in (text["dsn"], text["url"]):
            got = conninfo(form)
            assert (got["user"], got["dbname"], got["host"], got["port"], got["sslmode"]) == (
                role,
                name,
                "192.168.100.20",
                "5432",
                "disable",
            ), form
            assert "\n" not in text["url"]


def test_url_refuses_what_it_cannot_encode(work: Path) -> None:
    refused(nix('q.url "databases.x role" data', "é", work), "databases.x role", "é")


def test_systemd_env_value_refuses_a_line_break(work: Path) -> None:
    refused(nix('q.systemdEnv "DSN" data', "a\nB=1", work), "DSN", "a\nB=1")
    assert ok(nix('q.systemdEnv "DSN" data', "a\\'b", work)) == "a\\\\'b"
