"""The deployed record on the hosts: after a complete deploy every deployed host keeps it
in /var/lib/homestack/deployed.json, and the next deploy, from any checkout, reads the
hosts' records and checks its guards against the newest one (homestack.guards)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from homestack.deploy.remote import ConnectionLost, Remote, Ssh
from homestack.deploy.report import RecordWrite
from homestack.errors import UserError
from homestack.plandiff import DeployedRecord, read_deployed
from homestack.process import Runner, error_line

HOST_RECORD = "/var/lib/homestack/deployed.json"
READ = ["cat", HOST_RECORD]

Say = Callable[[str, str], None]  # (machine, line)


def write_command(tag: str, path: str = HOST_RECORD) -> list[str]:
    """Write stdin to ``path``, root's, 0644, atomically: to a temp name in the same
    directory (``tag`` tells deploys apart: their time), then `mv` over the record. A
    failure removes the temp file and leaves the old record as it was."""
    if not re.fullmatch(r"[A-Za-z0-9/._-]+", path + tag):
        raise ValueError(f"{path!r}, {tag!r}: not a plain path and tag")
    directory = str(Path(path).parent)
    temp = f"{directory}/.{Path(path).name}.{tag}"
    # No quote or $ in it, so the dry run can print it in double quotes, readably.
    script = (
        f"umask 022 && mkdir -p {directory} && cat > {temp} && chown root:root {temp} && "
        f"chmod 0644 {temp} && mv -f {temp} {path} || {{ rm -f {temp}; exit 1; }}"
    )
    return ["sh", "-c", script]


def hosts_of(plan: Mapping[str, Any], names: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(host, ssh target) of ``names`` (default: every host of the plan), in name order."""
    hosts = plan["hosts"]
    return [(name, str(hosts[name]["target"])) for name in sorted(names or hosts)]


def write_on_hosts(  # noqa: PLR0917 - one deploy's state, handed over once
    record: DeployedRecord,
    hosts: Sequence[tuple[str, str]],
    runner: Runner,
    ssh: Ssh,
    say: Say,
    tag: str,
) -> tuple[RecordWrite, ...]:
    """Write ``record`` on each host; a failure is reported for that host, never raised."""
    data = record.dumps().decode()
    done = []
    for name, target in hosts:
        say(name, f"record the deployed plan in {HOST_RECORD}")
        try:
            result = Remote(runner, ssh, target).run(write_command(tag), input=data)
        except ConnectionLost as exc:
            done.append(RecordWrite(name, False, f"{HOST_RECORD} not written: {exc}"))
            continue
        if result.returncode != 0:
            why = error_line(result.stderr, f"exit code {result.returncode}")
            done.append(RecordWrite(name, False, f"{HOST_RECORD} not written: {why}"))
        else:
            done.append(RecordWrite(name, True, f"{HOST_RECORD} written"))
    return tuple(done)


def _read_one(name: str, target: str, runner: Runner, ssh: Ssh) -> DeployedRecord | str | None:
    """The host's record; None when it has none; a line saying why it is not used."""
    where = f"{name}:{HOST_RECORD}"
    try:
        result = Remote(runner, ssh, target).run(READ, input="")
    except ConnectionLost as exc:
        return f"{where}: not read: {exc}"
    if result.returncode != 0:
        if "No such file" in result.stderr:
            return None
        why = error_line(result.stderr, f"exit code {result.returncode}")
        return f"{where}: not read ({why})"
    try:
        return DeployedRecord.parse(result.stdout, where)
    except UserError as exc:
        return f"{exc}; ignored"


def read_hosts(
    hosts: Sequence[tuple[str, str]], runner: Runner, ssh: Ssh, say: Say
) -> list[DeployedRecord]:
    """The records the hosts keep, read in parallel (a dead host costs one timeout); a host
    that has none, cannot be reached, or keeps a damaged one is left out, the last two
    said in one line each."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        answers = list(pool.map(lambda h: _read_one(h[0], h[1], runner, ssh), hosts))
    found = []
    for (name, _), answer in zip(hosts, answers, strict=True):
        if isinstance(answer, str):
            say(name, answer)
        elif answer is not None:
            found.append(answer)
    return found


def newest(local: DeployedRecord | None, found: Sequence[DeployedRecord]) -> DeployedRecord | None:
    """The newest of ``local`` and ``found``; on a tie, the one met first (``local``)."""
    best = local
    for record in found:
        if record.newer_than(best):
            best = record
    return best


def read_newest(
    inventory: Path,
    hosts: Sequence[tuple[str, str]],
    runner: Runner,
    ssh: Ssh,
    say: Say,
) -> DeployedRecord | None:
    """The newest record of this checkout's and the hosts'. One newer than this checkout's
    replaces it (the checkout only caches what the hosts keep)."""
    from homestack.guards import store_record  # noqa: PLC0415 - guards import plandiff too

    local = read_deployed(inventory)
    best = newest(local, read_hosts(hosts, runner, ssh, say))
    if best is not None and best is not local:
        try:
            stored = store_record(inventory, best)
        except OSError as exc:  # a read-only checkout: this deploy uses it all the same
            kept = f"; not kept here ({exc})"
        else:
            kept = f"; kept in {stored}" if stored else ""
        than = "newer than this checkout's" if local else "this checkout has none"
        say("guards", f"using {best.where} ({best.describe()}): {than}{kept}")
    return best
