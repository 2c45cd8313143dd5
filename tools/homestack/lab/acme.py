"""acme-dns01 in the lab: the real lego obtains the plan's wildcard from a real Pebble by
DNS-01 through a labelled stand-in of the Cloudflare API, and the real Caddy serves it.

One extra namespace, `<prefix>acme`, plays "the internet" for the proxy alone (a veth link
to the proxy guest, nothing else): Pebble (the ACME server), the zone's authoritative DNS
(dns_authority.py, also on 1.1.1.1, the resolver the plan gives lego), and the Cloudflare
API stand-in (cloudflare_standin.py) as `api.cloudflare.com`, whose certificate comes from a
CA made for this run. lego runs in the proxy namespace with the command line NixOS's
security.acme module builds (nixos/modules/security/acme/default.nix at c9634190fe:
commonOpts, then runOpts/renewOpts), with the lab's server URL and trust for the lab CA.
Nothing reaches outside the lab's namespaces.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import shutil
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homestack.errors import UserError
from homestack.lab import daemons, netns, overlay, pki, probes
from homestack.lab.state import LabPaths, LabState, save_state
from homestack.lab.topology import Machine, Topology
from homestack.process import Runner

MODE = "acme-dns01"
# TEST-NET-2 (RFC 5737) for the link between the proxy and the lab's ACME "internet"
# (topology.ACME_LINK: the internet stand-in then takes another range).
PROXY_SIDE = "198.51.100.2"
SERVICES = "198.51.100.10"
# The ACME server has an address of its own and speaks HTTPS on 443, as Let's Encrypt does:
# the proxy's egress in acme-dns01 mode is HTTPS and DNS to the internet, nothing else.
ACME_SERVER = "198.51.100.11"
NAMESERVER = "ns.homestack-lab.test"
CLOUDFLARE_API = "api.cloudflare.com"
PEBBLE_PORT, PEBBLE_MANAGEMENT = 443, 15000
# Shorter than validMinDays, so lego's `renew --days <validMinDays>` (the NixOS timer's
# command) renews at once; Pebble 2.4 reads `certificateValidityPeriod` (seconds).
VALIDITY_SECONDS = 10 * 24 * 3600


@dataclass(frozen=True)
class AcmeLab:
    """Where one run keeps its ACME files."""

    home: Path

    @property
    def lab_ca(self) -> Path:
        return self.home / "lab-ca.pem"

    @property
    def pebble_root(self) -> Path:
        return self.home / "pebble-root.pem"

    @property
    def token(self) -> Path:
        return self.home / "standin" / "cloudflare-api-token"

    @property
    def records(self) -> Path:
        return self.home / "standin" / "records.json"

    @property
    def requests(self) -> Path:
        return self.home / "standin" / "requests.jsonl"

    @property
    def lego(self) -> Path:
        return self.home / "lego"

    @property
    def out(self) -> Path:
        """What security.acme installs in /var/lib/acme/<cert>/."""
        return self.home / "out"


def enabled(plan: dict[str, Any]) -> bool:
    return bool(plan.get("certificates", {}).get("mode") == MODE)


def machine(paths: LabPaths) -> Machine:
    """The namespace that plays the internet for the proxy."""
    return Machine(name="acme", kind="standin", netns=f"{paths.prefix}acme", address=SERVICES)


def _resolver(plan: dict[str, Any]) -> str:
    return str(plan["certificates"]["acme"]["dnsResolver"]).rsplit(":", 1)[0]


def _lab_ca(lab: AcmeLab) -> tuple[Path, Path]:
    """A CA for this run only, and a server certificate for Pebble and the API stand-in."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = pki.lab_name("Homestack lab CA for stand-in services")
    ca = pki.root_certificate(ca_name, ca_key, (now, later)).sign(ca_key, hashes.SHA256())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLOUDFLARE_API)])
    leaf = (
        pki.certificate(subject, ca_name, key, (now, later))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(CLOUDFLARE_API),
                    x509.IPAddress(ipaddress.ip_address(SERVICES)),
                    x509.IPAddress(ipaddress.ip_address(ACME_SERVER)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    lab.lab_ca.write_bytes(ca.public_bytes(pem))
    cert, key_file = lab.home / "standin" / "server.pem", lab.home / "standin" / "server-key.pem"
    cert.write_bytes(leaf.public_bytes(pem))
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    shutil.chown(key_file, "nobody")
    return cert, key_file


def _link(runner: Runner, plan: dict[str, Any], proxy: Machine, ns: str) -> None:
    runner.run(["ip", "netns", "add", ns], check=True)
    runner.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        check=True,
    )
    resolver = _resolver(plan)
    lines = [
        "link set lo up",
        f"link add eth0 type veth peer name acme0 netns {proxy.netns}",
        f"addr add {SERVICES}/24 dev eth0",
        f"addr add {ACME_SERVER}/24 dev eth0",
        f"addr add {resolver}/32 dev eth0",
        "link set eth0 up",
    ]
    runner.run(["ip", "-n", ns, "-batch", "-"], check=True, input="\n".join(lines) + "\n")
    lines = [
        f"addr add {PROXY_SIDE}/24 dev acme0",
        "link set acme0 up",
        f"route add {resolver}/32 via {SERVICES} dev acme0",
    ]
    runner.run(["ip", "-n", proxy.netns, "-batch", "-"], check=True, input="\n".join(lines) + "\n")


def _in_netns(ns: str, fn: Any) -> Any:
    """Run ``fn`` in a fresh thread that has entered ``ns``."""

    def call() -> Any:
        netns.enter(ns)
        return fn()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _fetch_pebble_root(lab: AcmeLab, ns: str) -> None:
    ctx = ssl.create_default_context(cafile=str(lab.lab_ca))
    url = f"https://{ACME_SERVER}:{PEBBLE_MANAGEMENT}/roots/0"

    def get() -> bytes:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            data: bytes = resp.read()
            return data

    lab.pebble_root.write_bytes(_in_netns(ns, get))


def lego_argv(
    plan: dict[str, Any], server: str, action: str, *, provider: str | None = None
) -> list[str]:
    """lego's arguments as security.acme builds them (commonOpts, then runOpts/renewOpts);
    ``provider`` replaces the plan's DNS provider (the exec bridge, see run_lego)."""
    certs = plan["certificates"]
    acme = certs["acme"]
    names = list(certs["names"])
    argv = [
        "lego",
        "--accept-tos",
        "--path",
        ".",
        "--email",
        certs["acmeEmail"],
        "--dns",
        provider or acme["dnsProvider"],
        "--dns.resolvers",
        acme["dnsResolver"],
        "--server",
        server,
        "--key-type",
        acme["keyType"],
    ]
    for name in names:
        argv += ["-d", name]
    if action == "run":
        return [*argv, "run"]
    return [*argv, "renew", "--no-random-sleep", "--days", str(acme["validMinDays"])]


def lego_has_provider(provider: str, lego: str = "lego") -> bool:
    """Whether this lego build carries ``provider``: Go keeps every linked package's path
    in the binary (`lego dnshelp` lists all providers, built in or not)."""
    path = shutil.which(lego)
    if path is None:
        return False
    return f"/providers/dns/{provider}.".encode() in Path(path).read_bytes()


def _bridge(
    plan: dict[str, Any], paths: LabPaths, rec: Any, proxy: Machine, env: dict[str, str]
) -> None:
    """Start lego's Cloudflare provider as a daemon for lego's exec provider."""
    lab = AcmeLab(paths.root / "acme")
    try:
        import lego_bridge  # noqa: F401, PLC0415
    except ImportError as exc:
        raise UserError(
            "tools lab: this lego has no Cloudflare provider (Debian builds it without), and "
            "lego's own provider is missing too: pip install certbot-dns-multi==5.5.1 into "
            "the tools' environment (scripts/bootstrap does)"
        ) from exc
    shim = lab.home / "lego-exec"
    script = Path(__file__).with_name("lego_dns_bridge.py")
    shim.write_text(
        "#!/bin/sh\n# lego --dns exec -> the lab's bridge to lego's Cloudflare "
        f'provider\nexec /usr/bin/python3 -I {script} "$@"\n'
    )
    shim.chmod(0o755)
    cfg = lab.home / "dns-bridge.json"
    cfg.write_text(
        json.dumps(
            {
                "provider": plan["certificates"]["acme"]["dnsProvider"],
                "nameservers": [plan["certificates"]["acme"]["dnsResolver"]],
                "socket": str(lab.home / "dns-bridge.sock"),
            }
        )
    )
    started = daemons.spawn(
        proxy.netns,
        [
            sys.executable,
            "-I",
            str(Path(__file__).with_name("lego_dns_bridge.py")),
            "serve",
            str(cfg),
        ],
        log=paths.root / "logs" / "lego-dns-bridge.log",
        env=env,
    )
    rec.add(started, "lego-dns", proxy, "lego cloudflare")
    deadline = time.monotonic() + 10
    while not (lab.home / "dns-bridge.sock").exists():
        if netns.is_gone(started.pid) or time.monotonic() > deadline:
            raise UserError(
                "tools lab: lego's Cloudflare provider did not start: "
                + (paths.root / "logs" / "lego-dns-bridge.log").read_text()[-300:]
            )
        time.sleep(0.05)


def lego_env(paths: LabPaths) -> dict[str, str]:
    lab = AcmeLab(paths.root / "acme")
    return {
        # security.acme: credentialFiles -> "<NAME>=%d/<NAME>" (systemd credentials).
        "CLOUDFLARE_DNS_API_TOKEN_FILE": str(lab.token),
        # Lab only: trust the lab CA for api.cloudflare.com (Go's system pool honours
        # SSL_CERT_FILE) and for Pebble's ACME endpoint (lego's LEGO_CA_CERTIFICATES).
        "SSL_CERT_FILE": str(lab.lab_ca),
        "LEGO_CA_CERTIFICATES": str(lab.lab_ca),
        "PATH": "/usr/bin:/bin",
    }


def _server() -> str:
    return f"https://{ACME_SERVER}/dir"


def run_lego(
    plan: dict[str, Any], paths: LabPaths, runner: Runner, topo: Topology, action: str
) -> str:
    """Run lego in the proxy namespace as the NixOS unit would; return its output."""
    lab = AcmeLab(paths.root / "acme")
    assert topo.proxy is not None
    env = lego_env(paths)
    provider = None
    if not lego_has_provider(plan["certificates"]["acme"]["dnsProvider"]):
        # lego's exec provider hands each Present/CleanUp to lego's own Cloudflare
        # provider in the lab's bridge daemon (lego_dns_bridge.py); lego itself still
        # drives ACME and checks propagation through --dns.resolvers.
        provider = "exec"
        # The cloudflare provider's timing (2 min, every 2 s; not one name at a time).
        env |= {
            "EXEC_MODE": "RAW",
            "EXEC_PATH": str(lab.home / "lego-exec"),
            "EXEC_PROPAGATION_TIMEOUT": "120",
            "EXEC_POLLING_INTERVAL": "2",
            "EXEC_SEQUENCE_INTERVAL": "1",
            "HOMESTACK_LAB_DNS_BRIDGE": str(lab.home / "dns-bridge.sock"),
        }
    lego = lego_argv(plan, _server(), action, provider=provider)
    argv = [
        "ip",
        "netns",
        "exec",
        topo.proxy.netns,
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        *lego,
    ]
    done = runner.run(argv, check=False, cwd=str(lab.lego))
    text = done.stdout + done.stderr
    with (paths.root / "logs" / "lego.log").open("a") as log:
        log.write(f"$ {' '.join(lego)}\n{text}\n")
    if done.returncode != 0:
        tail = " | ".join(ln for ln in text.splitlines()[-4:] if ln.strip())
        raise UserError(f"tools lab: lego {action} failed (exit {done.returncode}): {tail}")
    _install(plan, lab)
    return text


def _install(plan: dict[str, Any], lab: AcmeLab) -> None:
    """security.acme's copy step: certificates/<name>.{crt,key,issuer.crt} -> out/."""
    key_name = plan["certificates"]["names"][0].replace("*", "_")
    src = lab.lego / "certificates"
    for name, target in (
        (f"{key_name}.crt", "fullchain.pem"),
        (f"{key_name}.key", "key.pem"),
        (f"{key_name}.issuer.crt", "chain.pem"),
    ):
        tmp = lab.out / f".{target}.tmp"
        shutil.copyfile(src / name, tmp)
        tmp.chmod(0o640)
        shutil.chown(tmp, "root", "caddy")
        tmp.replace(lab.out / target)


def up(
    plan: dict[str, Any],
    topo: Topology,
    paths: LabPaths,
    runner: Runner,
    *,
    rec: Any,
    files: dict[str, Path],
    log: Any = print,
) -> dict[str, Path]:
    """Start Pebble, the DNS authority and the API stand-in; obtain the certificate with
    lego; point the lab's Caddyfile at it. Returns ``files`` with Pebble's root as root."""
    proxy = topo.proxy
    if proxy is None:
        raise UserError("tools lab: acme-dns01 needs a proxy guest")
    missing = [p for p in ("lego", "pebble") if shutil.which(p) is None]
    if missing:
        raise UserError(
            f"tools lab: acme-dns01 needs {' and '.join(missing)} "
            "(Debian: apt-get install lego pebble)"
        )
    lab = AcmeLab(paths.root / "acme")
    for d in (lab.home, lab.out, lab.lego):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    standin = lab.home / "standin"
    standin.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(standin, "nobody")
    cert, key = _lab_ca(lab)
    lab.token.touch(mode=0o600)
    lab.token.write_text(secrets.token_urlsafe(30) + "\n")
    shutil.chown(lab.token, "nobody")

    guest = machine(paths)
    _link(runner, plan, proxy, guest.netns)
    # The proxy's system resolver, as lego sees it: the lab's DNS (which knows
    # api.cloudflare.com). On NixOS this is whatever the guest's resolver is.
    etc = paths.netns_dir(proxy.netns)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"# homestack lab: proxy\nnameserver {_resolver(plan)}\n")

    domain = plan["domain"]
    zone_id = secrets.token_hex(16)
    configs = {
        "dns": {
            "zone": domain,
            "nameserver": NAMESERVER,
            "records": str(lab.records),
            "listen": [SERVICES, _resolver(plan)],
            "hosts": {NAMESERVER: SERVICES, CLOUDFLARE_API: SERVICES},
        },
        "cloudflare": {
            "zone": domain,
            "zone_id": zone_id,
            "token_file": str(lab.token),
            "records": str(lab.records),
            "requests": str(lab.requests),
            "address": SERVICES,
            "cert": str(cert),
            "key": str(key),
        },
        "pebble": {
            "pebble": {
                "listenAddress": f"{ACME_SERVER}:{PEBBLE_PORT}",
                "managementListenAddress": f"{ACME_SERVER}:{PEBBLE_MANAGEMENT}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": 5002,
                "tlsPort": 5001,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": VALIDITY_SECONDS,
            }
        },
    }
    for name, cfg in configs.items():
        path = standin / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1))
        shutil.chown(path, "nobody")

    logs = paths.root / "logs"
    here = Path(__file__).parent
    rec.start(
        guest,
        daemons.python_program(here / "dns_authority.py", str(standin / "dns.json")),
        role="standin",
        label="DNS zone stand-in",
        name="DNS authority stand-in",
        sockets=[("udp", 53), ("tcp", 53)],
        log=logs / "dns-authority.log",
        user="nobody",
        bind_low_ports=True,
    )
    rec.start(
        guest,
        daemons.python_program(here / "cloudflare_standin.py", str(standin / "cloudflare.json")),
        role="standin",
        label="Cloudflare stand-in",
        name="Cloudflare API stand-in",
        sockets=[("tcp", 443)],
        log=logs / "cloudflare-standin.log",
        user="nobody",
        bind_low_ports=True,
    )
    # PEBBLE_VA_NOSLEEP: validate at once. PEBBLE_AUTHZREUSE=0: every order (the renewal
    # too) solves a fresh DNS-01 challenge instead of reusing a valid authorization.
    rec.start(
        guest,
        ["pebble", "-config", str(standin / "pebble.json"), "-dnsserver", f"{SERVICES}:53"],
        role="pebble",
        label="pebble",
        name="pebble",
        sockets=[("tcp", PEBBLE_PORT), ("tcp", PEBBLE_MANAGEMENT)],
        log=logs / "pebble.log",
        user="nobody",
        bind_low_ports=True,
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
    )
    _fetch_pebble_root(lab, guest.netns)

    if not lego_has_provider(plan["certificates"]["acme"]["dnsProvider"]):
        _bridge(plan, paths, rec, proxy, lego_env(paths))
    log(
        f"lego: obtaining {', '.join(plan['certificates']['names'])} from Pebble "
        "(DNS-01 through the Cloudflare API stand-in)"
    )
    run_lego(plan, paths, runner, topo, "run")

    cert_plan = plan["certificates"]
    caddy_dir = files["caddy"]
    (caddy_dir / "Caddyfile").write_text(
        overlay.caddyfile(
            (caddy_dir / "Caddyfile.rendered").read_text(),
            cert=lab.out / "fullchain.pem",
            key=lab.out / "key.pem",
            storage=caddy_dir / "storage",
            rendered_cert=cert_plan["certFile"],
            rendered_key=cert_plan["keyFile"],
        )
    )
    return {**files, "root": lab.pebble_root}


# ---- checks (`tools lab test`) -------------------------------------------------------


def served_certificate(client: str, address: str, fqdn: str, cafile: str) -> x509.Certificate:
    """The leaf Caddy presents for ``fqdn``, verified against ``cafile`` only."""

    def get() -> bytes:
        ctx = ssl.create_default_context(cafile=cafile)
        with (
            socket.create_connection((address, 443), timeout=3) as raw,
            ctx.wrap_socket(raw, server_hostname=fqdn) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    return x509.load_der_x509_certificate(_in_netns(client, get))


def _names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def standin_records(paths: LabPaths, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The zone's records, asked of the Cloudflare API stand-in through its API."""
    lab = AcmeLab(paths.root / "acme")
    cfg = json.loads((lab.home / "standin" / "cloudflare.json").read_text())
    token = lab.token.read_text().strip()
    ctx = ssl.create_default_context(cafile=str(lab.lab_ca))

    def get() -> Any:
        req = urllib.request.Request(
            f"https://{SERVICES}/client/v4/zones/{cfg['zone_id']}/dns_records",
            headers={"Authorization": f"Bearer {token}", "Host": CLOUDFLARE_API},
        )
        ctx.check_hostname = False  # by address; the certificate is still verified
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:  # noqa: S310
            return json.loads(resp.read())

    body = _in_netns(machine(paths).netns, get)
    if not body.get("success"):
        raise UserError(f"tools lab: the Cloudflare API stand-in refused: {body}")
    return list(body["result"])


def api_calls(paths: LabPaths) -> list[tuple[str, str]]:
    lab = AcmeLab(paths.root / "acme")
    try:
        lines = lab.requests.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(d["method"], d["path"]) for d in map(json.loads, lines)]


def _challenge_txt(proxy_ns: str, plan: dict[str, Any]) -> list[str]:
    """TXT answers for _acme-challenge.<domain> at the zone's authority, asked where lego
    asks (the proxy)."""
    name = f"_acme-challenge.{plan['domain']}"
    return list(_in_netns(proxy_ns, lambda: resolve_txt(SERVICES, name)))


def resolve_txt(server: str, name: str, timeout: float = 2.0) -> list[str]:
    """The TXT strings ``server`` answers for ``name`` (plain UDP, in this thread's netns)."""
    ident, query = probes.dns_query(name, 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, 53))
        sock.send(query)
        data = sock.recv(4096)
    got_id, _flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if got_id != ident:
        raise OSError(f"DNS answer from {server} with the wrong id")
    pos = 12
    for _ in range(qd):
        pos = probes._skip_name(data, pos) + 4
    texts = []
    for _ in range(an):
        pos = probes._skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 16:
            rdata, text = data[pos : pos + rdlen], b""
            while rdata:
                text += rdata[1 : 1 + rdata[0]]
                rdata = rdata[1 + rdata[0] :]
            texts.append(text.decode())
        pos += rdlen
    return texts


def _reload_caddy(paths: LabPaths, topo: Topology, state: LabState) -> LabState:
    """The lab's `systemctl try-reload-or-restart caddy.service` (security.acme's
    reloadServices): Caddy runs with `admin off` here, so it is restarted."""
    from homestack.lab import lifecycle  # noqa: PLC0415 - lifecycle imports this module

    assert topo.proxy is not None
    old = [p for p in state.procs if p.role == "caddy"]
    netns.kill_all([p.pid for p in old], signal.SIGTERM)
    netns.kill_all(netns.wait_gone([p.pid for p in old], 5.0))
    kept = replace(state, procs=tuple(p for p in state.procs if p.role != "caddy"))
    rec = lifecycle._Recorder(paths, kept, threading.Lock())
    lifecycle._caddy(topo.proxy, paths, {"caddy": paths.root / "caddy"}, rec)
    save_state(paths, rec.state)
    return rec.state


def check(
    plan: dict[str, Any], paths: LabPaths, runner: Runner, topo: Topology, state: LabState
) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) for: the served certificate, the TXT clean-up, one renewal."""
    results: list[tuple[str, bool, str]] = []
    lab = AcmeLab(paths.root / "acme")
    proxy = topo.proxy
    if proxy is None:
        return [("proxy", False, "no proxy guest")]
    fqdn = plan["certificates"]["routeNames"][0]
    root = str(lab.pebble_root)
    wanted = sorted(plan["certificates"]["names"])

    def served(label: str) -> x509.Certificate | None:
        try:
            cert = served_certificate(topo.client.netns, proxy.address, fqdn, root)
        except (OSError, ssl.SSLError) as exc:
            results.append((label, False, f"https://{fqdn}/ with Pebble's root only: {exc}"))
            return None
        on_disk = x509.load_pem_x509_certificate((lab.out / "fullchain.pem").read_bytes())
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        ok = cert == on_disk and _names(cert) == wanted and "Pebble" in str(issuer)
        results.append(
            (
                label,
                ok,
                f"serial {cert.serial_number:x}, {', '.join(_names(cert))}, "
                f"issued by {issuer!s}"
                + ("" if cert == on_disk else ", NOT the file lego installed"),
            )
        )
        return cert

    def cleaned(label: str) -> None:
        try:
            left = [r for r in standin_records(paths, plan) if r["type"] == "TXT"]
            txt = _challenge_txt(proxy.netns, plan)
        except (OSError, ValueError) as exc:
            results.append((label, False, f"cannot ask the zone: {exc}"))
            return
        calls = api_calls(paths)
        created = sum(1 for m, _ in calls if m == "POST")
        deleted = sum(1 for m, _ in calls if m == "DELETE")
        ok = not left and not txt and created > 0 and created == deleted
        results.append(
            (
                label,
                ok,
                f"{created} TXT records created and {deleted} deleted "
                f"through the API; {len(left)} left in the zone, "
                f"{len(txt)} answered by its DNS",
            )
        )

    first = served("wildcard served by Caddy, Pebble's root the only trust anchor")
    cleaned("TXT challenge records cleaned up")
    try:
        run_lego(plan, paths, runner, topo, "renew")
    except UserError as exc:
        results.append(("renewal", False, str(exc)))
        return results
    renewed = x509.load_pem_x509_certificate((lab.out / "fullchain.pem").read_bytes())
    state = _reload_caddy(paths, topo, state)
    after = served("renewed certificate served after reloading Caddy")
    changed = (
        first is not None
        and after is not None
        and after.serial_number != first.serial_number
        and after == renewed
    )
    results.append(
        (
            f"renewal (lego renew --days {plan['certificates']['acme']['validMinDays']})",
            changed,
            f"serial {first.serial_number if first else 0:x} -> "
            f"{renewed.serial_number:x}, valid until "
            f"{renewed.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
    )
    cleaned("TXT challenge records cleaned up after the renewal")
    return results
