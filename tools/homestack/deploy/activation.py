"""How a new system is activated on a machine without ever stranding it, as commands.

1. What runs is `/run/current-system` (not the profile link, which may point elsewhere).
2. A watchdog timer is armed: a transient systemd unit whose one command is the running
   generation's own `switch-to-configuration test`, by absolute store path (a transient
   unit's PATH is systemd's built-in default, which on NixOS holds neither nix-env nor ln).
3. The new system is activated with `switch-to-configuration test` inside
   `systemd-run --wait --collect`, as nixos-rebuild does (nixpkgs#39118): the switch
   survives a dropped SSH session. `test` leaves the boot default alone, so until step 5
   a reboot (or a power cycle of an unreachable machine) boots the previous generation.
4. Health probes (the catalogue's, for the host and every guest it runs).
5. Disarm, race-free: stop the timer, wait for a watchdog run already started, then read
   what runs; only if that is still the new system is it made the boot default
   (`nix-env --set` + `switch-to-configuration boot`).

On a hypervisor the guests follow the host's generation: microvm.nix's
`install-microvm-<g>` re-links `/var/lib/microvms/<g>/current` to the runner the active
generation declares and `restartIfChanged` restarts the VM, so going back to the previous
generation puts every guest back too, and that survives the next switch and boot.
"""

from __future__ import annotations

from enum import Enum

PROFILE = "/nix/var/nix/profiles/system"
RUNNING = "/run/current-system"
# nixos-rebuild runs switch-to-configuration the same way (nixpkgs#39118: killed with the
# SSH session otherwise); the unit is its own process tree, so a dropped session or a
# vanished laptop does not stop it half-way.
SYSTEMD_RUN = (
    "systemd-run",
    "--wait",
    "--collect",
    "--no-ask-password",
    "--pipe",
    "--quiet",
    "--service-type=exec",
)
# One deploy at a time per host, whether from a laptop or from GitOps: a transient unit
# of this name is the lock (systemd refuses a second unit of the same name, atomically).
# It holds nothing open, so a vanished laptop's lock ends with its RuntimeMaxSec.
LOCK_UNIT = "homestack-deploy-lock"
LOCKED = "another deploy (tools deploy or GitOps) is running on this host"


class Action(Enum):
    """switch-to-configuration's verbs that the deploy uses."""

    TEST = "test"  # activate now, leave the boot default alone
    BOOT = "boot"  # make it the boot default, change nothing running


class Disarmed(Enum):
    """What a disarm found once the watchdog could no longer fire."""

    CONFIRMED = "confirmed"  # stopped in time: the new system still runs
    FIRED = "fired"  # it ran first: the previous system runs again


def store_path(text: str) -> str | None:
    """The path a `readlink -f` printed, or None."""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


def running() -> list[str]:
    return ["readlink", "-f", RUNNING]


def switch_unit(machine: str, stamp: str) -> str:
    return f"homestack-switch-{machine}-{stamp}"


def watchdog_unit(machine: str, stamp: str) -> str:
    return f"homestack-rollback-{machine}-{stamp}"


def switch(system: str, action: Action, unit: str) -> list[str]:
    """Run ``system``'s switch-to-configuration in its own unit and wait for it."""
    return [*SYSTEMD_RUN, f"--unit={unit}", f"{system}/bin/switch-to-configuration", action.value]


def arm(previous: str, unit: str, seconds: int) -> list[str]:
    """A timer that re-activates ``previous`` after ``seconds`` unless stopped.

    Its service's only command is an absolute store path; `test` is enough because the
    boot default is still ``previous`` while the watchdog is armed."""
    return [
        "systemd-run",
        f"--unit={unit}",
        f"--on-active={seconds}",
        "--timer-property=AccuracySec=1s",
        "--collect",
        f"{previous}/bin/switch-to-configuration",
        Action.TEST.value,
    ]


def stop_timer(unit: str) -> list[str]:
    return ["systemctl", "stop", f"{unit}.timer"]


def watchdog_state(unit: str) -> list[str]:
    """The watchdog service's ActiveState: "activating" while it rolls back."""
    return ["systemctl", "show", "--property=ActiveState", "--value", f"{unit}.service"]


def watchdog_busy(state: str) -> bool:
    return state.strip() in {"activating", "active", "deactivating", "reloading"}


def judge(now_running: str | None, new: str) -> Disarmed:
    """After the timer is stopped and its service idle: did the switch stand?"""
    return Disarmed.CONFIRMED if now_running == new else Disarmed.FIRED


def set_profile(system: str) -> list[str]:
    return ["nix-env", "-p", PROFILE, "--set", system]


def commit(system: str, unit: str) -> list[list[str]]:
    """Make ``system`` the boot default: only once it is healthy and the watchdog is gone."""
    return [set_profile(system), switch(system, Action.BOOT, unit)]


def lock(owner: str, seconds: int) -> list[str]:
    """Take the host's deploy lock for at most ``seconds``; fails if someone holds it."""
    return [
        "systemd-run",
        f"--unit={LOCK_UNIT}",
        f"--description=Homestack deploy {owner}",
        f"--property=RuntimeMaxSec={seconds}",
        "--collect",
        f"{RUNNING}/sw/bin/sleep",
        "infinity",
    ]


def unlock() -> list[str]:
    return ["systemctl", "stop", f"{LOCK_UNIT}.service"]


def revision() -> list[str]:
    """The Git revision the running system was built from (system.configurationRevision)."""
    return [f"{RUNNING}/sw/bin/nixos-version", "--configuration-revision"]


def profile_system() -> list[str]:
    """The boot default's system (what a reboot would run)."""
    return ["readlink", "-f", PROFILE]
