"""What a lab owns, written down before it is made, so `down` can undo a killed `up`.

The state file lists the namespaces and processes the lab created (each PID with its start
time, so a reused PID is never signalled) and the files outside the state directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from homestack.errors import UserError

DEFAULT_DIR = Path("/run/homestack-lab")
DEFAULT_PREFIX = "hslab-"
DEFAULT_CACHE = Path("/var/cache/homestack-lab")


@dataclass(frozen=True)
class LabPaths:
    """Where one lab keeps its state, and the prefix of every name it creates."""

    root: Path = DEFAULT_DIR
    prefix: str = DEFAULT_PREFIX
    cache: Path = DEFAULT_CACHE

    @classmethod
    def from_env(cls) -> LabPaths:
        """Defaults, overridable by HOMESTACK_LAB_DIR, _PREFIX and _CACHE (tests use their own)."""
        return cls(
            root=Path(os.environ.get("HOMESTACK_LAB_DIR", str(DEFAULT_DIR))),
            prefix=os.environ.get("HOMESTACK_LAB_PREFIX", DEFAULT_PREFIX),
            cache=Path(os.environ.get("HOMESTACK_LAB_CACHE", str(DEFAULT_CACHE))),
        )

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def netns_dir(self, netns: str) -> Path:
        """`ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf for the client."""
        return Path("/etc/netns") / netns


@dataclass(frozen=True)
class Proc:
    """A process the lab started: its PID, start time (clock ticks) and role."""

    pid: int
    start: int
    role: str
    netns: str
    label: str = ""


@dataclass(frozen=True)
class LabState:
    """The lab's record of itself; `complete` is set only when `up` finished."""

    prefix: str
    inventory: str = ""
    namespaces: tuple[str, ...] = ()
    procs: tuple[Proc, ...] = ()
    files: tuple[str, ...] = ()
    complete: bool = False
    mode: str = "both"
    info: dict[str, object] = field(default_factory=dict)

    def with_namespaces(self, names: list[str]) -> LabState:
        return replace(self, namespaces=tuple(dict.fromkeys([*self.namespaces, *names])))

    def with_proc(self, proc: Proc) -> LabState:
        return replace(self, procs=(*self.procs, proc))

    def with_files(self, files: list[str]) -> LabState:
        return replace(self, files=tuple(dict.fromkeys([*self.files, *files])))


def load_state(paths: LabPaths) -> LabState | None:
    """The recorded state, or None when no lab was ever started here."""
    try:
        raw = json.loads(paths.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{paths.state_file}: unreadable lab state ({exc}); remove it") from exc
    return LabState(
        prefix=raw["prefix"],
        inventory=raw.get("inventory", ""),
        namespaces=tuple(raw.get("namespaces", ())),
        procs=tuple(Proc(**p) for p in raw.get("procs", ())),
        files=tuple(raw.get("files", ())),
        complete=bool(raw.get("complete", False)),
        mode=raw.get("mode", "both"),
        info=dict(raw.get("info", {})),
    )


def save_state(paths: LabPaths, state: LabState) -> None:
    """Write the state atomically: a kill -9 leaves the old or the new file, never half."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.state_file.with_suffix(".tmp")
    data = json.dumps(asdict(state), indent=1, sort_keys=True)
    # No fsync: the state only has to survive a killed process, not a power cut, and a
    # rename is atomic for every reader on this machine.
    tmp.write_text(data)
    tmp.replace(paths.state_file)
