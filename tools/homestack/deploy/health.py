"""Health checks after a switch: the system settled, the guests' units run, their
services answer. Each check is retried until it passes or its time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from homestack.deploy.order import Kind, Machine
from homestack.deploy.remote import Remote


@dataclass(frozen=True)
class Clock:
    """Time, injectable so tests do not wait."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Failure:
    check: str
    detail: str


def system_running(timeout: int) -> list[str]:
    # --wait blocks while the system is still starting; "degraded" (a failed unit) exits 1.
    return ["timeout", str(timeout), "systemctl", "is-system-running", "--wait"]


def unit_active(unit: str) -> list[str]:
    return ["systemctl", "is-active", unit]


def poll(
    remote: Remote, command: list[str], timeout: float, interval: float, clock: Clock
) -> tuple[bool, str]:
    """Run ``command`` until it succeeds or ``timeout`` seconds passed; last output back."""
    deadline = clock.monotonic() + timeout
    while True:
        result = remote.run(command)
        detail = (result.stdout.strip() or result.stderr.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {result.returncode}"
        if result.returncode == 0:
            return True, last
        if clock.monotonic() >= deadline:
            return False, last
        clock.sleep(interval)


def check(
    machine: Machine,
    remote: Remote,
    *,
    system_timeout: int,
    timeout: float,
    interval: float,
    clock: Clock,
) -> Failure | None:
    """All checks for ``machine``; the first failure, or None when healthy.

    A host: `systemctl is-system-running --wait`, then (hypervisors) every guest's
    microvm@ unit and the probes of every guest, in the plan's order: the guests switched
    with the host's generation, which becomes the boot default only when they answer.
    A guest: its microvm@ unit, then each health endpoint of its services, reached from
    its hypervisor (the guest network is only routed there).
    """
    steps: list[tuple[str, list[str]]] = []
    if machine.kind is Kind.HOST:
        result = remote.run(system_running(system_timeout))
        if result.returncode != 0:
            state = result.stdout.strip() or f"exit code {result.returncode}"
            return Failure("systemctl is-system-running", state)
        steps += [
            (f"{g}: microvm@{g}.service active", unit_active(f"microvm@{g}.service"))
            for g in machine.guests
        ]
    else:
        steps.append((f"{machine.unit} active", unit_active(machine.unit)))
    steps += [(f"{h.describe()} answers", h.command()) for h in machine.health]
    for name, command in steps:
        ok, detail = poll(remote, command, timeout, interval, clock)
        if not ok:
            return Failure(name, detail)
    return None
