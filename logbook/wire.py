"""A small HTTP/1.1 client over asyncio: the default engine under ``client``.

Why logbook carries one: draining a backlog is CPU-bound on a small lab
machine, and both general clients spend most of that CPU on generality.
One httpx ``AsyncClient`` manages a few hundred requests/s (FINDINGS.md);
aiohttp under httpx's types about 3,000/s here, where this engine, which
does only what the Jobs API needs, reaches the server's own limit (README,
"Performance").  ``client`` keeps httpx as the interface and the fallback
(``LOGBOOK_HTTP_ENGINE=httpx``); this module is the only one that opens
sockets for it, and it knows nothing of keys or jobs.

What it does: keep-alive connections in a LIFO pool (at most ``limit``
open), requests with a body of known length, responses framed by
Content-Length, chunked encoding or the connection's close, gzip/deflate
bodies, TLS through the ``ssl`` module (the system's trust store, which
``SSL_CERT_FILE`` overrides).  What it does not: redirects, proxies,
cookies, HTTP/2, pipelining.

Every failure is a ``WireError`` whose ``sent`` says whether any byte of
the request was written: a request that failed before that cannot have
reached the server.  Messages name the host, never the request line (which
may carry the key).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    import ssl

__all__ = ["ConnectFailed", "Pool", "Response", "WireError"]

#: Largest response head and body we read (the API's answers are a few KB).
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024


class WireError(Exception):
    """A request failed; ``sent`` is False only when no byte of it was written."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectFailed(WireError):
    """No connection could be made: nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class _Malformed(Exception):
    """The server's answer is not HTTP/1.x we can read."""


@dataclass(slots=True)
class Response:
    """A complete response: status, headers (names lower-cased, in order) and body."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Connection(asyncio.Protocol):
    """One connection: at most one request at a time; parses the answer as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._no_body = False
        self._head: tuple[int, str, list[tuple[str, str]]] | None = None
        self._framing = ""  # length | chunked | close
        self._length = 0
        self._chunks: list[bytes] = []
        self._chunk_left = -1  # -1: expecting a chunk-size line
        self._trailers = False

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: this connection is not usable
            return
        self._buf += data
        try:
            response = self._parse(eof=False)
        except _Malformed as err:
            self._fail(f"unreadable response: {err}")
            return
        if response is not None:
            self._waiter = None
            waiter.set_result(response)

    def eof_received(self) -> bool:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            try:
                response = self._parse(eof=True)
            except _Malformed as err:
                self._fail(f"unreadable response: {err}")
                return False
            if response is None:
                what = "a complete" if self._head is not None else "a"
                self._fail(f"the server closed the connection without {what} response")
            else:
                self._waiter = None
                waiter.set_result(response)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            reason = f": {exc.strerror or type(exc).__name__}" if isinstance(exc, OSError) else ""
            self._fail(f"connection lost before the response was complete{reason}")

    # driving it

    def start(self, waiter: asyncio.Future[Response], no_body: bool) -> None:
        """Expect one response (``no_body``: to a HEAD request) into ``waiter``."""
        self._waiter = waiter
        self._no_body = no_body
        self._head = None
        self._framing = ""
        self._chunks = []
        self._chunk_left = -1
        self._trailers = False
        self.reusable = False

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(WireError(message, sent=True))

    # parsing

    def _parse(self, *, eof: bool) -> Response | None:
        buf = self._buf
        while self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise _Malformed("response head too large")
                return None
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            self._read_head(head)
        if self._framing == "length":
            if len(buf) < self._length:
                return None
            body = bytes(buf[: self._length])
            del buf[: self._length]
        elif self._framing == "chunked":
            if not self._read_chunks():
                return None
            body = b"".join(self._chunks)
        else:  # until the server closes
            if len(buf) > MAX_BODY:
                raise _Malformed("response body too large")
            if not eof:
                return None
            body = bytes(buf)
            buf.clear()
        if buf:  # more than one response's worth: we never pipeline
            self.reusable = False
        status, reason, headers = self._head
        return Response(status, reason, headers, _decode(body, headers))

    def _read_head(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        version = parts[0]
        if not version.startswith("HTTP/1.") or len(parts) < 2 or len(parts[1]) != 3:
            raise _Malformed("not an HTTP/1.x status line")
        try:
            status = int(parts[1])
        except ValueError:
            raise _Malformed("not an HTTP/1.x status line") from None
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _Malformed("bad header line")
            headers.append((name.lower(), value.strip()))
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            if status == 101:
                raise _Malformed("the server switched protocols")
            return
        values = dict(headers)
        connection = values.get("connection", "").lower()
        te = values.get("transfer-encoding", "").lower()
        cl = values.get("content-length")
        if self._no_body or status in (204, 304):
            self._framing, self._length = "length", 0
        elif te:
            if te.strip() != "chunked":  # "gzip, chunked" would need a layer we never ask for
                raise _Malformed(f"unsupported transfer-encoding {te!r}")
            self._framing = "chunked"
        elif cl is not None:
            lengths = {v.strip() for k, v in headers if k == "content-length"}
            if len(lengths) != 1 or not (cl.strip().isascii() and cl.strip().isdigit()):
                raise _Malformed("bad content-length")
            self._length = int(cl)
            if self._length > MAX_BODY:
                raise _Malformed("response body too large")
            self._framing = "length"
        else:
            self._framing = "close"
        if version == "HTTP/1.1":
            self.reusable = "close" not in connection
        else:
            self.reusable = "keep-alive" in connection
        # Both framings at once (RFC 9112 6.3) smells of request smuggling: use it once.
        self.reusable = self.reusable and self._framing != "close" and not (te and cl)
        self._head = (status, parts[2] if len(parts) > 2 else "", headers)

    def _read_chunks(self) -> bool:
        """Consume chunked data from the buffer; True once the last chunk and trailers are in."""
        buf = self._buf
        while True:
            if self._trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    return True
                continue
            if self._chunk_left < 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise _Malformed("bad chunk size")
                    return False
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise _Malformed("bad chunk size") from None
                if self._chunk_left < 0:
                    raise _Malformed("bad chunk size")
                if self._chunk_left == 0:
                    self._trailers = True
                    continue
                if sum(map(len, self._chunks)) + self._chunk_left > MAX_BODY:
                    raise _Malformed("response body too large")
            if len(buf) < self._chunk_left + 2:
                return False
            if buf[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                raise _Malformed("bad chunk")
            self._chunks.append(bytes(buf[: self._chunk_left]))
            del buf[: self._chunk_left + 2]
            self._chunk_left = -1


def _decode(body: bytes, headers: list[tuple[str, str]]) -> bytes:
    """Undo a gzip or deflate content-encoding (we ask for identity; a server may not listen)."""
    if not body:
        return body
    encoding = ""
    for k, v in headers:
        if k == "content-encoding":
            encoding = v.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Malformed(f"unsupported content-encoding {encoding!r}")
    tries = [zlib.MAX_WBITS, -zlib.MAX_WBITS] if encoding == "deflate" else [16 + zlib.MAX_WBITS]
    for wbits in tries:  # deflate: zlib-wrapped, or raw as some servers send it
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, MAX_BODY)
        except zlib.error:
            continue
        if d.unconsumed_tail:
            raise _Malformed("response body too large")
        return out
    raise _Malformed(f"bad {encoding} body")


class Pool:
    """Keep-alive connections to one origin; ``request`` sends one request on one of them."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int = 64,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the endpoint must be an http:// or https:// URL with a host")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
        host = f"[{host}]" if ":" in host else host
        #: The value of the Host header, and where errors say we tried to go.
        self.authority = host if default_port else f"{host}:{self.port}"
        #: The endpoint's path prefix (``https://host/api`` -> ``/api``), percent-encoded.
        self.prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=~")
        self.limit = limit
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._slots: asyncio.Semaphore | None = None

    async def request(
        self, head: bytes, body: bytes | None = None, *, method: str = ""
    ) -> Response:
        """Send ``head`` (the request line and headers, CRLF-terminated) and ``body``."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            conn = self._idle_connection() or await self._connect()
            waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            conn.start(waiter, method == "HEAD")
            assert conn.transport is not None
            conn.transport.write(head + body if body else head)
            try:
                response = await waiter
            except BaseException:  # failed, timed out or cancelled: state unknown
                conn.close()
                self._all.discard(conn)
                raise
            if conn.reusable and not conn.closed:
                self._idle.append(conn)
            else:
                conn.close()
                self._all.discard(conn)
            return response

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
            self._all.discard(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if self.tls:  # ssl is imported only for https: plain http starts sooner
            import ssl

            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                # Happy eyeballs: a host whose IPv6 route drops packets must not
                # use up the whole timeout before IPv4 is tried.
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=context,
                    server_hostname=self.host if context else None,
                    happy_eyeballs_delay=0.25, interleave=1,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectFailed(f"timed out connecting to {self.authority}") from None
        except OSError as err:  # ssl.SSLError included
            verify_message = getattr(err, "verify_message", None)
            if verify_message:  # ssl.SSLCertVerificationError
                raise ConnectFailed(
                    f"TLS certificate of {self.authority} not trusted: {verify_message}"
                ) from None
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise ConnectFailed(f"cannot connect to {self.authority}: {reason}") from None
        self._all.add(conn)
        return conn

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
