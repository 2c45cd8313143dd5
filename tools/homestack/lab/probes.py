"""Network probes run from inside a lab namespace: TCP connect, UDP request/answer, DNS, HTTPS.

Each probe runs on a worker thread that first moves itself into the source namespace, so
hundreds of probes run concurrently from one process.
"""

from __future__ import annotations

import errno
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass

from homestack.lab import netns

OPEN, REFUSED, DROPPED = "open", "refused", "dropped"


def _mark(sock: socket.socket, routed: bool) -> None:
    """A routed probe takes a source port the lab's guests route through the gateway."""
    if not routed:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    low, high = netns.ROUTED_PORTS
    for _ in range(64):  # probes run concurrently: another may hold the port just drawn
        try:
            sock.bind(("", low + secrets.randbelow(high - low + 1)))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return
    raise OSError(errno.EADDRINUSE, "no free source port for a routed probe")


def tcp(src_netns: str, address: str, port: int, timeout: float, *, routed: bool = False) -> str:
    """Whether a TCP connection from ``src_netns`` to address:port is accepted."""
    netns.enter(src_netns)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        _mark(sock, routed)
        sock.settimeout(timeout)
        try:
            code = sock.connect_ex((address, port))
        except TimeoutError:
            return DROPPED
        except OSError:
            return REFUSED
    if code == 0:
        return OPEN
    return (
        REFUSED if code in {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH} else DROPPED
    )


def udp(src_netns: str, address: str, port: int, timeout: float, *, routed: bool = False) -> str:
    """Whether a UDP request gets an answer (a DNS query: servers and echo listeners reply)."""
    netns.enter(src_netns)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _mark(sock, routed)
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.send(dns_query("probe.invalid")[1])
            sock.recv(4096)
        except TimeoutError:
            return DROPPED
        except OSError:
            return REFUSED
    return OPEN


def dns_query(name: str, qtype: int = 1) -> tuple[int, bytes]:
    ident = secrets.randbelow(0xFFFF)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return ident, struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack(
        ">HH", qtype, 1
    )


@dataclass(frozen=True)
class DnsAnswer:
    rcode: int
    addresses: tuple[str, ...]


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += length + 1


def resolve(src_netns: str, server: str, name: str, timeout: float = 2.0) -> DnsAnswer:
    """Ask ``server`` for the A records of ``name`` (plain UDP, no recursion needed)."""
    netns.enter(src_netns)
    ident, query = dns_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, 53))
        sock.send(query)
        data = sock.recv(4096)
    got_id, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if got_id != ident:
        return DnsAnswer(-1, ())
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addresses.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return DnsAnswer(flags & 0xF, tuple(sorted(addresses)))


@dataclass(frozen=True)
class PgHello:
    """What a PostgreSQL server answers to a startup message, before any password."""

    kind: str  # "auth" (it asks for a password: pg_hba let the client in), "error", "none"
    code: str  # the SQLSTATE of an error
    message: str


def pg_hello(
    src_netns: str, address: str, port: int, *, user: str, database: str, timeout: float = 3.0
) -> PgHello:
    """Send a PostgreSQL startup message (protocol 3.0, no TLS) from ``src_netns`` and read
    the server's first answer: pg_hba decides between a password request and an error."""
    netns.enter(src_netns)
    params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in
                      ((b"user", user), (b"database", database))) + b"\0"  # fmt: skip
    startup = struct.pack(">II", 8 + len(params), 196608) + params
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(startup)
            head = sock.recv(5, socket.MSG_WAITALL)
            if len(head) < 5:
                return PgHello("none", "", "the server closed the connection")
            kind, length = head[:1], struct.unpack(">I", head[1:])[0]
            body = sock.recv(min(length - 4, 65536), socket.MSG_WAITALL)
    except TimeoutError:
        return PgHello("none", "", f"no answer from {address}:{port} within {timeout:g} s")
    except OSError as exc:
        return PgHello("none", "", f"{address}:{port}: {exc.strerror or exc}")
    if kind == b"R":
        return PgHello("auth", "", "asked for authentication")
    if kind != b"E":
        return PgHello("none", "", f"unexpected first message {kind!r}")
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return PgHello("error", fields.get(b"C", ""), fields.get(b"M", ""))


@dataclass(frozen=True)
class HttpsAnswer:
    ok: bool
    status: int
    upstream: str
    error: str


def https_get(
    src_netns: str, address: str, host: str, path: str, *, cafile: str | None, timeout: float = 3.0
) -> HttpsAnswer:
    """GET https://host/path from ``src_netns`` (connecting to ``address``), trusting only
    ``cafile``, or the system's trust store when ``cafile`` is None."""
    netns.enter(src_netns)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    raw: socket.socket | None = None
    try:  # a proxy that is down or filtered is a failed check, not a crash
        raw = socket.create_connection((address, 443), timeout=timeout)
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                "User-Agent: homestack-lab\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    except ssl.SSLCertVerificationError as exc:
        return HttpsAnswer(False, 0, "", f"certificate rejected: {exc.verify_message}")
    except TimeoutError:
        return HttpsAnswer(False, 0, "", f"no answer from {address}:443 within {timeout:g} s")
    except (OSError, ssl.SSLError) as exc:
        return HttpsAnswer(False, 0, "", f"{address}:443: {exc.strerror or exc}")
    finally:
        if raw is not None:
            raw.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return HttpsAnswer(False, 0, "", f"bad response {head[:1]}")
    upstream = ""
    for line in head[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "x-homestack-lab-upstream":
            upstream = value.strip()
    return HttpsAnswer(True, status, upstream, "")
