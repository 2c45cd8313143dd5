"""LAB STAND-IN: the authoritative DNS server of the lab's ACME zone (not Cloudflare's DNS).

It answers what lego's and Pebble's DNS-01 checks ask: SOA and NS of the zone, A records of
the lab's stand-in hosts (the name server, `api.cloudflare.com`), and the zone's TXT records
as the Cloudflare API stand-in stored them in its state file, read afresh on each query.
Standard library only; run as `python3 -I dns_authority.py CONFIG.json`.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

A, NS, SOA, TXT = 1, 2, 6, 16
NOERROR, NXDOMAIN, REFUSED = 0, 3, 5


def parse_question(msg: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of the question) of a query."""
    ident, flags = struct.unpack(">HH", msg[:4])
    pos, labels = 12, []
    while msg[pos]:
        length = msg[pos]
        labels.append(msg[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    qtype, _qclass = struct.unpack(">HH", msg[pos + 1 : pos + 5])
    return ident, flags, ".".join(labels).lower(), qtype, pos + 5


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def rr(name: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return encode_name(name) + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def txt_strings(content: str) -> list[str]:
    """A TXT record's content as the API stores it, in its character-strings: quoted
    strings (`"a" "b"`, what lego sends) are unquoted, as Cloudflare's DNS serves them."""
    text = content.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return [part.replace('\\"', '"') for part in re.findall(r'"((?:[^"\\]|\\.)*)"', text)]
    return [text[i : i + 255] for i in range(0, max(len(text), 1), 255)]


def txt_rdata(content: str) -> bytes:
    return b"".join(bytes([len(p.encode())]) + p.encode() for p in txt_strings(content))


class Zone:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.zone: str = cfg["zone"].lower().strip(".")
        self.ns: str = cfg["nameserver"].lower()
        self.hosts: dict[str, str] = {k.lower(): v for k, v in cfg["hosts"].items()}
        self.records = Path(cfg["records"])

    def soa(self) -> bytes:
        rdata = (
            encode_name(self.ns)
            + encode_name(f"hostmaster.{self.zone}")
            + struct.pack(">IIIII", 1, 3600, 600, 86400, 60)
        )
        return rr(self.zone, SOA, 60, rdata)

    def txt(self, name: str) -> list[str]:
        try:
            records = json.loads(self.records.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [
            r["content"]
            for r in records
            if r["type"] == "TXT" and r["name"].lower().strip(".") == name
        ]

    def answer(  # noqa: PLR0911 - one return per kind of answer
        self, name: str, qtype: int
    ) -> tuple[int, list[bytes], list[bytes], bool]:
        """(rcode, answers, authority section, authoritative)."""
        if name in self.hosts:
            if qtype == A:
                return NOERROR, [rr(name, A, 60, socket.inet_aton(self.hosts[name]))], [], True
            return NOERROR, [], [], True
        in_zone = name == self.zone or name.endswith("." + self.zone)
        if not in_zone:
            return REFUSED, [], [], False
        if name == self.zone and qtype == SOA:
            return NOERROR, [self.soa()], [], True
        if name == self.zone and qtype == NS:
            return NOERROR, [rr(self.zone, NS, 60, encode_name(self.ns))], [], True
        texts = self.txt(name)
        if qtype == TXT and texts:
            return NOERROR, [rr(name, TXT, 60, txt_rdata(t)) for t in texts], [], True
        exists = name == self.zone or texts
        return (NOERROR if exists else NXDOMAIN), [], [self.soa()], True


def respond(zone: Zone, msg: bytes) -> bytes:
    ident, flags, name, qtype, end = parse_question(msg)
    rcode, answers, authority, aa = zone.answer(name, qtype)
    out_flags = 0x8000 | (flags & 0x0100) | (0x0400 if aa else 0) | rcode
    head = struct.pack(">HHHHHH", ident, out_flags, 1, len(answers), len(authority), 0)
    return head + msg[12:end] + b"".join(answers) + b"".join(authority)


def serve_tcp(sock: socket.socket, zone: Zone) -> None:
    while True:
        conn, _ = sock.accept()
        try:
            conn.settimeout(3)
            size = struct.unpack(">H", conn.recv(2, socket.MSG_WAITALL))[0]
            reply = respond(zone, conn.recv(size, socket.MSG_WAITALL))
            conn.sendall(struct.pack(">H", len(reply)) + reply)
        except (OSError, struct.error, IndexError):
            pass
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[1]).read_text())
    zone = Zone(cfg)
    udps = []
    for address in cfg["listen"]:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((address, 53))
        udps.append(u)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((address, 53))
        t.listen(4096)  # as the stand-ins: the matrix probes port 53 from many guests at once
        threading.Thread(target=serve_tcp, args=(t, zone), daemon=True).start()

    def serve_udp(u: socket.socket) -> None:
        while True:
            data, peer = u.recvfrom(4096)
            try:
                u.sendto(respond(zone, data), peer)
            except (IndexError, struct.error):
                continue

    for u in udps[1:]:
        threading.Thread(target=serve_udp, args=(u,), daemon=True).start()
    serve_udp(udps[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
