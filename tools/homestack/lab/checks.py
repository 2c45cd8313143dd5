"""`tools lab test`: names, TLS, the whole allow matrix under each filter layer, and logins.

Everything is checked from where a user would stand: DNS and HTTPS from the LAN client,
flows from every machine, database logins from every guest.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.lab import acme, firewall, matrix, probes
from homestack.lab.lifecycle import all_ports
from homestack.lab.matrix import ModeResult
from homestack.lab.state import LabPaths, LabState, load_state, save_state
from homestack.lab.topology import Machine, Topology
from homestack.process import Runner

MODES = (firewall.Mode.GUEST, firewall.Mode.BRIDGE, firewall.Mode.BOTH)
OUTSIDE_NAME = "outside.homestack-lab.example"


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    matrix: dict[str, list[matrix.FlowResult]] = field(default_factory=dict)
    seconds: float = 0.0
    sweeps: dict[str, ModeResult] = field(default_factory=dict)  # how each mode was probed

    @property
    def failures(self) -> int:
        return sum(not c.ok for c in self.checks) + sum(
            not r.ok for rs in self.matrix.values() for r in rs
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.failures == 0,
            "failures": self.failures,
            "seconds": round(self.seconds, 2),
            "matrix_seconds": {k: round(v.seconds, 3) for k, v in self.sweeps.items()},
            "checks": [asdict(c) for c in self.checks],
            "matrix": {
                mode: [
                    {
                        **asdict(r.flow),
                        "allowed": r.allowed,
                        "outcome": r.outcome,
                        "ok": r.ok,
                        "gap": r.gap,
                    }
                    for r in rs
                ]
                for mode, rs in self.matrix.items()
            },
        }


def run(plan: dict[str, Any], paths: LabPaths, runner: Runner, *, strict: bool = False) -> Report:
    """Run every check. ``strict``: a flow no guest takes part in (the LAN or the tunnel to
    the hypervisor and beyond) must be blocked even when only the guests' firewalls filter."""
    state = load_state(paths)
    if state is None or not state.complete:
        raise UserError("tools lab test: no lab is up (run `tools lab up` first)")
    topo = Topology.from_plan(plan, paths.prefix)
    if set(topo.namespaces) != set(state.namespaces):
        raise UserError(
            "tools lab test: the running lab was built from another inventory; "
            "run `tools lab up` again"
        )
    started = time.monotonic()
    report = Report()
    cafile = str(state.info["root"])
    passwords = json.loads(Path(str(state.info["passwords"])).read_text())
    ports = all_ports(plan)
    rules = firewall.rulesets(plan, topo)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        front = _front_door(pool, plan, topo, cafile)
        report.checks += [f.result() for f in front]
        if acme.enabled(plan):  # certificate, TXT clean-up, one renewal (it restarts Caddy)
            report.checks += [
                Check("acme", name, ok, detail)
                for name, ok, detail in acme.check(plan, paths, runner, topo, state)
            ]
            state = load_state(paths) or state
        try:
            for mode in MODES:
                firewall.apply_mode(runner, rules, mode)
                state = _record_mode(paths, state, mode)
                # The matrix first, on its own: its verdicts are about time, and the logins'
                # psql processes would compete with it for this process and the CPUs.
                swept = matrix.check_mode(topo, plan, ports, mode, strict=strict)
                report.matrix[mode.value] = swept.results
                report.sweeps[mode.value] = swept
                report.checks.append(_sweep_check(mode, swept))
                if mode is firewall.Mode.BOTH:
                    layer = "firewalls and pg_hba"
                    report.checks += [
                        f.result()
                        for f in _logins(pool, plan, topo, runner, passwords=passwords, layer=layer)
                    ]
            firewall.apply_mode(runner, rules, firewall.Mode.NONE)
            state = _record_mode(paths, state, firewall.Mode.NONE)
            report.checks += [
                f.result()
                for f in _logins(
                    pool, plan, topo, runner, passwords=passwords, layer="pg_hba alone"
                )
            ]
        finally:
            firewall.apply_mode(runner, rules, firewall.Mode.BOTH)
            _record_mode(paths, state, firewall.Mode.BOTH)
    report.seconds = time.monotonic() - started
    return report


# Threads for the front door's checks and the logins (the matrix runs in its own loop).
WORKERS = 64


def _sweep_check(mode: firewall.Mode, swept: matrix.ModeResult) -> Check:
    """Whether the kernel dropped packets on its own while the matrix was probed (a leak
    could then have looked blocked); see sweep."""
    probed = sum(len(s.outcomes) for s in swept.sweeps)
    first = swept.sweeps[0]
    name = f"{mode.value}: {probed} probes, up to {first.window} at once"
    lost = swept.lost
    if not lost:
        runs = sum(s.runs for s in swept.sweeps) - len(swept.sweeps)
        again = f"; {runs} sweep(s) run again with fewer at once" if runs else ""
        return Check("matrix", name, True, f"no packet dropped by the kernel itself{again}")
    what = ", ".join(f"{k} +{v}" for k, v in sorted(lost.items()))
    return Check("matrix", name, False, f"the kernel dropped packets on its own: {what}")


def _record_mode(paths: LabPaths, state: LabState, mode: firewall.Mode) -> LabState:
    new = replace(state, mode=mode.value)
    save_state(paths, new)
    return new


def _front_door(
    pool: ThreadPoolExecutor, plan: dict[str, Any], topo: Topology, cafile: str
) -> list[Future[Check]]:
    """DNS for every name, HTTPS for every route with our root and without it."""
    server = topo.dns_server
    proxy = topo.proxy
    client = topo.client.netns
    jobs: list[Future[Check]] = []
    if server is None:
        return jobs
    expected: dict[str, set[str]] = {}
    for rec in plan.get("dns", []):
        expected.setdefault(rec["name"], set()).add(rec["address"])
    route_names = sorted({r["fqdn"] for r in plan.get("routes", [])})
    for name in route_names:  # a route name must lead to the proxy and nowhere else
        if proxy is not None:
            expected[name] = {proxy.address}

    def dns(name: str, want: set[str]) -> Check:
        try:
            ans = probes.resolve(client, server, name)
        except OSError as exc:
            return Check("dns", name, False, f"no answer: {exc}")
        ok = set(ans.addresses) == want
        return Check(
            "dns",
            name,
            ok,
            f"{', '.join(ans.addresses) or 'nothing'}"
            + ("" if ok else f" (expected {', '.join(sorted(want))})"),
        )

    def outside() -> Check:
        try:
            ans = probes.resolve(client, server, OUTSIDE_NAME)
        except OSError as exc:
            return Check("dns", OUTSIDE_NAME, True, f"no answer ({exc})")
        ok = not ans.addresses
        return Check(
            "dns",
            OUTSIDE_NAME,
            ok,
            "not resolved, nothing forwarded upstream"
            if ok
            else f"resolved to {ans.addresses}: the proxy forwards names upstream",
        )

    jobs += [pool.submit(dns, n, w) for n, w in sorted(expected.items())]
    jobs.append(pool.submit(outside))
    if proxy is None:
        return jobs

    def https(route: dict[str, Any]) -> Check:
        path = route.get("path") or "/"
        probe_path = path.replace("/*", "/lab-probe").replace("*", "-lab-probe")
        ans = probes.https_get(client, proxy.address, route["fqdn"], probe_path, cafile=cafile)
        want = f"{route['guest']}:{route['port']}"
        name = f"https://{route['fqdn']}{probe_path}"
        if not ans.ok:
            return Check("https", name, False, ans.error)
        ok = ans.status == 200 and ans.upstream in {want, ""}
        return Check(
            "https",
            name,
            ok,
            f"{ans.status} from {ans.upstream or '(real service)'}"
            + ("" if ans.upstream in {want, ""} else f", expected {want}"),
        )

    def untrusted(fqdn: str) -> Check:
        ans = probes.https_get(client, proxy.address, fqdn, "/", cafile=None)
        ok = not ans.ok and "certificate" in ans.error
        return Check(
            "https-untrusted",
            f"https://{fqdn}/ without the lab root",
            ok,
            ans.error if not ans.ok else f"accepted ({ans.status}) without our root",
        )

    jobs += [pool.submit(https, r) for r in plan.get("routes", [])]
    jobs += [pool.submit(untrusted, n) for n in route_names]
    return jobs


def _logins(
    pool: ThreadPoolExecutor,
    plan: dict[str, Any],
    topo: Topology,
    runner: Runner,
    *,
    passwords: dict[str, str],
    layer: str,
) -> list[Future[Check]]:
    """Each database's owner logs in with its role (psql); other guests are turned away by
    pg_hba before a password is asked."""
    # The lab's PostgreSQL takes 30 connections (overlay.py); a lab of many databases
    # would otherwise try more at once and read "too many clients" as a refusal.
    server_slots = threading.BoundedSemaphore(16)

    def login(src_netns: str, src: str, db: dict[str, Any]) -> Check:
        expect = src == db["owner"]
        name = f"{src} as {db['role']}@{db['name']} ({layer})"
        port = int(db.get("port", 5432))
        reach = probes.tcp(src_netns, db["serverAddress"], port, matrix.BLOCKED_TIMEOUT)
        if reach != probes.OPEN and not expect:
            # psql would wait its 2 s minimum timeout only to report the same.
            return Check("postgresql", name, True, f"blocked: no TCP connection ({reach})")
        if not expect:
            # Another guest must be turned away by pg_hba itself, before any password is
            # asked: a server that asks is one stolen password away from a login.
            with server_slots:
                hello = probes.pg_hello(
                    src_netns, db["serverAddress"], port, user=db["role"], database=db["name"]
                )
            if hello.kind == "auth":
                return Check("postgresql", name, False, "pg_hba let it through: " + hello.message)
            turned_away = hello.kind == "error" and hello.code == "28000"
            why = f"{hello.code} {hello.message}".strip()
            return Check("postgresql", name, turned_away, f"refused by pg_hba: {why}"
                         if turned_away else f"no pg_hba verdict: {why}")  # fmt: skip
        with server_slots:
            result = runner.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    src_netns,
                    "psql",
                    "-X",
                    "-w",
                    "-h",
                    db["serverAddress"],
                    "-p",
                    str(db.get("port", 5432)),
                    "-U",
                    db["role"],
                    "-d",
                    db["name"],
                    "-tAc",
                    "select current_user",
                ],
                check=False,
                timeout=15,
                env={"PGPASSWORD": passwords.get(db["role"], ""), "PGCONNECT_TIMEOUT": "2"},
            )
        got = result.returncode == 0 and result.stdout.strip() == db["role"]
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "logged in"
        why = why.split(" failed: ", 1)[-1]  # keep the server's reason, not the preamble
        if result.returncode == 0 and not got:
            why = f"logged in as {result.stdout.strip()!r}, not {db['role']!r}"
        return Check("postgresql", name, got, "logged in" if got else f"refused: {why}")

    def tried(db: dict[str, Any]) -> list[Machine]:
        # The owner and up to matrix.STRANGERS other guests: every guest for each database
        # would grow with guests x databases (812 psql runs a layer at 30 guests).
        others = [g for g in topo.guests if g.name not in {db["server"], db["owner"]}]
        keep = {db["owner"], *(g.name for g in others[: matrix.STRANGERS])}
        return [g for g in topo.guests if g.name in keep]

    return [
        pool.submit(login, g.netns, g.name, db)
        for db in plan.get("databases", [])
        for g in tried(db)
    ]


def render(report: Report, topo: Topology, plan: dict[str, Any]) -> str:
    out = []
    for group in (
        "dns",
        "https",
        "https-untrusted",
        "acme",
        "browser",
        "browser-control",
        "postgresql",
        "matrix",
    ):
        rows = [c for c in report.checks if c.group == group]
        if not rows:
            continue
        out.append(f"== {group} ==")
        width = max(len(c.name) for c in rows)
        out += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}" for c in rows]
    ports = all_ports(plan)
    titles = {
        "guest": "guest firewalls alone",
        "bridge": "hypervisor alone",
        "both": "guest firewalls and hypervisor",
    }
    for mode, results in report.matrix.items():
        bad = [r for r in results if not r.ok]
        gaps = [r for r in results if r.gap]
        opened = sum(r.outcome == probes.OPEN for r in results)
        out.append(
            f"== allow matrix, {titles.get(mode, mode)} "
            f"({len(results)} flows, {opened} open, {len(bad)} wrong) =="
        )
        out.append(matrix.table(results, topo, ports))
        out += [
            f"  FAIL {r.flow.label}: expected {'open' if r.allowed else 'blocked'}, got {r.outcome}"
            for r in bad
        ]
        if gaps:
            out.append(
                f"  note: {len(gaps)} flows marked `gap` involve no guest (the LAN or "
                "the tunnel to the hypervisor and beyond): only the hypervisor filters "
                "them, and it is off in this run (--strict counts them as failures)"
            )
    total = len(report.checks) + sum(len(rs) for rs in report.matrix.values())
    out.append(f"lab test: {total} checks, {report.failures} failed, {report.seconds:.1f} s")
    return "\n".join(out)
