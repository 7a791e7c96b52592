"""The daemons' own small web server: ``/metrics``, ``/healthz``, ``/readyz`` and a status page.

``--metrics HOST:PORT`` on ``watch`` and ``relay`` serves it (loopback in
every example: it is meant for a local Prometheus or an SSH tunnel).  What
it shows comes from a ``Source`` (``logbook.monitor.Monitor``): a snapshot
of the store's figures and the process's counters, and how long ago the
daemon's loop last turned.  It shows counts, ages, times and relay client
names; never a job's content, a key or a password (errors are redacted
before they are kept).

The page is rendered here, as HTML with its style inline and no script: it
refreshes itself with a ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import html
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..health import Snapshot, age_text, exposition, oldest_age, timestamp
from ..vocab import STATES

log = logging.getLogger("logbook.metrics")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds between the page's own reloads.
PAGE_REFRESH = 15
#: Entry counts that need someone when they are not 0: shown in amber.
_WATCHED = frozenset({"pending", "sending", "rejected", "unconfirmed", "missing"})


class Source(Protocol):
    role: str
    #: A loop that has not turned for this long is stuck: /healthz answers 503.
    stuck_after: float

    async def snapshot(self) -> Snapshot: ...

    def loop_age(self) -> float: ...


class ClientRequests:
    """The relay's requests by client (a relay key's name; "" without a valid key) and status
    code, and when each client was last heard from."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seen: dict[str, float] = {}

    def add(self, client: str, status: int) -> None:
        self.counts[(client, str(status))] += 1
        self.seen[client] = time.time()


def count_requests(book: ClientRequests, who: Callable[[web.Request], str | None]) -> Middleware:
    """A middleware that counts every answer in ``book`` (``who``: the client's name when the
    request did not get as far as the route that learns it, e.g. a 429 for its share)."""

    @web.middleware
    async def counting(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            client = request.get("client")
            book.add(client if isinstance(client, str) else who(request) or "", status)

    return counting


def app(source: Source) -> web.Application:
    """The routes over a ``Source``."""
    routes = Routes(source)
    application = web.Application()
    application.router.add_get("/metrics", routes.metrics)
    application.router.add_get("/healthz", routes.healthz)
    application.router.add_get("/readyz", routes.readyz)
    application.router.add_get("/", routes.page)
    return application


async def start(source: Source, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve ``app(source)`` on the running loop; the runner (to clean up) and the base URL."""
    runner = web.AppRunner(app(source), access_log=None, handle_signals=False)
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return runner, f"http://{shown}:{sock.getsockname()[1]}"


def _text(status: int, line: str) -> web.Response:
    return web.Response(status=status, text=line + "\n", content_type="text/plain")


class Routes:
    def __init__(self, source: Source) -> None:
        self.source = source

    async def _snapshot(self) -> Snapshot | web.Response:
        try:
            return await self.source.snapshot()
        except Exception as err:  # noqa: BLE001 - the store may be busy or gone: say so
            log.debug("cannot read the figures", exc_info=True)
            return _text(503, f"cannot read the store's figures now: {type(err).__name__}")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        body, content_type = exposition(snap, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        age = self.source.loop_age()
        if age > self.source.stuck_after:
            return _text(503, f"stuck: the {self.source.role} loop has not turned for"
                              f" {age_text(age)}")  # fmt: skip
        return _text(200, f"ok: the {self.source.role} loop runs")

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        v = snap.verdict
        return _text(200 if v.ready else 503, v.line)

    async def page(self, request: web.Request) -> web.StreamResponse:
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        return web.Response(text=render(snap), content_type="text/html", charset="utf-8")


# --- the status page --------------------------------------------------------------------------


def _clock(when: float | None) -> str:
    if when is None:
        return "?"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _when(iso_or_ts: str | float | None, now: float, never: str = "never") -> str:
    when = timestamp(iso_or_ts) if isinstance(iso_or_ts, str) or iso_or_ts is None else iso_or_ts
    if when is None:
        return f'<span class="dim">{never}</span>'
    return f'{age_text(now - when)} ago <span class="dim">({_clock(when)})</span>'


def _rows(rows: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)


def _delivery(snap: Snapshot) -> str:
    f, now = snap.figures, snap.now
    oldest = (
        f"{age_text(oldest_age(f, now))} old"
        f' <span class="dim">(recorded {_clock(timestamp(f.oldest_undelivered))})</span>'
        if f.undelivered
        else '<span class="dim">none</span>'
    )
    rows = [
        ("Undelivered", f"<b>{f.undelivered:,}</b>"),
        ("Oldest undelivered", oldest),
        ("Last delivery", _when(f.last_delivery, now)),
        ("Last upstream contact", _when(f.last_contact, now)),
        ("Last sync run", _when(f.last_sync, now)),
        ("Max lag", age_text(snap.max_lag)),
    ]
    return f"<section><h2>Delivery</h2><table>{_rows(rows)}</table></section>"


def _entries(snap: Snapshot) -> str:
    f = snap.figures
    cells = [(s, f.counts.get(s, 0)) for s in STATES]
    cells += [("unconfirmed", f.unconfirmed), ("missing", f.missing)]
    tiles = "".join(
        f'<div class="tile{" warn" if n and s in _WATCHED else ""}"><div class="num">{n:,}</div>'
        f'<div class="dim">{html.escape(s)}</div></div>'
        for s, n in cells
    )
    return f'<section><h2>Entries</h2><div class="tiles">{tiles}</div></section>'


def _codes(counts: dict[str, int]) -> str:
    if not counts:
        return '<span class="dim">none yet</span>'
    return ", ".join(
        f'<span class="code c{html.escape(code[:1])}">{html.escape(code)}</span>&nbsp;{n:,}'
        for code, n in sorted(counts.items())
    )


def _clients(snap: Snapshot) -> str:
    if snap.relay_requests is None:
        return ""
    by_client: dict[str, dict[str, int]] = {}
    for (client, code), n in snap.relay_requests.items():
        by_client.setdefault(client, {})[code] = n
    if not by_client:
        body = '<p class="dim">No lab machine has sent a request yet.</p>'
    else:
        rows = "".join(
            f"<tr><th>{html.escape(c) if c else '<i>no valid key</i>'}</th>"
            f"<td>{_when(snap.clients_seen.get(c), snap.now)}</td>"
            f"<td>{_codes(by_client[c])}</td></tr>"
            for c in sorted(by_client)
        )
        body = (
            "<table><tr><th>client (relay key)</th><th>last request</th>"
            f"<th>answers by status</th></tr>{rows}</table>"
        )
    return f"<section><h2>Lab machines</h2>{body}</section>"


def _errors(snap: Snapshot) -> str:
    if not snap.errors:
        body = '<p class="dim">No warnings or errors since the start.</p>'
    else:
        rows = "".join(
            f'<tr><td class="nowrap">{_when(float(t), snap.now)}</td>'
            f'<td><span class="lvl {html.escape(level)}">{html.escape(level)}</span></td>'
            f'<td class="msg">{html.escape(message)}</td></tr>'
            for t, level, message in reversed(snap.errors)
        )
        body = f"<table>{rows}</table>"
    return f"<section><h2>Last warnings and errors</h2>{body}</section>"


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:0;background:#f4f5f7;color:#1c2230}
header{background:#1c2230;color:#fff;padding:16px 28px}
header h1{font-size:20px;margin:0}
header .dim{color:#aab2c0}
main{max-width:980px;margin:0 auto;padding:20px 28px}
.verdict{padding:14px 18px;border-radius:8px;font-weight:600;margin-bottom:18px;font-size:16px}
.ok{background:#e2f3e7;color:#155a2b;border:1px solid #9ed5ae}
.bad{background:#fbe6e6;color:#8b1a1a;border:1px solid #eda8a8}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 18px;
margin-bottom:16px}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:#596173;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eef0f4;vertical-align:top}
th{font-weight:600;width:30%}
.dim{color:#7a8191}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{flex:1 1 110px;border:1px solid #e6e9ef;border-radius:6px;padding:8px 12px}
.num{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.warn{background:#fff8e8;border-color:#f0d9a8}
.code{display:inline-block;border-radius:4px;padding:0 6px;font-weight:600;font-size:13px;
background:#eef0f4}
.c2{background:#e2f3e7;color:#155a2b}.c4{background:#fff1d6;color:#7a4b00}
.c5,.ce{background:#fbe6e6;color:#8b1a1a}
.lvl{font-size:12px;font-weight:600;text-transform:uppercase}
.warning{color:#7a4b00}.error,.critical{color:#8b1a1a}
.msg{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px;word-break:break-word}
.nowrap{white-space:nowrap;width:1%}
footer{color:#7a8191;font-size:13px;padding-bottom:24px}
a{color:#2b5cb8}
"""


def render(snap: Snapshot) -> str:
    """The status page of one snapshot: the verdict first, then the figures."""
    v = snap.verdict
    host = html.escape(socket.gethostname())
    what = {"relay": "logbook relay", "watch": "logbook watch"}.get(snap.role, "logbook")
    requests = (
        f"<section><h2>Requests {'upstream' if snap.role == 'relay' else 'to the API'}</h2>"
        f"<p>{_codes(dict(snap.requests))}</p></section>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{PAGE_REFRESH}">
<title>{what} on {host}: {"ready" if v.ready else "NOT READY"}</title>
<style>{_STYLE}</style></head>
<body><header><h1>{what} <span class="dim">on {host}</span></h1>
<div class="dim">version {html.escape(snap.version)} &middot; pid {os.getpid()}</div></header>
<main>
<div class="verdict {"ok" if v.ready else "bad"}">{html.escape(v.line)}</div>
{_delivery(snap)}
{_entries(snap)}
{requests}
{_clients(snap)}
{_errors(snap)}
<footer>As of {datetime.fromtimestamp(snap.now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")}; this page
reloads every {PAGE_REFRESH} s. Also: <a href="/metrics">/metrics</a> (Prometheus),
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</footer>
</main></body></html>
"""
