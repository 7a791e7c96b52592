"""httpx2 transport that sends through aiohttp's connection pool.

Why: we want httpx2's request/response API (and its exception classes, which
the exactly-once logic keys on) with aiohttp's C-accelerated HTTP/1.1 client
and pool.  The transport *maps*; it never parses HTTP itself.

The one contract that matters (a duplicate POST is the worst bug):

* ``httpx2.ConnectError`` / ``httpx2.ConnectTimeout`` (and
  ``ProxyConnectError``, a ConnectError) are raised **only** when no byte of
  the request can have reached the origin: DNS failure, refused, connect
  timeout (including waiting for a pooled connection: never PoolTimeout),
  TLS failure, proxy unreachable, proxy refused/failed the CONNECT.
* Everything else (reset, disconnect, read timeout, malformed or oversized
  response, a reused keep-alive connection closed under us ...) maps to a
  non-connect class: "maybe sent".

How we know which phase failed: ``_PhaseConnector.connect()`` (an override
of the documented ``BaseConnector.connect``) marks the request *connected*
when aiohttp's connector hands out a connection, new or reused.  aiohttp
returns from ``connect()`` only after DNS, TCP, the proxy CONNECT exchange and
the TLS handshake, and before a single byte of the request is written.  The
per-request flag object travels in a ContextVar (the connector runs in the
request's task).  The exception class is checked too (belt and braces): a
"connect" class is only trusted when the phase agrees, and a post-connect
failure is never a ConnectError whatever class aiohttp used.  (A TraceConfig
with ``on_connection_create_end``/``on_connection_reuseconn`` gives the same
signal through public hooks but cost ~20 µs CPU per request in our measurements.)

Messages never contain the request's path or query (the API key lives in the
query): they are built from scheme://host:port plus the exception class and
reason (and ``ApiClient`` redacts every spelling of the key again).  The original aiohttp
exception is *not* chained (neither ``__cause__`` nor ``__context__``) because
aiohttp puts the full URL into several of its messages (e.g. ``ConnectionTimeoutError``,
``ClientResponseError.__str__``) and a logged traceback would leak it.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno as errno_mod
import io
import os
import re
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import aiohttp.abc
import httpx2
import yarl
from multidict import CIMultiDict

__all__ = ["AiohttpTransport", "ProxyConnectError", "ResponseTooLarge"]


class ProxyConnectError(httpx2.ProxyError, httpx2.ConnectError):
    """The proxy refused or failed the CONNECT tunnel: nothing reached the origin.

    Both a ``ProxyError`` (what httpx2's own transport raises here) and a
    ``ConnectError`` (so "nothing was sent" checks keyed on ConnectError hold).
    """


class ResponseTooLarge(httpx2.RemoteProtocolError):
    """The response body exceeded ``max_body``; the request *was* sent."""


# ---------------------------------------------------------------------------
# phase tracking
# ---------------------------------------------------------------------------


class _Phase:
    """Per-request flag: did the connector hand out a connection?"""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


_PHASE: contextvars.ContextVar[_Phase | None] = contextvars.ContextVar(
    "logbook_aiohttp_phase", default=None
)


class _PhaseConnector(aiohttp.TCPConnector):
    """TCPConnector that records, per request, that a connection was handed out."""

    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        conn = await super().connect(*args, **kwargs)
        phase = _PHASE.get()
        if phase is not None:
            phase.connected = True
        return conn


# Classes aiohttp raises only from inside the connector (before a connection
# is handed out).  Trusted as "nothing sent" only when the phase agrees.
_CONNECT_CLASSES: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,  # incl. DNS, proxy-connection, SSL, certificate
    aiohttp.ConnectionTimeoutError,
    aiohttp.ClientHttpProxyError,
)

_LARGE_BODY = 1024 * 1024  # aiohttp.payload.TOO_LARGE_BYTES_BODY
_SKIP_AUTO = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_HOP_BY_HOP_REQUEST = {b"transfer-encoding"}


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2.AsyncBaseTransport`` backed by one lazily created aiohttp session.

    ``proxy_for(url)`` picks the proxy per request (``None`` = direct); the
    session runs with ``trust_env=False`` so aiohttp never consults the
    environment behind our back.  Credentials in the proxy URL are sent as
    ``Proxy-Authorization`` by aiohttp itself, for CONNECT and absolute-form.

    Timeouts come from httpx2's per-request ``timeout`` extension
    (connect/read/pool; aiohttp has no write timeout), falling back to
    ``connect_timeout`` / ``read_timeout`` for hand-built requests.
    ``keepalive_timeout`` should stay below the server's idle timeout so we
    rarely reuse a connection the server is closing (a POST on it fails as
    "maybe sent").  ``resolver`` is passed to ``TCPConnector`` (aiodns,
    tests).  ``deadline`` (seconds, optional) caps the whole exchange: it is
    the only guard against a server that trickles bytes slowly enough never
    to trip the read timeout; when it fires the error is ReadTimeout ("maybe
    sent") whatever the phase, since a bare timeout carries no evidence.
    """

    def __init__(
        self,
        *,
        limit: int = 64,
        ssl_context: ssl.SSLContext | None = None,
        proxy_for: Callable[[httpx2.URL], str | None] | None = None,
        connect_timeout: float = 5.0,
        max_body: int = 16 * 1024 * 1024,
        read_timeout: float | None = None,
        keepalive_timeout: float = 4.0,
        deadline: float | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        self._limit = limit
        self._ssl_context = ssl_context
        self._proxy_for = proxy_for
        self._connect_timeout = connect_timeout
        self._max_body = max_body
        self._keepalive_timeout = keepalive_timeout
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[
            tuple[float | None, float | None, float | None], aiohttp.ClientTimeout
        ] = {}
        self._proxy_urls: dict[str, yarl.URL] = {}

    # -- session -------------------------------------------------------
    def _get_session(self) -> aiohttp.ClientSession:
        """Create the session inside the running loop (aiohttp binds it to the loop)."""
        loop = asyncio.get_running_loop()
        if self._session is not None:
            if loop is not self._loop:
                raise RuntimeError("AiohttpTransport used from a second event loop")
            if self._session.closed:
                raise RuntimeError("AiohttpTransport is closed")
            return self._session
        # No context of our own for plain http: making one reads the whole CA bundle.
        ctx: ssl.SSLContext | bool = self._ssl_context if self._ssl_context is not None else True
        connector = _PhaseConnector(
            limit=self._limit,
            limit_per_host=0,
            ssl=ctx,
            keepalive_timeout=self._keepalive_timeout,
            resolver=self._resolver,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # httpx2 decodes Content-Encoding itself
            skip_auto_headers=_SKIP_AUTO,  # send exactly httpx2's headers
            requote_redirect_url=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
        )
        self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _client_timeout(self, request: httpx2.Request) -> aiohttp.ClientTimeout:
        t = request.extensions.get("timeout") or {}
        connect = t.get("connect", self._connect_timeout)
        read = t.get("read", self._read_timeout)
        pool = t.get("pool")
        key = (connect, read, pool)
        ct = self._timeouts.get(key)
        if ct is None:
            # ClientTimeout.connect spans pool wait + DNS + connect + proxy
            # CONNECT exchange (which sock_connect does NOT cover): keep it
            # finite, as httpx2's connect + pool (pool=None adds nothing).
            overall_connect = None if connect is None else connect + (pool or 0.0)
            ct = aiohttp.ClientTimeout(
                total=self._deadline,
                connect=overall_connect,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = ct
        return ct

    def _proxy_url(self, proxy: str) -> yarl.URL:
        u = self._proxy_urls.get(proxy)
        if u is None:
            u = yarl.URL(proxy)
            if u.scheme not in ("http", "https"):
                raise httpx2.UnsupportedProtocol(
                    f"unsupported proxy scheme {u.scheme!r}"
                    " (aiohttp speaks http/https proxies only)"
                )
            self._proxy_urls[proxy] = u
        return u

    # -- the request ---------------------------------------------------
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._get_session()
        url = request.url
        proxy = self._proxy_for(url) if self._proxy_for is not None else None
        phase = _Phase()
        token = _PHASE.set(phase)
        resp: aiohttp.ClientResponse | None = None
        failure: httpx2.TransportError | None = None
        try:
            body = await request.aread()
            resp = await session.request(
                request.method,
                _target(url),
                headers=_headers(request, len(body)),
                # > 1 MiB as bytes makes aiohttp warn (ResourceWarning) that
                # it may block the loop; BytesIO is streamed in chunks.
                data=(body if len(body) <= _LARGE_BODY else io.BytesIO(body)) if body else None,
                allow_redirects=False,
                proxy=self._proxy_url(proxy) if proxy else None,
                timeout=self._client_timeout(request),
            )
            content = await self._read_body(resp, url)
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            raise
        except httpx2.HTTPError as exc:
            if resp is not None:
                resp.close()
            exc.request = request
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets classified
            if resp is not None:
                resp.close()
            failure = _map_exception(exc, phase, request, proxy)
        finally:
            _PHASE.reset(token)
        if failure is not None:
            # Raised outside the except block so it carries neither __cause__
            # nor __context__: aiohttp's exceptions hold the full URL.
            raise failure
        assert resp is not None
        resp.release()
        return _response(resp, content, request)

    async def _read_body(self, resp: aiohttp.ClientResponse, url: httpx2.URL) -> bytes:
        """Read the whole body, refusing more than ``max_body`` bytes."""
        limit = self._max_body
        length = resp.content_length
        if length is not None:
            if length > limit:
                raise ResponseTooLarge(
                    f"response from {_origin(url)} announces {length} bytes, over max_body={limit}"
                )
            return await resp.read()
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > limit:
                raise ResponseTooLarge(
                    f"response body from {_origin(url)} exceeds max_body={limit}"
                )
            parts.append(chunk)


def _headers(request: httpx2.Request, length: int) -> CIMultiDict[str]:
    """httpx2's headers, as they are; a body it would have chunked goes with its length."""
    headers: CIMultiDict[str] = CIMultiDict()
    chunked = False
    for k, v in request.headers.raw:
        if k.lower() in _HOP_BY_HOP_REQUEST:
            chunked = True  # we buffered the body; send it with a length
            continue
        headers.add(k.decode("latin-1"), v.decode("latin-1"))
    if chunked and "Content-Length" not in headers:
        headers["Content-Length"] = str(length)
    return headers


def _target(url: httpx2.URL) -> yarl.URL:
    """The URL exactly as httpx2 encoded it.

    ``encoded=True``: yarl would otherwise re-quote %2B, %2F, %3D in the API key
    (str + split, not url.copy_with(): that re-parses the URL, ~25 µs).
    Userinfo is dropped: httpx2 already turned it into an Authorization
    header, and aiohttp refuses URL credentials plus that header.
    """
    raw_url = str(url.copy_with(userinfo=b"")) if url.userinfo else str(url)
    return yarl.URL(raw_url.partition("#")[0], encoded=True)


def _response(
    resp: aiohttp.ClientResponse, content: bytes, request: httpx2.Request
) -> httpx2.Response:
    return httpx2.Response(
        resp.status,
        headers=list(resp.raw_headers),
        # content=: read (and decoded) here, once; a chunked answer gains a
        # Content-Length header on this object, which nothing reads.
        content=content,
        request=request,
        extensions={
            "http_version": b"HTTP/1.1",
            "reason_phrase": (resp.reason or "").encode("latin-1", "replace"),
        },
    )


# ---------------------------------------------------------------------------
# exception mapping
# ---------------------------------------------------------------------------


def _origin(url: httpx2.URL) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{port}"


def _proxy_origin(proxy: str) -> str:
    u = yarl.URL(proxy)
    return f"{u.scheme}://{u.host}:{u.port}"  # never the credentials


def _os_reason(exc: BaseException) -> str:
    err = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None)
    name = errno_mod.errorcode.get(err, "") if isinstance(err, int) else ""
    if name:  # the system's words: asyncio's strerror repeats the address the line names
        return f"{name} {os.strerror(err)}"  # type: ignore[arg-type]
    if text:
        return _no_urls(f"{name} {text}".strip() if name else str(text))
    if exc.args and isinstance(exc.args[0], str):
        # aiohttp 3.14 writes the whole URL (the key in its query) into some messages.
        return _no_urls(exc.args[0])
    return type(exc).__name__


_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _no_urls(text: str) -> str:
    """A library's message without the URLs it quotes: the caller names the origin."""
    return _URL.sub("the server", text)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(":") if text.strip() else ""


def _detail(exc: BaseException) -> str:
    """Class name plus a reason that never includes aiohttp's URL-bearing str()."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        ce = exc.certificate_error
        reason = (
            getattr(ce, "verify_message", None) or getattr(ce, "reason", None) or type(ce).__name__
        )
        return f"{name}: certificate verify failed: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS: {getattr(exc.os_error, 'reason', None) or _os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_reason(exc.os_error)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"{name}: proxy answered {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{name}: {exc.status} {_first_line(str(exc.message))}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{name}: server disconnected before a complete response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        msg = str(exc)
        m = re.search(r"<(\w+): (\d+), message='([^']*)'", msg)
        return f"{name}: {m.group(1)}: {m.group(3)}" if m else f"{name}: incomplete response body"
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError)):
        return name
    if isinstance(exc, asyncio.TimeoutError):
        return f"{name}: deadline exceeded"
    if isinstance(exc, OSError):
        return f"{name}: {_os_reason(exc)}"
    return name


Mapped = tuple[type[httpx2.TransportError], str]


def _map_exception(
    exc: Exception, phase: _Phase, request: httpx2.Request, proxy: str | None
) -> httpx2.TransportError:
    """Pick the httpx2 class: ConnectError family only if nothing can have been sent."""
    where = _origin(request.url)
    via = f" via proxy {_proxy_origin(proxy)}" if proxy else ""
    if phase.connected:
        cls, what = _after_connecting(exc, where)
    else:
        cls, what = _before_connecting(exc, where, bool(proxy) and request.url.scheme == "https")
    return cls(f"{what}{via}: {_detail(exc)}", request=request)


def _before_connecting(exc: Exception, where: str, tunnelled: bool) -> Mapped:
    """No connection was handed out: nothing reached the origin (unless we cannot tell)."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyConnectError, f"proxy refused CONNECT to {where}"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx2.ConnectError, f"cannot connect to proxy for {where}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Raised only around connector.connect() (pool wait, DNS, TCP, CONNECT
        # exchange, TLS).  A bare asyncio.TimeoutError (the ``deadline``) carries
        # no such evidence and stays "maybe sent".  Pool waits land here too:
        # ConnectTimeout, never PoolTimeout, so "ConnectError or ConnectTimeout
        # => nothing sent" holds.
        return httpx2.ConnectTimeout, f"timed out acquiring or opening a connection to {where}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return httpx2.ConnectError, f"TLS certificate verification failed for {where}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return httpx2.ConnectError, f"TLS handshake failed with {where}"
    if isinstance(exc, _CONNECT_CLASSES):
        return httpx2.ConnectError, f"cannot connect to {where}"
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx2.UnsupportedProtocol, f"cannot send to {where}"
    if isinstance(exc, ValueError):
        return httpx2.LocalProtocolError, f"invalid request for {where}"
    if tunnelled and isinstance(
        exc, (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, OSError)
    ):
        # Only the CONNECT exchange runs before the connection is handed out.
        return ProxyConnectError, f"proxy failed the CONNECT to {where}"
    # Unknown pre-connection failure: stay on the safe ("maybe sent") side.
    return httpx2.ReadError, f"request to {where} failed"


def _after_connecting(exc: Exception, where: str) -> Mapped:
    """A connection was handed out: the request may have reached the origin."""
    if isinstance(exc, asyncio.TimeoutError):  # SocketTimeoutError (sock_read) or the deadline
        return httpx2.ReadTimeout, f"timed out reading from {where}"
    if isinstance(
        exc,
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError),
    ):
        return httpx2.RemoteProtocolError, f"bad or incomplete response from {where}"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return httpx2.WriteError, f"connection to {where} lost while sending"
    if isinstance(exc, ValueError):
        return httpx2.RemoteProtocolError, f"bad response from {where}"
    # ClientOSError, ClientConnectionError, OSError, anything else
    return httpx2.ReadError, f"connection to {where} failed"
