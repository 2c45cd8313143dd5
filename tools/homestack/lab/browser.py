"""`tools lab test --browser`: every route loaded by a real Chromium, as a user's browser would.

Debian's Chromium runs headless inside the lab's LAN namespace, as an unprivileged user,
with a fresh profile whose NSS database trusts only the lab's root. It is driven through
the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-terminated JSON on fds 3
and 4), so each page's verdict is what the browser itself reported: the `net::ERR_…` of a
failed navigation, or the response and its TLS security details. A control run without
the root must fail every page with an authority error.
"""

from __future__ import annotations

import base64
import fcntl
import html
import json
import os
import pwd
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homestack.errors import UserError
from homestack.fsutil import atomic_write
from homestack.lab.checks import Check
from homestack.lab.daemons import setpriv
from homestack.lab.state import LabPaths, load_state
from homestack.lab.topology import Topology
from homestack.process import Runner

CHROMIUM = "chromium"
CERTUTIL = "certutil"
USER = "nobody"
# Without the networking flags Chromium tries to reach Google's services, which the
# lab's namespaces cannot (and should not) do.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe", "--window-size=1280,800", "about:blank",
)  # fmt: skip
LOAD_TIMEOUT = 20.0
# What Chromium calls a certificate its trust store cannot anchor (net/base/net_error_list.h).
AUTHORITY_ERROR = "net::ERR_CERT_AUTHORITY_INVALID"
PAGE_SIZE = (620, 360)  # the page's part of the README picture, in CSS pixels


@dataclass(frozen=True)
class Page:
    """One navigation: loaded (with the TLS details the browser saw) or its net error."""

    url: str
    loaded: bool
    error: str = ""  # e.g. net::ERR_CERT_COMMON_NAME_INVALID
    status: int = 0
    security_state: str = ""  # Chromium's verdict on the page: secure, insecure, neutral
    tls: dict[str, Any] = field(default_factory=dict)  # Network.SecurityDetails
    screenshot: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "loaded": self.loaded,
            "error": self.error,
            "status": self.status,
            "securityState": self.security_state,
            "tls": self.tls,
        }


@dataclass(frozen=True)
class BrowserRun:
    """Every route loaded once with the lab's root trusted, once without (the control)."""

    version: str
    trusted: list[Page]
    control: list[Page]


class DevTools:
    """A DevTools protocol client over Chromium's pipe: one JSON message per NUL."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.proc = proc
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = LOAD_TIMEOUT,
    ) -> dict[str, Any]:
        """Call ``method`` and wait for its answer; events that arrive meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline, method):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise UserError(f"chromium: {method}: {reply['error'].get('message')}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                if "method" in reply:
                    self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float) -> dict[str, Any] | None:
        """The first (kept or new) event ``method`` of ``session``, or None at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            try:
                self.events += [e for e in self._read(deadline, method) if "method" in e]
            except TimeoutError:
                return None

    def drain(self, seconds: float) -> None:
        """Keep the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events += [e for e in self._read(deadline, "events") if "method" in e]
        except TimeoutError:
            return

    def _read(self, deadline: float, what: str) -> list[dict[str, Any]]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(what)
        ready, _, _ = select.select([self.from_browser], [], [], left)
        if not ready:
            raise TimeoutError(what)
        chunk = os.read(self.from_browser, 1 << 20)
        if not chunk:
            raise UserError(f"chromium exited (code {self.proc.poll()}) during {what}")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _user() -> tuple[int, int]:
    entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _profile(base: Path, root: Path | None, runner: Runner, netns: str) -> Path:
    """A fresh HOME owned by the browser's user, with an NSS database trusting only
    ``root`` (or nothing at all, for the control run)."""
    shutil.rmtree(base, ignore_errors=True)
    nssdb = base / "home" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    uid, gid = _user()
    as_user = ["ip", "netns", "exec", netns, *setpriv(USER)]
    for path in (base, *base.rglob("*")):
        os.chown(path, uid, gid)
    db = f"sql:{nssdb}"
    runner.run([*as_user, CERTUTIL, "-d", db, "-N", "--empty-password"], check=True)
    if root is not None:
        anchor = base / "root.pem"  # the user may not reach the lab's copy (or the checkout)
        shutil.copyfile(root, anchor)
        os.chown(anchor, uid, gid)
        runner.run(
            [
                *as_user,
                CERTUTIL,
                "-d",
                db,
                "-A",
                "-n",
                "Homestack lab root",
                "-t",
                "C,,",
                "-i",
                str(anchor),
            ],
            check=True,
        )
    return base


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved above 9, so the shell can put them on 3 and 4 safely."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved[0], moved[1]


@contextmanager
def chromium(netns: str, profile: Path) -> Iterator[DevTools]:
    """Chromium running headless in ``netns`` as the unprivileged user, driven by a pipe."""
    to_r, to_w = _high(os.pipe())
    from_r, from_w = _high(os.pipe())
    argv = [
        "ip",
        "netns",
        "exec",
        netns,
        *setpriv(USER),
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile / 'data'}",
    ]
    # Chromium reads commands on fd 3 and writes answers on fd 4.
    shell = f'exec 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&- "$@"'
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(profile / "home"),
        "LANG": "C.UTF-8",
    }
    with (profile / "chromium.log").open("ab") as log:
        proc = subprocess.Popen(
            ["bash", "-c", shell, "bash", *argv],
            pass_fds=(to_r, from_w),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    os.close(to_r)
    os.close(from_w)
    try:
        yield DevTools(proc, to_w, from_r)
    finally:
        os.close(to_w)
        os.close(from_r)
        try:
            proc.wait(timeout=5)  # Chromium quits when its pipe closes
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def load(tools: DevTools, url: str, *, screenshot: bool = False) -> Page:
    """Open ``url`` in a new tab and report what Chromium saw."""
    target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Page", "Network", "Security"):
        tools.send(f"{domain}.enable", session=session)
    if screenshot:  # a small window, so the page reads at the picture's scale
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": PAGE_SIZE[0],
                "height": PAGE_SIZE[1],
                "deviceScaleFactor": 1,
                "mobile": False,
            },
            session=session,
        )
    tools.events.clear()
    nav = tools.send("Page.navigate", {"url": url}, session=session)
    error = str(nav.get("errorText") or "")
    page = Page(url, loaded=False, error=error)
    if not error:
        tools.wait_for("Page.loadEventFired", session, LOAD_TIMEOUT)
        # The tab's security state comes in its own event, at times after the load.
        tools.wait_for("Security.visibleSecurityStateChanged", session, 1.0)
        tools.drain(0.1)
        page = _loaded(tools, session, url, nav.get("loaderId"))
        if screenshot and page.loaded:
            shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)
            page = Page(**{**page.__dict__, "screenshot": base64.b64decode(shot["data"])})
    tools.send("Target.closeTarget", {"targetId": target})
    return page


def _loaded(tools: DevTools, session: str, url: str, loader: object) -> Page:
    response: dict[str, Any] = {}
    failed = ""
    for event in tools.events:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if params.get("type") != "Document" or params.get("loaderId") != loader:
            continue
        if event["method"] == "Network.responseReceived":
            response = params["response"]
        elif event["method"] == "Network.loadingFailed":
            failed = params.get("errorText", "")
    # The document response's own verdict; the tab's visible state, when it has come, wins
    # (it is what the address bar would show).
    state = str(response.get("securityState", ""))
    for event in tools.events:
        if (
            event.get("method") == "Security.visibleSecurityStateChanged"
            and event.get("sessionId") == session
        ):
            state = event["params"]["visibleSecurityState"]["securityState"]
    if failed or not response:
        return Page(url, loaded=False, error=failed or "no response")
    return Page(
        url,
        loaded=True,
        status=int(response.get("status", 0)),
        security_state=state,
        tls=response.get("securityDetails", {}),
    )


def run(
    plan: dict[str, Any],
    netns: str,
    root: Path,
    workdir: Path,
    runner: Runner,
    *,
    screenshot: Path | None = None,
) -> BrowserRun:
    """Load every route with the lab's root trusted, then without it (the control)."""
    if shutil.which(CHROMIUM) is None or shutil.which(CERTUTIL) is None:
        raise UserError(
            "tools lab test --browser: needs chromium and certutil "
            "(Debian: apt-get install chromium libnss3-tools)"
        )
    urls = route_urls(plan)
    version = runner.run([CHROMIUM, "--version"], check=True).stdout.strip()
    runs: dict[str, list[Page]] = {}
    for name, anchor in (("trusted", root), ("control", None)):
        profile = _profile(workdir / name, anchor, runner, netns)
        with chromium(netns, profile) as tools:
            runs[name] = [
                load(tools, u, screenshot=screenshot is not None and i == 0 and anchor is not None)
                for i, u in enumerate(urls)
            ]
    result = BrowserRun(version, runs["trusted"], runs["control"])
    if screenshot is not None and result.trusted and result.trusted[0].loaded:
        atomic_write(screenshot, picture(result, workdir, netns, runner))
    return result


def lab_checks(
    plan: dict[str, Any], paths: LabPaths, runner: Runner, *, screenshot: Path | None = None
) -> list[Check]:
    """The browser's verdicts on a running lab, as `tools lab test` checks."""
    state = load_state(paths)
    if state is None or not state.complete:
        raise UserError("tools lab test: no lab is up (run `tools lab up` first)")
    client = Topology.from_plan(plan, paths.prefix).client.netns
    result = run(
        plan,
        client,
        Path(str(state.info["root"])),
        paths.root / "browser",
        runner,
        screenshot=screenshot,
    )
    found = [
        Check("browser", p.url, p.loaded and p.security_state == "secure", describe(p))
        for p in result.trusted
    ]
    found += [
        Check(
            "browser-control",
            f"{p.url} without the lab root",
            p.error == AUTHORITY_ERROR,
            p.error or "loaded: the control must fail",
        )
        for p in result.control
    ]
    return found


def describe(page: Page) -> str:
    """One line on what the browser saw."""
    if not page.loaded:
        return page.error
    tls = page.tls
    return (
        f"loaded, HTTP {page.status}, {page.security_state or 'no security state'}, "
        f"{tls.get('protocol', 'no TLS')}, issuer {tls.get('issuer', '?')}"
    )


def route_urls(plan: dict[str, Any]) -> list[str]:
    """One URL per route name, its first path (a wildcard path gets a probe name)."""
    seen: dict[str, str] = {}
    for route in plan.get("routes", []):
        path = (route.get("path") or "/").replace("/*", "/lab-probe").replace("*", "-lab-probe")
        seen.setdefault(route["fqdn"], path)
    return [f"https://{fqdn}{path}" for fqdn, path in seen.items()]


def picture(result: BrowserRun, workdir: Path, netns: str, runner: Runner) -> bytes:
    """A PNG of the first route as Chromium drew it, beside the security details Chromium
    reported for it through DevTools, composed and drawn by the same Chromium."""
    page = result.trusted[0]
    tls = page.tls
    valid = [
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(tls.get(k, 0))))
        for k in ("validFrom", "validTo")
    ]
    control = next((p.error for p in result.control if p.url == page.url), "")
    rows = [
        ("Browser", f"{result.version}, headless"),
        ("Trusted roots", "the lab's root only (fresh NSS database)"),
        ("Security state", page.security_state),
        ("HTTP status", str(page.status)),
        ("Protocol", str(tls.get("protocol", ""))),
        ("Key exchange", str(tls.get("keyExchangeGroup") or tls.get("keyExchange", ""))),
        ("Cipher", str(tls.get("cipher", ""))),
        ("Subject", str(tls.get("subjectName", ""))),
        ("Names (SAN)", ", ".join(tls.get("sanList", []))),
        ("Issuer", str(tls.get("issuer", ""))),
        ("Valid", f"{valid[0]} to {valid[1]}"),
        ("Without the root", control),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    image = base64.b64encode(page.screenshot).decode()
    doc = f"""<!doctype html><meta charset="utf-8"><style>
body{{margin:0;font:14px sans-serif;background:#eef1f4;display:flex;gap:16px;padding:16px}}
.page{{flex:0 0 {PAGE_SIZE[0]}px;background:#fff;border:1px solid #999;align-self:flex-start}}
.bar{{padding:8px 12px;border-bottom:1px solid #999;font:13px monospace;background:#f4f4f4}}
img{{display:block}}
.sec{{flex:1;background:#fff;border:1px solid #999;padding:10px 16px}}
th{{text-align:left;vertical-align:top;padding:3px 12px 3px 0;white-space:nowrap;color:#444}}
td{{font-family:monospace;word-break:break-all;padding:3px 0}}
h2{{font-size:15px;margin:4px 0 8px}}</style>
<div class="page"><div class="bar">{html.escape(page.url)}</div>
<img src="data:image/png;base64,{image}"></div>
<div class="sec"><h2>What Chromium reported for this page (DevTools protocol)</h2>
<table>{table}</table></div>"""
    profile = _profile(workdir / "picture", None, runner, netns)
    with chromium(netns, profile) as tools:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": PAGE_SIZE[1] + 80, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        frame = tools.send("Page.getFrameTree", session=session)["frameTree"]["frame"]["id"]
        tools.send("Page.setDocumentContent", {"frameId": frame, "html": doc}, session=session)
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)
    return base64.b64decode(shot["data"])
