"""LAB STAND-IN, NOT CLOUDFLARE: the few Cloudflare API v4 endpoints lego's DNS-01 uses.

Served as `https://api.cloudflare.com` inside the lab only (the lab's DNS maps that name
here; the TLS certificate comes from a lab-only CA that lego is told to trust). Endpoints,
written from Cloudflare's API documentation (developers.cloudflare.com/api, "Zones" and
"DNS Records for a Zone"), each answering with the documented envelope
{success, errors, messages, result[, result_info]}:

  GET    /client/v4/zones?name=ZONE                   list zones (lego: zone ID by name)
  GET    /client/v4/zones/ID/dns_records              list records (the lab's checks)
  POST   /client/v4/zones/ID/dns_records              create a record (the TXT challenge)
  DELETE /client/v4/zones/ID/dns_records/RECORD_ID    delete it (lego's clean-up)

Every request must carry `Authorization: Bearer <the lab's token>`. Records are kept in a
JSON file, which the lab's DNS authority serves. Run as `python3 -I cloudflare_standin.py
CONFIG.json`; standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/client/v4"


class Store:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.zone_name: str = cfg["zone"]
        self.zone_id: str = cfg["zone_id"]
        self.token: str = Path(cfg["token_file"]).read_text().strip()
        self.path = Path(cfg["records"])
        self.log = Path(cfg["requests"])
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records))
        tmp.replace(self.path)

    def note(self, line: dict[str, Any]) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(line) + "\n")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(result: Any, *, info: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        body["result_info"] = info
    return body


def failure(code: int, message: str) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


def page_info(items: list[Any]) -> dict[str, int]:
    return {
        "page": 1,
        "per_page": 50,
        "count": len(items),
        "total_count": len(items),
        "total_pages": 1,
    }


def zone_doc(store: Store) -> dict[str, Any]:
    return {
        "id": store.zone_id,
        "name": store.zone_name,
        "status": "active",
        "paused": False,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ns.homestack-lab.test"],
        "original_name_servers": None,
        "original_registrar": None,
        "original_dnshost": None,
        "created_on": now(),
        "modified_on": now(),
        "activated_on": now(),
        "meta": {"step": 4, "phishing_detected": False},
        "owner": {"id": None, "type": "user", "email": None},
        "account": {"id": "0" * 32, "name": "homestack lab"},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
        "plan": {
            "id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            "name": "Free Website",
            "price": 0,
            "currency": "USD",
            "frequency": "",
            "is_subscribed": False,
            "can_subscribe": False,
            "legacy_id": "free",
            "legacy_discount": False,
            "externally_managed": False,
        },
    }


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "homestack-lab-cloudflare-standin"
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("X-Homestack-Lab", "Cloudflare API stand-in, not Cloudflare")
            self.end_headers()
            self.wfile.write(raw)

        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = url.path.removeprefix(PREFIX).strip("/").split("/")
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            store.note({"method": self.command, "path": url.path, "query": query})
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {store.token}":
                # The API's answer to a missing or wrong token (error 9109 in its docs).
                self._send(403, failure(9109, "Invalid access token"))
                return
            if not url.path.startswith(PREFIX + "/zones"):
                self._send(404, failure(7003, "Could not route to " + url.path))
                return
            if parts == ["zones"] and self.command == "GET":
                zones = (
                    [zone_doc(store)]
                    if query.get("name", store.zone_name) == store.zone_name
                    else []
                )
                self._send(200, envelope(zones, info=page_info(zones)))
                return
            if len(parts) < 3 or parts[1] != store.zone_id or parts[2] != "dns_records":
                self._send(404, failure(7003, "Could not route to " + url.path))
                return
            with store.lock:
                if len(parts) == 3 and self.command == "GET":
                    found = [
                        r
                        for r in store.records
                        if query.get("type", r["type"]) == r["type"]
                        and query.get("name", r["name"]) == r["name"]
                    ]
                    self._send(200, envelope(found, info=page_info(found)))
                elif len(parts) == 3 and self.command == "POST":
                    length = int(self.headers.get("Content-Length", "0"))
                    try:
                        asked = json.loads(self.rfile.read(length))
                        record = {
                            "id": secrets.token_hex(16),
                            "zone_id": store.zone_id,
                            "zone_name": store.zone_name,
                            "name": asked["name"],
                            "type": asked["type"],
                            "content": asked["content"],
                            "proxiable": False,
                            "proxied": False,
                            "ttl": int(asked.get("ttl") or 1),
                            "locked": False,
                            "meta": {
                                "auto_added": False,
                                "managed_by_apps": False,
                                "managed_by_argo_tunnel": False,
                                "source": "primary",
                            },
                            "created_on": now(),
                            "modified_on": now(),
                        }
                    except (KeyError, ValueError, TypeError):
                        self._send(400, failure(9207, "Request body is invalid."))
                        return
                    store.records.append(record)
                    store.save()
                    self._send(200, envelope(record))
                elif len(parts) == 4 and self.command == "DELETE":
                    kept = [r for r in store.records if r["id"] != parts[3]]
                    if len(kept) == len(store.records):
                        self._send(404, failure(81044, "Record does not exist."))
                        return
                    store.records = kept
                    store.save()
                    self._send(200, envelope({"id": parts[3]}))
                else:
                    self._send(405, failure(10000, "Method not allowed"))

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _route

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[1]).read_text())
    store = Store(cfg)
    server = ThreadingHTTPServer((cfg["address"], 443), make_handler(store))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["cert"], cfg["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
