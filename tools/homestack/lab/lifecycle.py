"""`up`, `down` and `status`: build the lab from a plan, and take down everything it made.

`up` writes down every namespace before creating it and every process right after starting
it; `down` stops recorded processes (checking their start time), then anything still
running inside a namespace carrying the lab's prefix, then deletes those namespaces and the
state directory. So a killed `up` is cleaned by the next `down`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.lab import acme, daemons, firewall, incus, netns, overlay, pki
from homestack.lab.state import LabPaths, LabState, Proc, load_state, save_state
from homestack.lab.topology import Machine, Topology
from homestack.process import Runner

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHM_NEEDED = 256 * 1024 * 1024  # bytes free in /dev/shm before the cluster is put there
# Services the lab runs for real; every other plan port gets a stand-in listener.
REAL_SERVICES = frozenset({"caddy", "dnsmasq", "postgresql"})
STANDIN_NAMES = {"pocket-id": "PocketID", "netbird-server": "NetBird"}


@dataclass
class _Recorder:
    """Adds processes to the state file as they start (threads start daemons in parallel)."""

    paths: LabPaths
    state: LabState
    lock: threading.Lock

    def add(self, started: daemons.Started, role: str, machine: Machine, label: str = "") -> None:
        with self.lock:
            self.state = self.state.with_proc(
                Proc(started.pid, started.start, role, machine.netns, label)
            )
            save_state(self.paths, self.state)

    def start(
        self,
        machine: Machine,
        args: list[str],
        *,
        role: str,
        name: str,
        sockets: list[tuple[str, int]],
        log: Path,
        label: str = "",
        user: str | None = None,
        bind_low_ports: bool = False,
        own_ipc: bool = False,
        env: dict[str, str] | None = None,
    ) -> daemons.Started:
        """Start a daemon in ``machine``'s namespace, record it, and wait until ``sockets``
        listen (``name`` says which daemon in an error)."""
        started = daemons.spawn(
            machine.netns,
            args,
            log=log,
            user=user,
            bind_low_ports=bind_low_ports,
            own_ipc=own_ipc,
            env=env,
        )
        self.add(started, role, machine, label)
        daemons.wait_listening(started, name, sockets)
        return started


def _dir(path: Path, owner: str | None = None, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        shutil.chown(path, owner, owner if owner != "dnsmasq" else None)
    return path


def up(
    plan: dict[str, Any],
    paths: LabPaths,
    runner: Runner,
    *,
    inventory: str = "",
    cold: bool = False,
    replace_other: bool = False,
    log: Callable[[str], None] = print,
    engine: str = "microvm",
) -> LabState:
    """Build the lab for ``plan``; a complete, running lab for the same inventory is kept.

    A lab built from another inventory is taken down only with ``replace_other``: someone
    may be using it.
    """
    topo = Topology.from_plan(plan, paths.prefix)
    existing = load_state(paths)
    if existing and existing.complete and existing.inventory != inventory and not replace_other:
        raise UserError(
            f"tools lab up: a lab from {existing.inventory or 'another inventory'} "
            "is running; `tools lab down` it first, or run `tools lab up "
            f"--replace -i {inventory}`"
        )
    if existing and existing.complete and existing.inventory == inventory and healthy(existing):
        if existing.mode != firewall.Mode.BOTH.value:  # a `test` was interrupted
            firewall.apply_mode(runner, firewall.rulesets(plan, topo), firewall.Mode.BOTH)
            existing = replace(existing, mode=firewall.Mode.BOTH.value)
            save_state(paths, existing)
            log("lab already up; all filters loaded again")
            return existing
        log(f"lab already up ({len(existing.namespaces)} namespaces); nothing to do")
        return existing
    if existing or netns.listed(paths.prefix):
        down(paths, runner, log=lambda _msg: None)

    for place in (paths.root, paths.cache):
        _check_reachable(place)
    _dir(paths.root)
    state = LabState(prefix=paths.prefix, inventory=inventory).with_namespaces(topo.namespaces)
    state = state.with_files([str(paths.netns_dir(topo.client.netns))])
    save_state(paths, state)
    rec = _Recorder(paths, state, threading.Lock())
    # The daemons read what we write as their own users: a private umask (077) must not
    # close the files to them. Secrets get their own modes explicitly.
    umask = os.umask(0o022)
    try:
        _build(plan, topo, paths, runner, rec, cold=cold, engine=engine, log=log)
    except BaseException:
        # A failed (or interrupted) bring-up leaves nothing behind; the error says why.
        down(paths, runner, log=lambda _msg: None)
        raise
    finally:
        os.umask(umask)
    return rec.state


def _build(
    plan: dict[str, Any],
    topo: Topology,
    paths: LabPaths,
    runner: Runner,
    rec: _Recorder,
    *,
    cold: bool,
    engine: str = "microvm",
    log: Callable[[str], None] = print,
) -> None:
    if engine == "incus":  # the guests are Incus containers (homestack.lab.incus)
        _dir(paths.root / "logs")
        incus.start(
            plan,
            topo,
            paths,
            runner,
            record=lambda s: rec.add(s, "incusd", topo.hypervisor, "incusd"),
            log=log,
        )
    netns.create(runner, topo, incus=engine == "incus")
    files = _write_files(plan, topo, paths)
    if acme.enabled(plan):  # Pebble, lego and the stand-ins obtain the certificate first
        files = acme.up(plan, topo, paths, runner, rec=rec, files=files)
    _client_resolver(plan, topo, paths)
    rules = firewall.rulesets(plan, topo)
    firewall.apply_mode(runner, rules, firewall.Mode.BOTH)

    jobs: list[Callable[[], None]] = []
    proxy_dns = topo.guest_with("dnsmasq")
    proxy_caddy = topo.proxy
    db = topo.guest_with("postgresql")
    if proxy_caddy is not None:
        jobs.append(lambda: _caddy(proxy_caddy, paths, files, rec))
    if proxy_dns is not None:
        jobs.append(lambda: _dnsmasq(proxy_dns, paths, files, rec))
    if db is not None and plan.get("databases"):
        jobs.append(lambda: _postgres(plan, db, paths, runner, rec, cold=cold))
    for guest in topo.guests:
        cfg = _standin_config(plan, guest)
        if cfg["tcp"] or cfg["udp"]:
            jobs.append(lambda g=guest, c=cfg: _standin(g, c, paths, rec))  # type: ignore[misc]
    for machine in topo.outside:
        cfg = _listener_config(plan, machine)
        jobs.append(lambda m=machine, c=cfg: _standin(m, c, paths, rec))  # type: ignore[misc]
    with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
        for fut in [pool.submit(job) for job in jobs]:
            fut.result()

    with rec.lock:
        rec.state = replace(
            rec.state,
            complete=True,
            mode="both",
            info={
                "root": str(files["root"]),
                "passwords": str(files["passwords"]),
                "client": topo.client.netns,
                "started": time.time(),
            },
        )
        save_state(paths, rec.state)


def _check_reachable(place: Path) -> None:
    """The daemons run as their own users: every parent directory must let them through."""
    for parent in place.absolute().parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise UserError(
                f"tools lab: {parent} is closed to other users, so caddy and "
                f"postgres cannot reach {place}; choose another directory"
            )


def _write_files(plan: dict[str, Any], topo: Topology, paths: LabPaths) -> dict[str, Path]:
    art = plan["artifacts"]
    certs_dir = _dir(paths.root / "certs")
    cert_plan = plan["certificates"]
    names = list(cert_plan.get("names") or [f"*.{topo.domain}", topo.domain])
    certs = pki.issue(
        certs_dir, topo.domain, names, topo.network if cert_plan.get("includeNetwork") else None
    )
    shutil.chown(certs.key, "root", "caddy")

    caddy_dir = _dir(paths.root / "caddy", "caddy", 0o750)
    (caddy_dir / "Caddyfile.rendered").write_text(art["caddyfile"])
    (caddy_dir / "Caddyfile").write_text(
        overlay.caddyfile(
            art["caddyfile"],
            cert=certs.chain,
            key=certs.key,
            storage=caddy_dir / "storage",
            rendered_cert=cert_plan.get("certFile"),
            rendered_key=cert_plan.get("keyFile"),
        )
    )

    dns_dir = _dir(paths.root / "dnsmasq")
    (dns_dir / "dnsmasq.rendered.conf").write_text(art["dnsmasq"])
    (dns_dir / "dnsmasq.conf").write_text(
        overlay.dnsmasq(dns_dir / "dnsmasq.rendered.conf", pid_file=dns_dir / "dnsmasq.pid")
    )

    pg_dir = _dir(paths.root / "postgresql", "postgres", 0o750)
    (pg_dir / "pg_hba.rendered.conf").write_text(art["pgHba"])
    (pg_dir / "pg_hba.conf").write_text(overlay.pg_hba(art["pgHba"]))
    (pg_dir / "init.sql").write_text(art["postgresqlInit"])
    passwords = {d["role"]: secrets.token_urlsafe(18) for d in plan.get("databases", [])}
    pw_file = pg_dir / "passwords.json"
    pw_file.touch(mode=0o600)
    pw_file.write_text(json.dumps(passwords))
    (pg_dir / "passwords.sql").write_text(overlay.passwords_sql(passwords))
    for f in pg_dir.iterdir():
        shutil.chown(f, "postgres", "postgres")

    _dir(paths.root / "logs")
    # `nobody` runs the stand-ins: it reads this copy, never the checkout (which may sit in
    # a home directory closed to other users, such as Debian's /root).
    shutil.copyfile(
        Path(__file__).with_name("standins.py"), _dir(paths.root / "standins") / "standins.py"
    )
    return {
        "root": certs.root,
        "chain": certs.chain,
        "key": certs.key,
        "caddy": caddy_dir,
        "dnsmasq": dns_dir,
        "postgresql": pg_dir,
        "passwords": pw_file,
    }


def _client_resolver(plan: dict[str, Any], topo: Topology, paths: LabPaths) -> None:
    """`ip netns exec <client> ...` then resolves through the proxy, like a LAN laptop."""
    dns_guest = topo.dns_server
    if dns_guest is None:
        return
    etc = paths.netns_dir(topo.client.netns)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(
        f"# homestack lab client\nnameserver {dns_guest}\nsearch {topo.domain}\n"
    )


def _caddy(guest: Machine, paths: LabPaths, files: dict[str, Path], rec: _Recorder) -> None:
    home = files["caddy"]
    rec.start(
        guest,
        ["caddy", "run", "--config", str(home / "Caddyfile"), "--adapter", "caddyfile"],
        role="caddy",
        name="caddy",
        sockets=[("tcp", 443)],
        log=paths.root / "logs" / "caddy.log",
        user="caddy",
        bind_low_ports=True,
        env={
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        },
    )


def _dnsmasq(guest: Machine, paths: LabPaths, files: dict[str, Path], rec: _Recorder) -> None:
    rec.start(
        guest,
        ["dnsmasq", "--keep-in-foreground", f"--conf-file={files['dnsmasq'] / 'dnsmasq.conf'}"],
        role="dnsmasq",
        name="dnsmasq",
        sockets=[("udp", 53)],
        log=paths.root / "logs" / "dnsmasq.log",
    )


def _pg_template(paths: LabPaths, db: Machine, runner: Runner, target: Path, cold: bool) -> None:
    """An initialised data directory at ``target``: a copy of the cached one (warm), or initdb.

    Long steps run inside the db namespace, so a `down` after a killed `up` stops them too.
    """
    initdb = [
        "ip",
        "netns",
        "exec",
        db.netns,
        *daemons.setpriv("postgres"),
        str(PG_BIN / "initdb"),
        "--no-sync",
        "--auth-local=peer",
        "--auth-host=reject",
        "--username=postgres",
        "--encoding=UTF8",
        "--locale=C",
        "--wal-segsize=1",
    ]
    template = paths.cache / "pg15-template-v2"
    if cold:
        runner.run([*initdb, "-D", str(target)], check=True)
        return
    if not (template / "PG_VERSION").exists():
        _dir(paths.cache)
        for stale in paths.cache.glob("pg15-template*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = paths.cache / f"{template.name}.tmp-{secrets.token_hex(4)}"
        _dir(tmp, "postgres", 0o700)
        runner.run([*initdb, "-D", str(tmp)], check=True)
        tmp.rename(template)
    runner.run(
        ["ip", "netns", "exec", db.netns, "cp", "-a", str(template), str(target)], check=True
    )


def _data_dir(paths: LabPaths, rec: _Recorder) -> Path:
    """Where the cluster's files go: memory (/dev/shm) when there is room, as the cluster is
    thrown away anyway; it is recorded before it exists, so `down` removes it."""
    shm = Path("/dev/shm")
    data = paths.root / "postgresql" / "data"
    try:
        stats = os.statvfs(shm)
        if stats.f_bavail * stats.f_frsize > SHM_NEEDED:
            data = shm / f"{paths.prefix}postgresql"
    except OSError:
        pass
    with rec.lock:
        rec.state = rec.state.with_files([str(data)])
        save_state(rec.paths, rec.state)
    return data


def _postgres(
    plan: dict[str, Any],
    db: Machine,
    paths: LabPaths,
    runner: Runner,
    rec: _Recorder,
    *,
    cold: bool,
) -> None:
    pg_dir = paths.root / "postgresql"
    data = _data_dir(paths, rec)
    sock = _dir(pg_dir / "socket", "postgres", 0o755)
    _pg_template(paths, db, runner, data, cold)
    port = int(plan["databases"][0].get("port", 5432))
    rec.start(
        db,
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            *overlay.postgres_options(
                address=db.address, port=port, socket_dir=sock, hba=pg_dir / "pg_hba.conf"
            ),
        ],
        role="postgresql",
        name="postgresql",
        sockets=[("tcp", port)],
        log=paths.root / "logs" / "postgresql.log",
        user="postgres",
        own_ipc=True,
    )
    psql = [
        "ip",
        "netns",
        "exec",
        db.netns,
        *daemons.setpriv("postgres"),
        "psql",
        "-X",
        "-q",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(sock),
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        "postgres",
    ]
    deadline = time.monotonic() + 10
    while True:  # the postmaster listens a moment before it accepts logins
        ready = runner.run([*psql, "-c", "select 1"], check=False)
        if ready.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise UserError(f"tools lab: postgresql did not accept logins: {ready.stderr.strip()}")
        time.sleep(0.02)
    runner.run(
        [*psql, "-f", str(pg_dir / "init.sql"), "-f", str(pg_dir / "passwords.sql")], check=True
    )


def _standin_config(plan: dict[str, Any], guest: Machine) -> dict[str, Any]:
    """Listeners for every plan port of this guest that no real daemon serves."""
    g = plan["guests"][guest.name]
    real = {
        (p["port"], p["proto"]) for p in g.get("ports", []) if p.get("service") in REAL_SERVICES
    }
    wanted = {(p["port"], p["proto"]) for p in all_ports(plan)} - real
    services = [s for s in g.get("services", []) if s not in REAL_SERVICES]
    named = [STANDIN_NAMES.get(s, s) for s in services]
    label = (" + ".join(named) + " stand-in") if named else "port listener"
    routes = g.get("routes") or []
    return {
        "guest": guest.name,
        "label": label,
        "address": guest.address,
        "tcp": sorted(p for p, proto in wanted if proto == "tcp"),
        "udp": sorted(p for p, proto in wanted if proto == "udp"),
        "issuer": f"https://{routes[0]['fqdn']}" if routes else "",
    }


def _listener_config(plan: dict[str, Any], machine: Machine) -> dict[str, Any]:
    """A listener on every plan port of a machine outside the guest network (the
    hypervisor, the LAN client, the internet, the relay), on all its addresses."""
    ports = all_ports(plan)
    return {
        # All addresses: the hypervisor is reached at the gateway, on the LAN and in the tunnel.
        "guest": machine.name,
        "label": "port listener",
        "address": "0.0.0.0",  # noqa: S104
        "tcp": sorted(p["port"] for p in ports if p["proto"] == "tcp"),
        "udp": sorted(p["port"] for p in ports if p["proto"] == "udp"),
        "issuer": "",
    }


def all_ports(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The union of every port in the plan: guests' own ports, every allowed flow, every
    egress and every port a host's own services accept."""
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    for g in plan["guests"].values():
        for p in g.get("ports", []):
            seen.setdefault(
                (int(p["port"]), p["proto"]), {"port": int(p["port"]), "proto": p["proto"]}
            )
    for a in [*plan.get("allow", []), *plan.get("egress", []), *plan.get("input", [])]:
        seen.setdefault((int(a["port"]), a["proto"]), {"port": int(a["port"]), "proto": a["proto"]})
    return [seen[k] for k in sorted(seen, key=lambda k: (k[0], k[1]))]


def _standin(guest: Machine, cfg: dict[str, Any], paths: LabPaths, rec: _Recorder) -> None:
    cfg_file = paths.root / "standins" / f"{guest.name}.json"
    cfg_file.write_text(json.dumps(cfg))
    rec.start(
        guest,
        daemons.python_program(paths.root / "standins" / "standins.py", str(cfg_file)),
        role="standin",
        label=cfg["label"],
        name=f"{guest.name} {cfg['label']}",
        sockets=[("tcp", p) for p in cfg["tcp"]] + [("udp", p) for p in cfg["udp"]],
        log=paths.root / "logs" / f"standin-{guest.name}.log",
        user="nobody",
        bind_low_ports=True,
    )


def healthy(state: LabState) -> bool:
    return all(netns.exists(n) for n in state.namespaces) and all(_alive(p) for p in state.procs)


def _alive(proc: Proc) -> bool:
    return not netns.is_gone(proc.pid) and daemons.start_time(proc.pid) == proc.start


def down(paths: LabPaths, runner: Runner, *, log: Callable[[str], None] = print) -> int:
    """Remove everything the lab made; return how many namespaces were deleted.

    The count of stopped processes is exact: every process that ran inside a lab namespace
    (a daemon, its workers, or a command of a killed `up` that was never recorded) or was
    recorded by `up`, counted once.
    """
    for left in incus.stop(paths, runner):  # Incus's own objects first, while it answers
        log(f"lab down: {left} was left to the namespace sweep")
    state = load_state(paths)
    names = set(netns.listed(paths.prefix))
    if state is not None:
        names |= set(state.namespaces)
    procs = [p for p in (state.procs if state else ()) if _alive(p)]
    stopped = {p.pid for p in procs} | set(netns.pids_in(_inodes(names)))
    for p in procs:  # SIGQUIT: PostgreSQL's immediate shutdown; its data is thrown away
        netns.kill_all([p.pid], signal.SIGQUIT if p.role == "postgresql" else signal.SIGTERM)
    netns.kill_all(netns.wait_gone([p.pid for p in procs], 0.3))
    removed = 0
    for _ in range(3):  # again, in case a command of a killed `up` was still finishing
        stray = netns.pids_in(_inodes(names))
        stopped.update(stray)
        netns.kill_all(stray)
        netns.kill_all(netns.wait_gone(stray, 1.0))
        present = [n for n in sorted(names) if netns.exists(n)]
        netns.delete(runner, present)
        removed += len(present)
        files = [
            *(state.files if state else ()),
            *(str(paths.netns_dir(n)) for n in names),
            str(Path("/dev/shm") / f"{paths.prefix}postgresql"),
        ]
        for f in files:
            shutil.rmtree(f, ignore_errors=True)
        shutil.rmtree(paths.root, ignore_errors=True)
        for stale in paths.cache.glob("pg15-template*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        names = set(netns.listed(paths.prefix))
        if not names:
            break
        time.sleep(0.05)
    log(f"lab down: removed {removed} namespaces, stopped {len(stopped)} processes")
    return removed


def _inodes(names: set[str]) -> list[int]:
    return [i for i in (netns.inode(n) for n in names) if i is not None]


def status(paths: LabPaths) -> list[dict[str, Any]]:
    """One row per recorded process and namespace, with whether it still runs."""
    state = load_state(paths)
    if state is None:
        return []
    rows: list[dict[str, Any]] = []
    for p in state.procs:
        name = p.label or p.role
        rows.append(
            {
                "kind": "process",
                "name": name,
                "role": p.role,
                "pid": p.pid,
                "netns": p.netns,
                "running": _alive(p),
                "standin": p.role == "standin" and "stand-in" in p.label,
            }
        )
    for n in state.namespaces:
        rows.append({"kind": "netns", "name": n, "running": netns.exists(n)})
    return rows
