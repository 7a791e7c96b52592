"""The Haiqu Jobs API client: the only module that touches httpx.

Two facts from FINDINGS.md shape it:

- The key must never leak.  httpx logs every URL at INFO, and its exceptions
  and ``repr(request)`` carry the URL.  So the key is added *below* httpx, in
  a transport wrapper, on the way to the wire: no ``httpx.Request`` that
  httpx logs, raises or returns ever holds it.  The wire engine writes it
  into the request bytes only; its errors name the host, never the request.
- One ``httpx.AsyncClient`` slows down badly as its pool grows.  So the
  bytes go, by default, through ``wire``: logbook's own small HTTP/1.1
  engine, which does only what this API needs and keeps a 64-request sync
  at the server's own pace (README, "Performance").  httpx stays the
  interface for everything else: ``LOGBOOK_HTTP_ENGINE=httpx`` sends through
  many small httpx pools (each request to the least busy one), and tests
  inject any ``httpx.AsyncBaseTransport`` (``httpx.MockTransport``).  Both
  engines answer with the same ``wire.Response``, so the classification
  below is one piece of code.

Every failure is classified into a ``RequestFailed`` whose ``maybe_sent``
says whether the server may have stored the job: that flag is what keeps
delivery exactly-once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from .errors import ConfigError, RequestFailed
from .secrets import redact
from .wire import ConnectFailed, Pool, Response, WireError

if TYPE_CHECKING:
    import httpx

# httpx/httpcore log URLs and headers; nothing of ours is worth that risk.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

REJECT_CODES = frozenset({400, 404, 413, 422})
AUTH_CODES = frozenset({401, 403})
RETRY_CODES = frozenset({408, 429})
RETRY_AFTER_CAP = 300.0
USER_AGENT = "logbook/0.1"
#: delay-seconds (RFC 9110: digits; a decimal fraction is tolerated).
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        # float() alone would take "nan", "inf", "-5" and "1e9"; none is a delay.
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000": UTC, not local time
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def key_param(key: str) -> str:
    """The query parameter that carries the key, percent-encoded (a raw ``+`` is a space)."""
    return "HAIQU_API_KEY=" + quote(key, safe="")


# --- the httpx engine ------------------------------------------------------------
# httpx is imported only where it is used: the wire engine's sync starts 40 ms
# sooner without it.  These two speak httpx's transport API (duck-typed, so the
# module need not import httpx to define them).


class KeyTransport:
    """Adds the API key to each request on its way out (query or header)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, key: str, auth: str) -> None:
        self.inner = inner
        self.key = key
        self.auth = auth
        self._param = key_param(key).encode("ascii")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import httpx

        url, headers = request.url, request.headers.copy()
        if self.auth == "header":
            headers["authorization"] = self.key
        else:
            raw = url.raw_path
            sep = b"&" if b"?" in raw else b"?"
            url = url.copy_with(raw_path=raw + sep + self._param)
        body = await request.aread()
        keyed = httpx.Request(
            request.method, url, headers=headers, content=body, extensions=request.extensions
        )
        try:
            response = await self.inner.handle_async_request(keyed)
        except httpx.TransportError as err:
            # Re-raise against the key-free request, with a key-free message.
            raise type(err)(redact(str(err), self.key), request=request) from None
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class ShardedTransport:
    """Many small httpx pools: each request goes to the least busy one.

    One pool of 64 connections manages 260 req/s here; 32 pools of 2 several
    times that (see README, "Performance").
    """

    def __init__(self, connections: int, per_shard: int = 2) -> None:
        import httpx

        shards = max(1, (connections + per_shard - 1) // per_shard)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        # One SSL context for all shards: each transport would otherwise load the CA
        # bundle itself (about 40 ms each, 1.3 s for 32 shards, before any request).
        ssl_context = httpx.create_ssl_context()
        self.shards = [
            httpx.AsyncHTTPTransport(limits=limits, verify=ssl_context) for _ in range(shards)
        ]
        self.busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self.shards)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            response = await self.shards[i].handle_async_request(request)
            await response.aread()
        finally:
            self.busy[i] -= 1
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


ENGINES = ("wire", "httpx")


#: One encoder for every body: ``json.dumps`` with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class JobRef(NamedTuple):
    """What logbook keeps of a job the server returns: its id, status and hash.

    ``models.Job`` is the whole shape; reading only these three fields keeps
    pydantic out of the sync (its import and validation were a sixth of a
    sync's CPU), and a server that changes any other field breaks nothing.
    """

    id: str
    status: str
    hash: str


def default_engine() -> str:
    """``wire`` (logbook's own HTTP/1.1 engine); ``LOGBOOK_HTTP_ENGINE=httpx`` picks httpx."""
    choice = os.environ.get("LOGBOOK_HTTP_ENGINE", "").strip().lower()
    return "httpx" if choice == "httpx" else "wire"


def _reply(response: httpx.Response) -> Response:
    """An httpx response (read to the end) as the engine-neutral ``Response``."""
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw]
    return Response(response.status_code, response.reason_phrase, headers, response.content)


# --- the client -------------------------------------------------------------------


class ApiClient:
    """The three routes logbook uses, with failures classified for the sync engine."""

    def __init__(
        self,
        endpoint: str,
        key: str,
        *,
        auth: str = "query",
        connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        deadline: float = 60.0,
        engine: str | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.key = key
        self.auth = auth
        self.deadline = deadline
        self.engine = "custom" if transport is not None else (engine or default_engine())
        if self.engine not in ENGINES + ("custom",):
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self._pool: Pool | None = None
        self.transport: KeyTransport | None = None
        if self.engine == "wire":
            # Bytes straight to the socket: no per-request objects beyond the response.
            # The overall deadline (below) bounds a slow read, as read_timeout would.
            self._pool = Pool(self.endpoint, limit=connections, connect_timeout=connect_timeout)
            self._wire_heads: dict[tuple[str, str], bytes] = {}
            self._wire_auth = ""
            if auth == "header":
                if not key.isprintable() or not key.isascii():
                    raise ConfigError("the API key has characters that cannot go in a header")
                self._wire_auth = f"Authorization: {key}\r\n"
        else:
            # The transport is called directly, without httpx.AsyncClient: its per-request
            # URL merging and header handling cost more CPU than the HTTP work itself
            # (three URL parses per request).  Same types, same transport API.
            import httpx

            inner: Any = transport if transport is not None else ShardedTransport(connections)
            self.transport = KeyTransport(inner, key, auth)
            self._timeout = httpx.Timeout(
                read_timeout, connect=connect_timeout, pool=None
            ).as_dict()
            # identity: RFC 9110 reads no Accept-Encoding as "anything", brotli included.
            base = {
                "user-agent": USER_AGENT,
                "accept": "application/json",
                "accept-encoding": "identity",
            }
            self._get_headers = httpx.Headers(base)
            self._post_headers = httpx.Headers({**base, "content-type": "application/json"})
            self._jobs_url = httpx.URL(self.endpoint + "/jobs")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self.transport is not None:
            await self.transport.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, self.key)

    def _wire_head(self, method: str, path: str, body: bytes | None) -> bytes:
        """The request line and headers, key included, as they go on the wire."""
        cached = self._wire_heads.get((method, path))
        if cached is None:
            assert self._pool is not None
            target = self._pool.prefix + path
            if self.auth != "header":
                target += ("&" if "?" in target else "?") + key_param(self.key)
            text = (
                f"{method} {target} HTTP/1.1\r\nHost: {self._pool.authority}\r\n"
                f"User-Agent: {USER_AGENT}\r\nAccept: application/json\r\n"
                f"Accept-Encoding: identity\r\n{self._wire_auth}"
            )
            if body is not None:
                text += "Content-Type: application/json\r\n"
            cached = text.encode("ascii")
            if path == "/jobs":  # GET paths vary: only POST /jobs is worth keeping
                self._wire_heads[(method, path)] = cached
        if body is None:
            return cached + b"\r\n"
        return cached + b"Content-Length: %d\r\n\r\n" % len(body)

    async def _exchange(self, method: str, path: str, body: bytes | None = None) -> Response:
        """One request, read to the end, with no classification and no deadline."""
        if self._pool is not None:
            return await self._pool.request(
                self._wire_head(method, path, body), body, method=method
            )
        import httpx

        assert self.transport is not None
        url = self._jobs_url if path == "/jobs" else httpx.URL(self.endpoint + path)
        request = httpx.Request(
            method, url, content=body, extensions={"timeout": self._timeout},
            headers=self._post_headers if body is not None else self._get_headers,
        )  # fmt: skip
        # httpx's failures in the wire engine's terms, so one classification serves both.
        try:
            response = await self.transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            raise ConnectFailed(str(err)) from None
        except httpx.TransportError as err:
            raise WireError(f"{type(err).__name__}: {err}", sent=True) from None
        return _reply(response)

    async def send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        """One raw request under the deadline, as an ``httpx.Response`` with a key-free request."""
        import httpx

        async with asyncio.timeout(self.deadline):
            reply = await self._exchange(method, path, body)
        request = httpx.Request(method, self.endpoint + path, content=body)
        # The body is decoded already: httpx must not decode it again.
        headers = [
            (k, v) for k, v in reply.headers if k not in ("content-encoding", "content-length")
        ]
        return httpx.Response(reply.status, headers=headers, content=reply.content, request=request)

    async def _request(self, method: str, path: str, *, body: bytes | None = None) -> Response:
        """One request under an overall deadline (httpx's timeouts are per socket operation)."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self._exchange(method, path, body)
        except TimeoutError:
            raise RequestFailed(
                f"{method} {path}: no complete response within {self.deadline:g} s",
                kind="retry", maybe_sent=method == "POST",
            ) from None  # fmt: skip
        except ConnectFailed as err:
            raise RequestFailed(
                self._redact(f"{method} {path}: cannot connect to {self.endpoint}: {err}"),
                kind="retry", maybe_sent=False, connect_failed=True,
            ) from None  # fmt: skip
        except WireError as err:
            raise RequestFailed(
                self._redact(f"{method} {path}: {err}"),
                kind="retry", maybe_sent=method == "POST" and err.sent,
            ) from None  # fmt: skip

    def _failure(self, method: str, path: str, response: Response) -> RequestFailed:
        code = response.status
        detail = self._reason(response)
        msg = self._redact(f"{method} {path}: HTTP {code}{': ' + detail if detail else ''}")
        if code in AUTH_CODES:
            return RequestFailed(msg, kind="auth", status=code)
        if code in RETRY_CODES or code >= 500:
            return RequestFailed(
                msg, kind="retry", status=code,
                retry_after=parse_retry_after(response.header("retry-after")),
                maybe_sent=code >= 500 and method == "POST",
            )  # fmt: skip
        if code in REJECT_CODES or 400 <= code < 500:
            return RequestFailed(msg, kind="reject", status=code)
        return RequestFailed(msg, kind="retry", status=code, maybe_sent=method == "POST")

    @staticmethod
    def _reason(response: Response) -> str:
        """The server's reason, short: FastAPI-style ``detail`` when there is one."""
        text = response.content[:2000].decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            return " ".join(text.split())[:300]
        detail = data.get("detail", data) if isinstance(data, dict) else data
        if isinstance(detail, list):
            parts = []
            for d in detail[:5]:
                if isinstance(d, dict):
                    loc = ".".join(str(p) for p in d.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", d)))
                else:
                    parts.append(str(d))
            return "; ".join(parts)[:300]
        return str(detail)[:300]

    def _job(self, method: str, path: str, response: Response) -> JobRef:
        """The job in a 2xx body; a body that is not one may hide a stored job: retry."""
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
        if (
            isinstance(data, dict)
            and isinstance(data.get("id"), str)
            and data["id"]
            and isinstance(data.get("hash"), str)
            and isinstance(data.get("status"), str)
        ):
            return JobRef(data["id"], data["status"], data["hash"])
        raise RequestFailed(
            f"{method} {path}: HTTP {response.status} with a body that is not a Job",
            kind="retry", status=response.status, maybe_sent=method == "POST",
        )  # fmt: skip

    async def submit(self, body: dict[str, Any]) -> JobRef:
        """``POST /jobs``; the created job, or ``RequestFailed``."""
        payload = _encode(body).encode("utf-8")
        response = await self._request("POST", "/jobs", body=payload)
        if not 200 <= response.status < 300:
            raise self._failure("POST", "/jobs", response)
        job = self._job("POST", "/jobs", response)
        if job.hash != body.get("hash"):
            raise RequestFailed(
                "POST /jobs: the server answered with a job for another hash",
                kind="retry", status=response.status, maybe_sent=True,
            )  # fmt: skip
        return job

    async def find_by_hash(self, experiment_id: str, job_hash: str) -> JobRef | None:
        """``GET /experiments/{id}/jobs/{hash}``: the job, or None on 404."""
        path = f"/experiments/{quote(experiment_id, safe='')}/jobs/{quote(job_hash, safe='')}"
        display = "GET /experiments/{experiment_id}/jobs/{hash}"
        response = await self._request("GET", path)
        if response.status == 404:
            return None
        if not 200 <= response.status < 300:
            raise self._failure("GET", display, response)
        return self._job("GET", display, response)

    async def probe(self) -> tuple[int, str]:
        """Status and content type of a lookup that cannot match (for ``doctor``).

        The Jobs API answers 404 in JSON; a wrong base URL gets some web server's 404.
        """
        response = await self._request("GET", "/experiments/logbook-doctor/jobs/0")
        return response.status, response.header("content-type") or ""

    async def get_job(self, remote_id: str) -> JobRef | None:
        """``GET /jobs/{id}``: the job, or None on 404."""
        response = await self._request("GET", f"/jobs/{quote(remote_id, safe='')}")
        if response.status == 404:
            return None
        if not 200 <= response.status < 300:
            raise self._failure("GET", "/jobs/{id}", response)
        return self._job("GET", "/jobs/{id}", response)
