"""The real lego Cloudflare DNS provider, for lego runs whose build lacks it (lab only).

Debian builds lego without its Cloudflare provider (Debian bug #968964: its dependencies are
not packaged), so `lego --dns cloudflare` fails there with "unrecognized DNS provider".
The lab then runs the real lego CLI with `--dns exec` (EXEC_MODE=RAW), and this daemon
answers those calls with lego's own Cloudflare provider, compiled into the `lego_bridge`
module that the certbot-dns-multi wheel ships (go-acme/lego v5). It is a daemon, not a
per-call program, because the provider remembers each TXT record's ID between Present and
CleanUp, exactly as it does inside one lego process.

  daemon:  python3 lego_dns_bridge.py serve CONFIG.json
  exec:    python3 -I lego_dns_bridge.py present|cleanup -- DOMAIN TOKEN KEY_AUTH
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any


def serve(config: Path) -> int:
    from lego_bridge import cmd  # noqa: PLC0415 - only the daemon needs the Go module

    cfg = json.loads(config.read_text())
    # The provider reads the same variables as `lego --dns cloudflare` (CLOUDFLARE_*).
    credentials = {k: v for k, v in os.environ.items() if k.startswith(("CLOUDFLARE_", "CF_"))}
    configured = json.loads(
        cmd(
            json.dumps(
                {
                    "action": "configure",
                    "provider": cfg["provider"],
                    "credentials": credentials,
                    "nameservers": cfg["nameservers"],
                }
            )
        )
    )
    if not configured["success"]:
        print(f"lego_dns_bridge: {configured['error']}", file=sys.stderr)
        return 1
    sock_path = Path(cfg["socket"])
    sock_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    sock_path.chmod(0o600)
    server.listen(8)
    print(f"lego_dns_bridge: {cfg['provider']} provider ready on {sock_path}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            request: dict[str, Any] = json.loads(conn.makefile("rb").readline())
            action = {"present": "perform", "cleanup": "cleanup"}[request["action"]]
            answer = cmd(
                json.dumps(
                    {
                        "action": action,
                        "domain": request["domain"],
                        "token": request["token"],
                        "key_authorization": request["key_auth"],
                    }
                )
            )
            print(f"lego_dns_bridge: {request['action']} {request['domain']}: {answer}", flush=True)
            conn.sendall(answer.encode() + b"\n")


def call(argv: list[str]) -> int:
    """lego's exec provider in RAW mode: `present|cleanup -- DOMAIN TOKEN KEY_AUTH`."""
    args = [a for a in argv[1:] if a != "--"]
    action, domain, token, key_auth = args[0], args[1], args[2], args[3]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(os.environ["HOMESTACK_LAB_DNS_BRIDGE"])
        sock.sendall(
            json.dumps(
                {"action": action, "domain": domain, "token": token, "key_auth": key_auth}
            ).encode()
            + b"\n"
        )
        answer = json.loads(sock.makefile("rb").readline())
    if not answer["success"]:
        print(f"cloudflare: {answer['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(Path(sys.argv[2])))
    sys.exit(call(sys.argv))
