"""Stand-in listeners for one guest: a separate process per guest, standard library only.

Services Debian does not package (PocketID, NetBird, ...) are stood in for by this small
server on their addresses and ports: it answers HTTP/1.1 and cleartext HTTP/2 (h2c, as
Caddy speaks to gRPC upstreams) with 200 and a JSON body naming the guest and port, serves
OIDC discovery, and echoes UDP datagrams. Every other port of the plan that no real daemon
serves gets the same listener, so a refused probe always means a firewall, never "nothing
listens". Run as `python3 -I standins.py CONFIG.json`.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Config:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.guest: str = raw["guest"]
        self.label: str = raw["label"]
        self.address: str = raw["address"]
        self.tcp: list[int] = raw["tcp"]
        self.udp: list[int] = raw["udp"]
        self.issuer: str = raw.get("issuer", "")


def body_for(cfg: Config, port: int, path: str) -> bytes:
    if path.split("?", maxsplit=1)[0].endswith("/.well-known/openid-configuration") and cfg.issuer:
        doc: dict[str, Any] = {
            "issuer": cfg.issuer,
            "authorization_endpoint": f"{cfg.issuer}/authorize",
            "token_endpoint": f"{cfg.issuer}/api/oidc/token",
            "userinfo_endpoint": f"{cfg.issuer}/api/oidc/userinfo",
            "jwks_uri": f"{cfg.issuer}/.well-known/jwks.json",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }
    else:
        doc = {"standin": cfg.label, "guest": cfg.guest, "port": port, "path": path, "status": "ok"}
    return json.dumps(doc).encode()


def make_handler(cfg: Config, port: int) -> type[BaseHTTPRequestHandler]:
    # Imported on the first HTTP request: most listeners only ever see the matrix's probes,
    # and a lab starts one of these processes per machine.
    from http.server import BaseHTTPRequestHandler  # noqa: PLC0415

    class Handler(BaseHTTPRequestHandler):
        server_version = "homestack-lab-standin"
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            body = body_for(cfg, port, self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Homestack-Lab-Upstream", f"{cfg.guest}:{port}")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def serve_h2(conn: socket.socket, cfg: Config, port: int) -> None:
    """Just enough HTTP/2 to answer each request with 200 (no HPACK state, no flow control)."""
    buf = conn.recv(len(H2_PREFACE), socket.MSG_WAITALL)
    if buf != H2_PREFACE:
        return
    conn.sendall(_frame(4, 0, 0))
    answered: set[int] = set()
    while True:
        head = conn.recv(9, socket.MSG_WAITALL)
        if len(head) < 9:
            return
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = conn.recv(length, socket.MSG_WAITALL) if length else b""
        if kind == 4 and not flags & 1:
            conn.sendall(_frame(4, 1, 0))
        elif kind == 6 and not flags & 1:
            conn.sendall(_frame(6, 1, 0, payload))
        elif kind == 7:
            return
        elif kind == 1 and stream not in answered:
            answered.add(stream)
            body = body_for(cfg, port, "(h2)")
            headers = (
                b"\x88"
                + _literal(b"content-type", b"application/json")
                + _literal(b"x-homestack-lab-upstream", f"{cfg.guest}:{port}".encode())
            )
            conn.sendall(_frame(1, 4, stream, headers) + _frame(0, 1, stream, body))


def handle(conn: socket.socket, cfg: Config, port: int) -> None:
    try:
        conn.settimeout(5)
        first = conn.recv(len(H2_PREFACE), socket.MSG_PEEK)
        if not first:
            return
        if H2_PREFACE.startswith(first[: len(H2_PREFACE)]) and first.startswith(b"PRI"):
            serve_h2(conn, cfg, port)
            return
        rfile = conn.makefile("rb")
        wfile = conn.makefile("wb")

        class _Server:
            server_name = cfg.guest
            server_port = port

        handler_cls = make_handler(cfg, port)
        handler = handler_cls.__new__(handler_cls)
        handler.rfile, handler.wfile = rfile, wfile
        handler.client_address = conn.getpeername()
        handler.server = _Server()  # type: ignore[assignment]
        handler.request = conn
        handler.close_connection = True
        handler.handle_one_request()
        while not handler.close_connection:
            handler.handle_one_request()
        wfile.flush()
    except OSError:
        pass
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    with open(argv[1]) as handle_file:  # noqa: PTH123 (pathlib: start-up time, see above)
        cfg = Config(json.load(handle_file))
    sel = selectors.DefaultSelector()
    for port in cfg.tcp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.address, port))
        # The matrix opens thousands of connections at once: a short accept queue would
        # drop some and make a reachable port look filtered (the sweep would see it).
        sock.listen(4096)
        sel.register(sock, selectors.EVENT_READ, ("tcp", port))
    for port in cfg.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((cfg.address, port))
        sel.register(sock, selectors.EVENT_READ, ("udp", port))
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            sock = key.fileobj  # type: ignore[assignment]
            assert isinstance(sock, socket.socket)
            if kind == "tcp":
                conn, _ = sock.accept()
                threading.Thread(target=handle, args=(conn, cfg, port), daemon=True).start()
            else:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
