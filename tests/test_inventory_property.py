"""Property: whatever an inventory holds, Homestack either rejects it with a clean list of
errors, or accepts it and renders artifacts the real programs accept.

The frozen example is mutated at random: keys deleted, values replaced by other types
(TOML datetimes, floats, huge and negative integers, strings with newlines, quotes, braces,
NUL, non-ASCII characters, option-like text), addresses duplicated, guests and hosts
renamed to reserved words. Then, through the public API and the CLI:

- `homestack.plan.load_plan` raises `UserError` whose message is one `FILE: KEY: message`
  line (KEY a dotted inventory path), or returns a plan whose Caddyfile passes
  `caddy adapt`, dnsmasq config `dnsmasq --test` and every nftables rule set `nft -c`;
- `tools inventory check FILE` exits 2 with only such lines (and its closing
  `error: FILE: N problem(s)`), or 0; never a traceback or Nix's own trace;
- both agree on whether the inventory is valid;
- an accepted inventory holds no NUL character (Nix would cut the string there) and no
  host `target` that ssh would read as an option.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w
from artifact_checks import check_rendered, require_programs
from conftest import EXAMPLE, requires_nix
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from homestack.errors import CheckFailed, UserError
from homestack.plan import load_plan

pytestmark = requires_nix

TOOLS = str(Path(sys.executable).with_name("tools"))
EXAMPLE_DATA: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())

Key = str | int
Path_ = tuple[Key, ...]

# -- what the mutations put in ---------------------------------------------------------------
RESERVED = ("lan", "guests", "root", "postgres", "all")
STRINGS = st.one_of(
    st.sampled_from([
        "", " ", "two words", "line\nbreak", 'a "quoted" word', "it's", "{braces}", "${x}",
        "\x00", "nul\x00inside", "tab\there", "ünïcödé", "日本語", "-oProxyCommand=x",
        "--help", "../../etc/passwd", "*", "a;b", "$(reboot)", "192.168.100.10",
        "0.0.0.0/0", "::1", "lan", "guests", "root", "postgres", "all",
    ]),
    st.text(max_size=12),
)  # fmt: skip
INTEGERS = st.one_of(
    st.sampled_from([0, -1, -65536, 65536, 2**31, 2**63 - 1, -(2**63), 10**12]),
    st.integers(-(10**6), 10**6),
)
DATETIMES = st.one_of(  # TOML's four date and time types
    st.datetimes(timezones=st.none() | st.just(dt.UTC)), st.dates(), st.times()
)
SCALARS = st.one_of(STRINGS, INTEGERS, st.floats(), st.booleans(), DATETIMES)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["port", "name", "from", "x"]), SCALARS, max_size=2),
)


def paths(node: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every key path below ``node``: table keys and list indices."""
    items: list[tuple[Key, Any]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def parent(data: dict[str, Any], path: Path_) -> Any:
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    return node


def mutate(data: dict[str, Any], draw: st.DrawFn) -> list[str]:
    """Applies one random mutation to ``data`` in place; returns what it did, for the report."""
    kind = draw(st.sampled_from(["delete", "replace", "replace", "duplicate", "rename"]))
    guests = sorted(data.get("guests") or {}) if isinstance(data.get("guests"), dict) else []
    if kind == "duplicate" and len(guests) >= 2:
        a, b = draw(st.permutations(guests))[:2]
        first, second = data["guests"][a], data["guests"][b]
        if isinstance(first, dict) and isinstance(second, dict) and "address" in second:
            first["address"] = second["address"]
            return [f"guests.{a}.address = guests.{b}.address"]
    if kind == "rename":
        tables = [t for t in ("guests", "hosts") if isinstance(data.get(t), dict) and data[t]]
        if tables:
            table = draw(st.sampled_from(tables))
            old = draw(st.sampled_from(sorted(data[table])))
            new = draw(st.sampled_from(RESERVED))
            data[table][new] = data[table].pop(old)
            return [f"{table}.{old} renamed to {new}"]
    every = list(paths(data))
    if not every:
        return []
    path = draw(st.sampled_from(every))
    node = parent(data, path)
    label = ".".join(str(k) for k in path)
    if kind == "delete":
        del node[path[-1]]
        return [f"deleted {label}"]
    value = draw(VALUES)
    node[path[-1]] = value
    return [f"{label} = {value!r}"]


class Mutated:
    """A mutated inventory; shown as its mutations, so a failing case reads in one line."""

    def __init__(self, data: dict[str, Any], done: list[str]) -> None:
        self.data, self.done = data, done

    def __repr__(self) -> str:
        return f"example with {'; '.join(self.done) or 'no change'}"


@st.composite
def inventories(draw: st.DrawFn) -> Mutated:
    data = copy.deepcopy(EXAMPLE_DATA)
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        done += mutate(data, draw)
    return Mutated(data, done)


# -- what a clean rejection looks like -------------------------------------------------------
SEGMENT = r'(?:[A-Za-z0-9_-]+|"[^"\n]*")(?:\[\d+\])*'
KEY = rf"{SEGMENT}(?:\.{SEGMENT})*"
LINE = re.compile(rf"(?P<file>\S*inventory\.toml): (?P<key>{KEY}): (?P<message>\S.*)")
SUMMARY = re.compile(r"error: \S*inventory\.toml: \d+ problem\(s\)")
TRACE = re.compile(r"while evaluating|attribute '[^']*' missing|error:|stack trace|Traceback")


def assert_clean_line(line: str) -> None:
    match = LINE.fullmatch(line)
    assert match, f"not `FILE: KEY: message`: {line!r}"
    assert not TRACE.search(match["message"]), f"Nix or Python trace text: {line!r}"


def check_cli(path: Path) -> int:
    """`tools inventory check`: exit 0, or 2 with clean lines only; returns the exit code."""
    result = subprocess.run([TOOLS, "inventory", "check", str(path)],
                            check=False, capture_output=True, text=True)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode in (0, 2), f"exit {result.returncode}:\n{output}"
    assert "Traceback" not in output, output
    if result.returncode == 2:
        lines = result.stderr.splitlines()
        assert lines and SUMMARY.fullmatch(lines[-1]), f"no closing summary:\n{result.stderr}"
        assert lines[:-1], f"no problem named:\n{result.stderr}"
        for line in lines[:-1]:
            assert_clean_line(line)
    return result.returncode


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=inventories())
def test_an_inventory_is_rejected_cleanly_or_renders(case: Mutated) -> None:
    require_programs()
    data, done = case.data, case.done
    note(f"mutations: {done}")
    with tempfile.TemporaryDirectory(prefix="homestack-prop-") as tmp:
        path = Path(tmp) / "inventory.toml"
        path.write_text(tomli_w.dumps(data))
        try:
            plan = load_plan(path)
        except CheckFailed as exc:
            assert exc.findings, f"{done}: rejected without naming a problem"
            for line in exc.findings:
                assert "\n" not in line, f"{done}: more than one line: {line!r}"
                assert_clean_line(line)
            accepted = False
        except UserError as exc:
            message = str(exc)
            assert "\n" not in message, f"{done}: more than one line: {message!r}"
            assert_clean_line(message)
            accepted = False
        else:
            # Nix cuts a string at NUL (`"nul\u0000inside"` would become `"nul"`), and
            # ssh reads a target starting with "-" as an option: neither may be accepted.
            assert "\\u0000" not in path.read_text(), f"{done}: accepted a NUL character"
            targets = [h.get("target") for h in plan["hosts"].values()]
            assert not [t for t in targets if str(t).startswith("-")], f"{done}: {targets}"
            check_rendered(plan, Path(tmp))
            accepted = True
        code = check_cli(path)
        assert (code == 0) == accepted, (
            f"{done}: load_plan {'accepted' if accepted else 'rejected'} it, "
            f"`tools inventory check` exited {code}"
        )
