"""End to end: `homestack.deploy` against a real OpenSSH server in a network namespace.

What is real: Debian's /usr/sbin/sshd, started by this test in its own network namespace
(loopback only, nothing leaves it) and its own mount namespace; a client key made by the
test; the ssh client; every remote command travelling over SSH; the system profile's
generation symlinks under /nix/var/nix/profiles (a directory of this test bind-mounted
there, in sshd's mount namespace only).

What is NOT real, said plainly: the target is not NixOS. Its switch commands are small
shell scripts this test writes and puts first on the session's PATH — `nix-env` (manages
the generation links like the real one), `systemctl` (answers from a state file), and
`systemd-run` (records the watchdog timer; runs a `--wait` command in place) — and each
"system closure" is a directory holding a fake `bin/switch-to-configuration` that points
/run/current-system (a tmpfs of sshd's mount namespace) at itself on `test`. On the
deploying side, `nix build` and `nix copy` are answered by the test (the closures are
already in place); every other command runs for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deployfakes import nix_build_json

from homestack.deploy import engine
from homestack.deploy.remote import DEFAULT_OPTIONS, Ssh
from homestack.deploy.report import Outcome
from homestack.deploy.steps import DeployOptions
from homestack.process import RecordingRunner, Result, Runner

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or shutil.which("ip") is None,
    reason="needs root, /usr/sbin/sshd and iproute2 (network namespaces)",
)

NIX_ENV = r"""#!/bin/sh
# Stand-in for nix-env on the target: the real one's generation bookkeeping.
set -eu
echo "nix-env $*" >> "$LOG"
[ "$1" = -p ] || exit 2
profile=$2; dir=$(dirname "$profile"); base=$(basename "$profile")
case $3 in
  --set)
    last=$(ls "$dir" | sed -n "s/^$base-\([0-9]*\)-link$/\1/p" | sort -n | tail -1)
    next=$((${last:-0} + 1))
    ln -s "$4" "$dir/$base-$next-link"
    ln -sfn "$base-$next-link" "$profile" ;;
  --switch-generation)
    [ -e "$dir/$base-$4-link" ] || { echo "generation $4 does not exist" >&2; exit 1; }
    ln -sfn "$base-$4-link" "$profile" ;;
  *) exit 2 ;;
esac
"""

SYSTEMCTL = r"""#!/bin/sh
# Stand-in for systemctl: the system is "running" when the active configuration is healthy.
echo "systemctl $*" >> "$LOG"
case $1 in
  is-system-running)
    if [ "$(cat "$STATE")" = healthy ]; then echo running; else echo degraded; exit 1; fi ;;
  show) echo inactive ;;  # the watchdog's service never started
  *) exit 0 ;;
esac
"""

SYSTEMD_RUN = """#!/bin/sh
# Stand-in for systemd-run: records the watchdog timer; a --wait command runs in place.
echo "systemd-run $*" >> "$LOG"
case " $* " in *" --wait "*) ;; *) exit 0 ;; esac
while [ $# -gt 0 ]; do case $1 in -*) shift ;; *) break ;; esac; done
exec "$@"
"""

SWITCH = """#!/bin/sh
# switch-to-configuration of the "{name}" configuration.
echo "switch {name} $1" >> "$LOG"
case $1 in test|switch) echo {health} > "$STATE"; ln -sfn {path} /run/current-system ;; esac
{extra}
"""

# Cut the connection the way a bad network configuration would: kill this session's sshd.
DROP = """pid=$$
while [ "$pid" -gt 1 ]; do
  pid=$(awk '{print $4}' /proc/$pid/stat)
  case $(cat /proc/$pid/comm) in sshd*) kill -9 "$pid"; exit 0 ;; esac
done
"""


@dataclass(frozen=True)
class Target:
    root: Path
    netns: str
    ssh: Ssh
    store: Path

    def log(self) -> list[str]:
        return (self.root / "log").read_text().splitlines()

    def profile(self) -> str:
        return str((self.root / "profiles" / "system").readlink())

    def state(self) -> str:
        return (self.root / "state").read_text().strip()


def _write(path: Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _closure(root: Path, name: str, health: str, extra: str = "") -> str:
    path = f"/nix/store/{name}-nixos-system-relay"
    _write(
        root / "store" / path.removeprefix("/nix/store/") / "bin" / "switch-to-configuration",
        SWITCH.format(name=name, health=health, extra=extra, path=path),
    )
    return path


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("target")
    root.chmod(0o755)
    netns = f"hs-deploy-{os.getpid()}"
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "deployer",
            "-f",
            str(root / "client_key"),
        ],
        check=True,
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True
    )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"127.0.0.1 {host_pub[0]} {host_pub[1]}\n")

    for name, text in {
        "nix-env": NIX_ENV,
        "systemctl": SYSTEMCTL,
        "systemd-run": SYSTEMD_RUN,
    }.items():
        _write(root / "bin" / name, text)
    _write(
        root / "session",
        textwrap.dedent(f"""\
        #!/bin/sh
        export PATH={root}/bin:$PATH LOG={root}/log STATE={root}/state
        exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
        """),
    )
    (root / "profiles").mkdir()
    base = _closure(root, "base", "healthy")
    (root / "profiles" / "system-1-link").symlink_to(base)
    (root / "profiles" / "system").symlink_to("system-1-link")
    (root / "state").write_text("healthy\n")
    (root / "log").write_text("")
    _write(
        root / "sshd_config",
        textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port 22
        HostKey {root}/host_key
        AuthorizedKeysFile {root}/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        PidFile none
        ForceCommand {root}/session
        """),
        0o600,
    )
    # sshd's own mount namespace: a private /run (for /run/sshd), and this test's store
    # and profile directories over /nix/store and /nix/var/nix/profiles.
    _write(
        root / "boot",
        textwrap.dedent(f"""\
        #!/bin/sh
        set -e
        mount -t tmpfs -o mode=0755 tmpfs /run
        mkdir -p /run/sshd
        ln -s /nix/store/base-nixos-system-relay /run/current-system
        mount --bind {root}/store /nix/store
        mount --bind {root}/profiles /nix/var/nix/profiles
        ip link set lo up
        exec /usr/sbin/sshd -D -e -f {root}/sshd_config
        """),
    )
    subprocess.run(["ip", "netns", "add", netns], check=True)
    sshd = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            str(root / "boot"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=(root / "sshd.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    ssh = Ssh(
        program=("ip", "netns", "exec", netns, "ssh"),
        options=(
            "-F",
            "/dev/null",
            *DEFAULT_OPTIONS,
            "-i",
            str(root / "client_key"),
            "-o",
            f"UserKnownHostsFile={root}/known_hosts",
            "-o",
            "StrictHostKeyChecking=yes",
        ),
    )
    try:
        for _ in range(100):
            probe = subprocess.run(
                ssh.argv("root@127.0.0.1", ["true"]), check=False, capture_output=True
            )
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"sshd did not come up: {(root / 'sshd.log').read_text()}")
        yield Target(root, netns, ssh, root / "store")
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", netns], check=True)


def deployer(closure: str) -> RecordingRunner:
    """Answers `nix build`/`nix copy` for the test; runs all else (ssh) for real."""

    def nix(args: tuple[str, ...]) -> Result | None:
        if args[0] != "nix":
            return None
        # `nix build --json` builds ``closure``; `nix copy` says nothing
        return Result(args, 0, nix_build_json(closure) if "build" in args else "", "")

    return RecordingRunner(script=nix, otherwise=Runner())


PLAN: dict[str, Any] = {
    "hosts": {
        "relay": {
            "name": "relay",
            "role": "relay",
            "target": "root@127.0.0.1",
            "guests": [],
            "zfs": None,
        }
    },
    "guests": {},
    "deployOrder": [["relay"]],
}


def deploy(target: Target, closure: str) -> engine.DeployReport:
    (target.root / "log").write_text("")
    return engine.deploy(
        PLAN,
        runner=deployer(closure),
        flake=target.root,
        ssh=target.ssh,
        options=DeployOptions(health_timeout=1, poll_interval=0.1, system_timeout=5),
        validate=lambda: [],
    )  # this plan has no secrets or certificates


def test_good_configuration_is_switched_and_confirmed(target: Target) -> None:
    good = _closure(target.root, "good", "healthy")
    report = deploy(target, good)
    assert report.ok, report.summary()
    assert report.machines[0].outcome is Outcome.SWITCHED
    assert target.profile() == "system-2-link"
    assert str((target.root / "profiles" / "system-2-link").readlink()) == good
    log = [line for line in target.log() if "homestack-deploy-lock" not in line]
    assert target.log()[0].startswith("systemd-run --unit=homestack-deploy-lock")
    assert log[0].startswith("systemd-run --unit=homestack-rollback-relay-")
    # the watchdog knows the way back, by absolute path
    assert log[0].endswith("/nix/store/base-nixos-system-relay/bin/switch-to-configuration test")
    assert log[1].startswith("systemd-run --wait")
    assert [line for line in log if not line.startswith(("systemd", "systemctl"))] == [
        "switch good test",
        f"nix-env -p /nix/var/nix/profiles/system --set {good}",
        "switch good boot",
    ]
    assert log.index("switch good boot") > next(
        i for i, line in enumerate(log) if line.startswith("systemctl stop homestack-rollback-")
    )


def test_failed_health_check_rolls_back_to_the_previous_generation(target: Target) -> None:
    before = target.profile()
    broken = _closure(target.root, "broken", "broken")
    report = deploy(target, broken)
    relay = report.machines[0]
    assert not report.ok
    assert relay.outcome is Outcome.ROLLED_BACK, relay
    assert relay.error == "health check failed: systemctl is-system-running: degraded"
    running = str((target.root / "profiles" / before).readlink())
    assert relay.state == f"rolled back: runs {running} again (healthy)"
    # the target is back on what it ran before, healthy; the boot default never moved
    assert target.profile() == before
    assert target.state() == "healthy"
    switches = [line for line in target.log() if line.startswith(("switch ", "nix-env"))]
    old = running.removeprefix("/nix/store/").removesuffix("-nixos-system-relay")
    assert switches == ["switch broken test", f"switch {old} test"]


def test_lost_connection_during_the_switch_rolls_back(target: Target) -> None:
    before = target.profile()
    dropper = _closure(target.root, "dropper", "healthy", DROP)
    report = deploy(target, dropper)
    relay = report.machines[0]
    assert relay.outcome is Outcome.ROLLED_BACK, relay
    assert relay.error is not None
    # a real sshd's words for it: "Connection to 127.0.0.1 closed by remote host."
    assert relay.error.startswith(
        "root@127.0.0.1: lost the connection (Connection to 127.0.0.1 "
        "closed by remote host.) during: "
    )
    assert target.profile() == before
