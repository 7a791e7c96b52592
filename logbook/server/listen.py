"""Accepting connections with the limits aiohttp's server lacks, for servers that run for months.

aiohttp's server has no cap on connections (per address or in all) and no
header timeout of its own; asyncio's ``create_server`` accepts a backlog's
worth of sockets before any protocol object exists, so a cap checked there
comes too late to keep descriptors, and when descriptors run out its accept
loop logs a traceback on every pass.  So ``CappedSite`` runs its own accept
loop and hands each socket to ``loop.connect_accepted_socket``:

- **Caps, checked before a descriptor is kept.**  At ``max_connections`` in all
  it stops accepting (new connections wait in the kernel's backlog until one
  closes); a client address with ``max_per_client`` open has each new
  connection closed at once.
- **Timeouts.**  A connection with no request in progress is closed after
  ``idle_timeout``; a request's line and headers must arrive within
  ``header_timeout`` of its first byte (and a TLS handshake within the same).
  A request in the application is the application's business (the Jobs API
  bounds how long it waits for a body).
- **Quiet under attack.**  Running out of descriptors, refused connections and
  timeouts are logged once a minute at most, with counts, never per event.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("logbook.server")

#: Descriptors kept free for everything but lab connections: the store, the log,
#: the event loop, upstream connections (the caller adds its own).
RESERVED_FDS = 64
#: Errors of ``accept()`` that mean "out of descriptors or memory": wait, never spin.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: How long the accept loop waits after running out of descriptors before it tries again.
EXHAUSTED_RETRY = 0.5


@dataclass(frozen=True)
class Limits:
    """What one listening server allows; the defaults are what ``logbook relay`` shows."""

    max_connections: int = 1024
    max_per_client: int = 256
    header_timeout: float = 10.0
    idle_timeout: float = 60.0


class Every:
    """Let a kind of event be logged at most once per ``period`` seconds, with how many were not."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self.last: dict[str, float] = {}
        self.held: Counter[str] = Counter()

    def allow(self, key: str) -> int | None:
        """None: not now (counted); else how many were held back since the last one logged."""
        now = time.monotonic()
        if key in self.last and now - self.last[key] < self.period:
            self.held[key] += 1
            return None
        self.last[key] = now
        return self.held.pop(key, 0)

    def log(self, level: int, key: str, msg: str, *args: Any) -> None:
        more = self.allow(key)
        if more is None:
            return
        if more:
            msg += f" ({more} more like it in the last {self.period:g} s)"
        log.log(level, msg, *args)


class OneLineRequestErrors(logging.Filter):
    """aiohttp's "Error handling request" as one line a minute at most, never the raw request.

    aiohttp logs a malformed request with a traceback that quotes the request
    line or header as received (a key in the query or ``Authorization`` with
    it).  Here it becomes what was wrong and from where; a handler's own
    failure keeps its traceback for ``-vv`` only (the formatter's rule).
    """

    def __init__(self) -> None:
        super().__init__()
        self.every = Every()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error handling request") or not record.exc_info:
            return True
        exc = record.exc_info[1]
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        if isinstance(exc, HttpProcessingError):
            kind, what = "malformed", f"malformed request from {remote} (answered 400)"
            reason = _first_words(exc.message)
            record.exc_info = record.exc_text = None
        else:
            kind, what = "failed", f"a request from {remote} failed (answered 500)"
            reason = f"{type(exc).__name__}: {_first_words(str(exc))}"
        more = self.every.allow(kind)
        if more is None:
            return False
        since = f" ({more} more since)" if more else ""
        record.msg, record.args = "%s: %s%s", (what, reason, since)
        if kind == "malformed":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _first_words(message: str) -> str:
    """What an error says, without the bytes it quotes: up to a blank line or a quote."""
    head = message.split("\n\n", 1)[0]
    for mark in (" b'", ' b"', "'", '"'):
        head = head.split(mark, 1)[0]
    return " ".join(head.split()).rstrip(":")[:200] or "unreadable"


def descriptor_budget(limits: Limits, reserve: int) -> Limits:
    """``limits`` with ``max_connections`` below the descriptor limit (``ulimit -n``).

    The soft limit is raised towards the hard one when the caps need it (what
    systemd expects of a program that needs many descriptors); if that is not
    enough, the cap is lowered, with a warning that says how to raise it.
    """
    need = limits.max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limits
    allowed = max(8, soft - reserve)
    log.warning(
        "the descriptor limit is %d (ulimit -n): at most %d connections, not %d"
        " (--max-connections); raise LimitNOFILE= in the unit, or ulimit -n",
        soft, allowed, limits.max_connections,
    )  # fmt: skip
    per_client = min(limits.max_per_client, allowed)
    return replace(limits, max_connections=allowed, max_per_client=per_client)


class Conn(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, its deadlines outside.

    ``phase`` is "idle" (no request in progress), "headers" (a request's first
    bytes arrived, not yet in the application) or "busy" (the application has
    it: no deadline here).
    """

    def __init__(self, site: CappedSite, peer: str) -> None:
        self.site = site
        self.peer = peer
        assert site.factory is not None
        self.inner: asyncio.Protocol = site.factory()
        self.transport: asyncio.Transport | None = None
        self.phase = "idle"
        self.deadline = time.monotonic() + site.limits.idle_timeout
        self.released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.site.by_transport[transport] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase == "idle":
            self.phase = "headers"
            self.deadline = time.monotonic() + self.site.limits.header_timeout
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def entered(self) -> None:
        """The application has a request of this connection."""
        self.phase = "busy"

    def left(self) -> None:
        """The application answered: idle until the next request's first byte."""
        self.phase = "idle"
        self.deadline = time.monotonic() + self.site.limits.idle_timeout

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.site.release(self)


class _Listening:
    """What ``BaseSite.stop`` closes: the accept loop, the sweeper and the listening socket."""

    def __init__(self, site: CappedSite) -> None:
        self.site = site

    @property
    def sockets(self) -> list[socket.socket]:  # what ``runner.addresses`` reads
        return [self.site.sock]

    def close(self) -> None:
        self.site.close()


class CappedSite(web.BaseSite):
    """An aiohttp site on a bound socket, with its own accept loop (see the module's doc)."""

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, limits: Limits, conns: Connections,
        *, ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        super().__init__(runner, ssl_context=ssl_context)
        self.sock = sock
        self.limits = limits
        self.factory: Callable[[], asyncio.Protocol] | None = None
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.by_transport = conns.by_transport
        self.freed = asyncio.Event()
        self.every = Every()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed_by: Counter[str] = Counter()
        self.exhausted = 0  # accept() failures for want of descriptors (or memory)
        self._listening = _Listening(self)

    @property
    def name(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.factory = server
        self.sock.setblocking(False)
        self.sock.listen(1024)
        self._server = self._listening  # type: ignore[assignment]
        for work in (self._accept(), self._sweep()):
            task = asyncio.create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.sock.close()

    def release(self, conn: Conn) -> None:
        self.open -= 1
        self.per_client[conn.peer] -= 1
        if self.per_client[conn.peer] <= 0:
            del self.per_client[conn.peer]
        if conn.transport is not None:
            self.by_transport.pop(conn.transport, None)
        self.freed.set()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.open >= self.limits.max_connections:
                self.every.log(
                    logging.WARNING, "full",
                    "%d connections open, the most allowed (--max-connections): new ones wait",
                    self.open,
                )  # fmt: skip
                self.freed.clear()
                await self.freed.wait()
                continue
            try:
                sock, addr = await loop.sock_accept(self.sock)
            except OSError as err:
                if err.errno not in _EXHAUSTED:
                    log.debug("accept() failed: %s", err)
                    continue
                self.exhausted += 1
                self.every.log(
                    logging.ERROR, "fds",
                    "out of file descriptors or memory (%s) with %d connections open: new"
                    " connections wait; lower --max-connections or raise LimitNOFILE=",
                    err.strerror, self.open,
                )  # fmt: skip
                self.freed.clear()
                try:
                    await asyncio.wait_for(self.freed.wait(), EXHAUSTED_RETRY)
                except TimeoutError:
                    pass
                continue
            self._admit(sock, str(addr[0]))

    def _admit(self, sock: socket.socket, peer: str) -> None:
        if self.per_client[peer] >= self.limits.max_per_client:
            sock.close()
            self.closed_by["over the per-client cap"] += 1
            self.every.log(
                logging.WARNING, "per-client",
                "refused a connection from %s: it has %d open, the most allowed"
                " (--max-connections-per-client)", peer, self.per_client[peer],
            )  # fmt: skip
            return
        self.open += 1
        self.per_client[peer] += 1
        conn = Conn(self, peer)
        task = asyncio.create_task(self._start(sock, conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, sock: socket.socket, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: conn, sock, ssl=self._ssl_context,
                ssl_handshake_timeout=self.limits.header_timeout if self._ssl_context else None,
            )  # fmt: skip
        except (OSError, TimeoutError, ValueError) as err:  # a failed TLS handshake, a reset
            log.debug("a connection from %s ended before its first request: %s", conn.peer, err)
            sock.close()
            conn.release()
        except BaseException:  # cancelled: the server is stopping
            sock.close()
            conn.release()
            raise

    async def _sweep(self) -> None:
        """Close connections past their deadline (checked a few times per timeout)."""
        every = max(0.05, min(1.0, self.limits.header_timeout / 4, self.limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            conns = self.by_transport.values()
            late = [c for c in conns if c.phase != "busy" and c.deadline <= now]
            for conn in late:
                assert conn.transport is not None
                conn.transport.abort()
                if conn.phase == "headers":
                    self.closed_by["header timeout"] += 1
                    self.every.log(
                        logging.WARNING, "header timeout",
                        "closed a connection from %s: no complete request within %g s"
                        " (--header-timeout)", conn.peer, self.limits.header_timeout,
                    )  # fmt: skip
                else:
                    self.closed_by["idle timeout"] += 1


class Connections:
    """The open connections by transport: the site adds them, the middleware marks them busy."""

    def __init__(self) -> None:
        self.by_transport: dict[asyncio.Transport, Conn] = {}

    def middleware(self) -> Any:
        @web.middleware
        async def track(request: web.Request, handler: Any) -> web.StreamResponse:
            """The application has this request: no header deadline until it answers."""
            transport = request.transport
            conn = self.by_transport.get(transport) if transport is not None else None
            if conn is None:
                return await handler(request)  # type: ignore[no-any-return]
            conn.entered()
            try:
                return await handler(request)  # type: ignore[no-any-return]
            finally:
                conn.left()

        return track
