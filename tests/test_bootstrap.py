"""`scripts/bootstrap`: packages installed without starting services, the machine's services
left alone, and a line for each phase with its time.

The script runs for real in a copy of the repository's layout, with `apt-get`, `dpkg-query`
and `systemctl` replaced by recorders on PATH and Debian's policy-rc.d moved to a test path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# The fake apt-get writes down what policy-rc.d said while it ran, then fails on request.
APT_GET = """#!/bin/sh
if [ "$1" = install ]; then
  if [ -e "$HOMESTACK_POLICY_RC_D" ]; then
    "$HOMESTACK_POLICY_RC_D" caddy start; echo "policy $?" >> "$RECORD"
  else
    echo "no policy" >> "$RECORD"
  fi
  echo "apt-get $*" >> "$RECORD"
  for pkg; do :; done
  echo "Unpacking $pkg (1.0) ..."
  echo "Setting up $pkg (1.0) ..."
  [ "${APT_EXIT:-0}" = 0 ] || echo "E: Unable to locate package $pkg" >&2
  exit "${APT_EXIT:-0}"
fi
"""
DPKG_QUERY = """#!/bin/sh
for last; do :; done
[ "$last" = jq ] && exit 1
printf 'install ok installed'
"""
RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$RECORD"
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "bootstrap", root / "scripts" / "bootstrap")
    (root / "tools").mkdir()
    (root / "tools" / "pyproject.toml").write_text("")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "tools").write_text("#!/bin/sh\nexit 0\n")
    (venv / "sops").write_text("#!/bin/sh\necho 'sops 3.11.0'\n")
    for f in venv.iterdir():
        f.chmod(0o755)
    (root / ".venv" / ".installed").touch()
    os.utime(root / "tools" / "pyproject.toml", (1, 1))  # older than .installed
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in {
        "apt-get": APT_GET,
        "dpkg-query": DPKG_QUERY,
        "systemctl": RECORDER,
        "service": RECORDER,
        "invoke-rc.d": RECORDER,
    }.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    for program in (
        "nix-instantiate",
        "caddy",
        "dnsmasq",
        "psql",
        "nft",
        "ip",
        "setpriv",
        "unshare",
        "openssl",
    ):
        if shutil.which(program) is None:  # the checks phase only looks for them
            (fake / program).write_text("#!/bin/sh\n")
            (fake / program).chmod(0o755)
    return root


def bootstrap(
    repo: Path, *, apt_exit: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    record = repo.parent / "record"
    env = {
        **os.environ,
        "PATH": f"{repo.parent / 'bin'}:{os.environ['PATH']}",
        "HOMESTACK_POLICY_RC_D": str(repo.parent / "policy-rc.d"),
        "RECORD": str(record),
        "APT_EXIT": str(apt_exit),
    }
    result = subprocess.run(
        [str(repo / "scripts" / "bootstrap")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = record.read_text().splitlines() if record.exists() else []
    return result, lines


def test_packages_are_installed_without_starting_services(repo: Path) -> None:
    result, record = bootstrap(repo)
    assert result.returncode == 0, result.stderr
    assert record[0] == "policy 101"  # invoke-rc.d is told: do not start anything now
    assert record[1].startswith("apt-get install -y -q --no-install-recommends jq")
    assert not (repo.parent / "policy-rc.d").exists()  # ours, so removed afterwards
    assert not any(line.startswith(("systemctl", "service", "invoke-rc.d")) for line in record)


def test_the_policy_is_removed_when_apt_fails(repo: Path) -> None:
    result, record = bootstrap(repo, apt_exit=100)
    assert result.returncode == 1
    assert record[0] == "policy 101"
    assert "E: Unable to locate package jq" in result.stderr  # apt's own words
    assert "bootstrap: apt failed (exit 100; its last lines are above)" in result.stderr
    assert not (repo.parent / "policy-rc.d").exists()


def test_an_existing_policy_is_left_as_it_was(repo: Path) -> None:
    policy = repo.parent / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 104\n")
    policy.chmod(0o755)
    result, record = bootstrap(repo)
    assert result.returncode == 0, result.stderr
    assert record[0] == "policy 104"
    assert policy.read_text() == "#!/bin/sh\nexit 104\n"


def test_each_phase_says_what_it_does_and_how_long_it_took(repo: Path) -> None:
    result, _ = bootstrap(repo)
    lines = result.stderr.splitlines()
    starts = [ln for ln in lines if re.match(r"bootstrap: (apt|venv|checks)", ln)]
    assert [s.split(":")[1].strip() for s in starts] == ["apt", "venv, pip", "checks"]
    timed = [ln for ln in lines if re.search(r"\(\d+\.\d s\)$", ln)]
    assert len(timed) == 3, lines
    assert "installed 1 packages" in timed[0]
    assert "bootstrap:     Setting up jq (1.0) ..." in lines  # apt's progress, as it goes
    assert not any(ln.startswith("Unpacking") for ln in lines)  # the rest only in its log
    assert lines[-1] == "bootstrap: ready: .venv/bin/tools, .venv/bin/sops"


def test_the_script_never_stops_or_disables_a_service() -> None:
    text = (REPO / "scripts" / "bootstrap").read_text()
    code = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    assert not re.search(r"\b(systemctl|service|invoke-rc\.d|kill|pkill)\b", code)
