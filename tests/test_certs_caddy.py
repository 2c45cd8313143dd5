"""The issued leaf served by a real Caddy with the rendered Caddyfile, in a network namespace.

A browser-like client (curl, `openssl s_client`) trusting only our root must connect to
https://id.home.arpa/ without a warning; a client without our root must refuse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE
from cryptography import x509

from homestack.certs import _sops
from homestack.certs.ca import init_ca
from homestack.certs.certfile import load_chain, to_pem
from homestack.certs.issue import issue
from homestack.certs.settings import CertSettings
from homestack.plan import load_plan
from homestack.process import Runner

REPO = Path(__file__).resolve().parent.parent
CADDY = shutil.which("caddy")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or CADDY is None or shutil.which("ip") is None,
    reason="needs root (network namespaces) and Debian's caddy",
)

# Only what Caddy 2.6 needs in a closed network; the site blocks are the rendered ones.
GLOBAL = """{{
	admin off
	auto_https off
	ocsp_stapling off
	storage file_system {storage}
}}

"""


def netns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


def wait_for_port(ns: str, address: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    probe = f"import socket; socket.create_connection(('{address}', {port}), 0.2)"
    for _ in range(100):
        if proc.poll() is not None:
            break
        done = subprocess.run(
            netns(ns, sys.executable, "-c", probe), capture_output=True, check=False
        )
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}:{port} (exit {proc.poll()})")


def make_certificates(tmp: Path, plan: dict[str, Any]) -> tuple[Path, Path, Path]:
    """CA and leaf made by the tools in a repository copy; the leaf's key as sops-nix would
    place it. Returns the repository, the chain file and the key file."""
    repo = tmp / "repo"
    repo.mkdir()
    shutil.copy(EXAMPLE, repo / "inventory.toml")
    settings = CertSettings.from_plan(plan, repo)
    now = datetime.now(UTC)
    init_ca(settings, Runner(), now=now)
    issue(settings, Runner(), now=now)
    tls = tmp / "tls"
    tls.mkdir(mode=0o700)
    chain = tls / "wildcard.crt"
    shutil.copy(settings.path(settings.leaf_certificate), chain)
    key = tls / "key"
    key.write_text(_sops.decrypt_value(repo, "secrets/proxy.yaml", "tls/key", Runner()))
    key.chmod(0o600)
    return repo, chain, key


def render_caddyfile(tmp: Path, plan: dict[str, Any], chain: Path, key: Path) -> Path:
    """The plan's Caddyfile with the lab's global options and our file paths."""
    certs = plan["certificates"]
    caddyfile = plan["artifacts"]["caddyfile"]
    assert certs["certFile"] in caddyfile
    caddyfile = caddyfile.replace(certs["certFile"], str(chain))
    caddyfile = caddyfile.replace(certs["keyFile"], str(key))
    config = tmp / "Caddyfile"
    config.write_text(GLOBAL.format(storage=tmp / "storage") + caddyfile)
    return config


def start(ns: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            netns(ns, *args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("caddy")
    key_file = tmp / "alice.agekey"
    shutil.copy(REPO / "tests/keys/admin_alice.agekey", key_file)
    key_file.chmod(0o600)
    saved = {k: os.environ.get(k) for k in ("SOPS_AGE_KEY_FILE", "PATH")}
    os.environ["SOPS_AGE_KEY_FILE"] = str(key_file)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    procs: list[subprocess.Popen[bytes]] = []
    ns = f"hs-certs-{os.getpid()}"
    try:
        plan = load_plan(EXAMPLE)
        repo, chain, key = make_certificates(tmp, plan)
        config = render_caddyfile(tmp, plan, chain, key)
        proxy = plan["guests"][plan["proxy"]]["address"]
        auth = next(r for r in plan["routes"] if r["fqdn"] == "id.home.arpa")
        backend = (auth["address"], auth["port"])

        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for address in (proxy, backend[0]):
            add = ["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "lo"]
            subprocess.run(add, check=True)
        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text("pocket-id stand-in\n")
        http_server = [sys.executable, "-m", "http.server", str(backend[1])]
        http_server += ["--bind", backend[0], "--directory", str(site)]
        procs.append(start(ns, http_server, tmp / "backend.log"))
        xdg = tmp / "xdg"
        environment = [f"XDG_CONFIG_HOME={xdg}/config", f"XDG_DATA_HOME={xdg}/data", f"HOME={xdg}"]
        caddy = [str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"]
        procs.append(start(ns, ["env", *environment, *caddy], tmp / "caddy.log"))
        wait_for_port(ns, backend[0], backend[1], procs[0])
        wait_for_port(ns, proxy, 443, procs[1])
        root = tmp / "root.pem"
        shutil.copy(repo / "certs/ca.crt", root)
        yield {"ns": ns, "proxy": proxy, "root": root, "chain": chain, "tmp": tmp, "repo": repo}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def curl(served: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    resolve = [f"id.home.arpa:{port}:{served['proxy']}" for port in (80, 443)]
    return subprocess.run(
        netns(served["ns"], "curl", "-sS", "--max-time", "5",
              "--resolve", resolve[0], "--resolve", resolve[1], *args),
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_curl_with_only_our_root_gets_through(served: dict[str, Any]) -> None:
    result = curl(served, "--cacert", str(served["root"]), "--capath", "/nonexistent",
                  "https://id.home.arpa/")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "pocket-id stand-in\n"), result.stderr


def test_curl_without_our_root_refuses(served: dict[str, Any]) -> None:
    result = curl(served, "https://id.home.arpa/")
    assert result.returncode == 60  # peer certificate cannot be authenticated
    assert result.stdout == ""


def test_plain_http_redirects_to_https(served: dict[str, Any]) -> None:
    result = curl(served, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                  "http://id.home.arpa/x")  # fmt: skip
    assert result.stdout == "308 https://id.home.arpa/x"


@pytest.mark.parametrize("name", ["id.home.arpa", "vpn.home.arpa"])
def test_openssl_s_client_verifies_the_served_chain(served: dict[str, Any], name: str) -> None:
    result = subprocess.run(
        netns(served["ns"], "openssl", "s_client", "-connect", f"{served['proxy']}:443",
              "-servername", name, "-verify_hostname", name, "-verify_return_error",
              "-CAfile", str(served["root"]), "-showcerts"),
        input="", capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "Verification: OK" in result.stdout
    # -verify_hostname with -verify_return_error: a name mismatch would have failed above.
    served_pem = result.stdout[result.stdout.index("-----BEGIN CERTIFICATE-----") :]
    served_chain = x509.load_pem_x509_certificates(served_pem.encode())
    assert to_pem(*served_chain) == to_pem(*load_chain(served["chain"], "chain"))


def test_after_trust_install_the_system_store_is_enough(served: dict[str, Any]) -> None:
    """`tools ca trust --install` for real, on copies of the stores in a private mount namespace."""
    tmp, tools = served["tmp"], Path(sys.executable).parent / "tools"
    script = f"""set -e
cp -a /etc/ssl/certs {tmp}/ssl-certs
cp -a /usr/local/share/ca-certificates {tmp}/local-cas
mount --bind {tmp}/ssl-certs /etc/ssl/certs
mount --bind {tmp}/local-cas /usr/local/share/ca-certificates
{tools} ca -i {served["repo"]}/inventory.toml trust --install --platform debian
curl -sS --max-time 5 --resolve id.home.arpa:443:{served["proxy"]} https://id.home.arpa/
"""
    result = subprocess.run(
        netns(served["ns"], "unshare", "--mount", "--propagation", "private", "sh", "-c", script),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[3:] == [
        "copied certs/ca.crt to /usr/local/share/ca-certificates/homestack-home.arpa.crt",
        "ran update-ca-certificates",
        "pocket-id stand-in",
    ]
    assert not Path("/usr/local/share/ca-certificates/homestack-home.arpa.crt").exists()
