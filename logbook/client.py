"""The Haiqu Jobs API client: the only module that touches httpx.

Two facts from FINDINGS.md shape it:

- The key must never leak.  httpx logs every URL at INFO, and its exceptions
  and ``repr(request)`` carry the URL.  So the key is added *below* httpx, in
  a transport wrapper, on the way to the wire: no ``httpx.Request`` that
  httpx logs, raises or returns ever holds it.
- One ``httpx.AsyncClient`` slows down badly as its pool grows.  Callers keep
  the httpx API; underneath, the bytes go through aiohttp's connection pool
  and C parser when aiohttp is installed (``pip install logbook[fast]``), or
  else through many small httpx pools, with each request going to the
  least busy one.

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
from typing import Any
from urllib.parse import quote

import httpx

from .errors import RequestFailed
from .secrets import redact

log = logging.getLogger("logbook.client")
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


# --- transports -------------------------------------------------------------------


class KeyTransport(httpx.AsyncBaseTransport):
    """Adds the API key to each request on its way out (query or header)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, key: str, auth: str) -> None:
        self.inner = inner
        self.key = key
        self.auth = auth
        self._param = key_param(key).encode("ascii")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
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


class ShardedTransport(httpx.AsyncBaseTransport):
    """Many small httpx pools: each request goes to the least busy one.

    One pool of 64 connections manages 260 req/s here; 32 pools of 2 several
    times that (see README, "Performance").
    """

    def __init__(self, connections: int, per_shard: int = 2) -> None:
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


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests carried by aiohttp's pool and C parser.

    It adds the key itself on the way to the wire (like ``KeyTransport``), from
    a cache of wire URLs, so a request is not rebuilt.  Errors map to httpx's
    own classes, keeping the one distinction that matters here: a failed
    connect (nothing sent) versus anything later (the server may have the job).
    """

    def __init__(self, connections: int, *, key: str | None = None, auth: str = "query") -> None:
        self.connections = connections
        self.key = key
        self.auth = auth
        self._param = key_param(key) if key else ""
        self._wire: dict[str, Any] = {}
        self._session: Any = None

    def _wire_url(self, url: httpx.URL) -> Any:
        import yarl

        text = str(url)
        wire = self._wire.get(text)
        if wire is None:
            keyed = text
            if self._param and self.auth != "header":
                keyed += ("&" if "?" in text else "?") + self._param
            wire = yarl.URL(keyed, encoded=True)
            if len(self._wire) < 64:  # POST /jobs and a few others; GET paths vary
                self._wire[text] = wire
        return wire

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        url = self._wire_url(request.url)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        if self.key and self.auth == "header":
            headers["authorization"] = self.key
        body = request.content if request.method not in ("GET", "HEAD") else None
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body,
                allow_redirects=False, timeout=timeout,
            ) as resp:  # fmt: skip
                content = await resp.read()
                status, raw_headers = resp.status, list(resp.raw_headers)
        except aiohttp.ConnectionTimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except aiohttp.ClientConnectorError as err:
            raise httpx.ConnectError(f"cannot connect: {err.os_error}", request=request) from None
        except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError):
            raise httpx.ReadTimeout("timed out waiting for the response", request=request) from None
        except aiohttp.ServerDisconnectedError:
            raise httpx.RemoteProtocolError(
                "server closed the connection without a response", request=request
            ) from None
        except aiohttp.ClientPayloadError:
            raise httpx.ReadError("response body cut short", request=request) from None
        except aiohttp.ClientError as err:
            raise httpx.ReadError(
                f"connection failed: {type(err).__name__}", request=request
            ) from None
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def default_engine() -> str:
    """``aiohttp`` when it is installed, else ``httpx``; ``LOGBOOK_HTTP_ENGINE`` overrides."""
    choice = os.environ.get("LOGBOOK_HTTP_ENGINE", "").strip().lower()
    if choice in ("httpx", "aiohttp"):
        return choice
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "httpx"
    return "aiohttp"


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
        self.deadline = deadline
        self.engine = "custom" if transport is not None else (engine or default_engine())
        # The transport is called directly, without httpx.AsyncClient: its per-request
        # URL merging and header handling cost more CPU than the HTTP work itself
        # (three URL parses per request).  Same types, same transport API.
        if self.engine == "aiohttp":
            self.transport: httpx.AsyncBaseTransport = AiohttpTransport(
                connections, key=key, auth=auth
            )
        else:
            inner = transport if transport is not None else ShardedTransport(connections)
            self.transport = KeyTransport(inner, key, auth)
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=None).as_dict()
        base = {"user-agent": USER_AGENT, "accept": "application/json"}
        self._get_headers = httpx.Headers(base)
        self._post_headers = httpx.Headers({**base, "content-type": "application/json"})
        self._jobs_url = httpx.URL(self.endpoint + "/jobs")

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, self.key)

    async def send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        """One raw request (read to the end), with no classification and no deadline."""
        url = self._jobs_url if path == "/jobs" else httpx.URL(self.endpoint + path)
        request = httpx.Request(
            method, url, content=body, extensions={"timeout": self._timeout},
            headers=self._post_headers if body is not None else self._get_headers,
        )  # fmt: skip
        response = await self.transport.handle_async_request(request)
        response.request = request  # as httpx.AsyncClient does: the key-free request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _request(
        self, method: str, path: str, *, body: bytes | None = None
    ) -> httpx.Response:
        """One request under an overall deadline (httpx's timeouts are per socket operation)."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self.send(method, path, body)
        except TimeoutError:
            raise RequestFailed(
                f"{method} {path}: no complete response within {self.deadline:g} s",
                kind="retry", maybe_sent=method == "POST",
            ) from None  # fmt: skip
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            raise RequestFailed(
                self._redact(f"{method} {path}: cannot connect to {self.endpoint}: {err}"),
                kind="retry", maybe_sent=False, connect_failed=True,
            ) from None  # fmt: skip
        except httpx.TransportError as err:
            raise RequestFailed(
                self._redact(f"{method} {path}: {type(err).__name__}: {err}"),
                kind="retry", maybe_sent=method == "POST",
            ) from None  # fmt: skip

    def _failure(self, method: str, path: str, response: httpx.Response) -> RequestFailed:
        code = response.status_code
        detail = self._reason(response)
        msg = self._redact(f"{method} {path}: HTTP {code}{': ' + detail if detail else ''}")
        if code in AUTH_CODES:
            return RequestFailed(msg, kind="auth", status=code)
        if code in RETRY_CODES or code >= 500:
            return RequestFailed(
                msg, kind="retry", status=code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                maybe_sent=code >= 500 and method == "POST",
            )  # fmt: skip
        if code in REJECT_CODES or 400 <= code < 500:
            return RequestFailed(msg, kind="reject", status=code)
        return RequestFailed(msg, kind="retry", status=code, maybe_sent=method == "POST")

    @staticmethod
    def _reason(response: httpx.Response) -> str:
        """The server's reason, short: FastAPI-style ``detail`` when there is one."""
        text = response.text[:2000]
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

    def _job(self, method: str, path: str, response: httpx.Response) -> Any:
        from pydantic import ValidationError

        from .models import Job

        try:
            return Job.model_validate_json(response.content)
        except (ValidationError, ValueError):
            raise RequestFailed(
                f"{method} {path}: HTTP {response.status_code} with a body that is not a Job",
                kind="retry", status=response.status_code, maybe_sent=method == "POST",
            ) from None  # fmt: skip

    async def submit(self, body: dict[str, Any]) -> Any:
        """``POST /jobs``; the created ``Job``, or ``RequestFailed``."""
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response = await self._request("POST", "/jobs", body=payload)
        if not response.is_success:
            raise self._failure("POST", "/jobs", response)
        job = self._job("POST", "/jobs", response)
        if job.hash != body.get("hash"):
            raise RequestFailed(
                "POST /jobs: the server answered with a job for another hash",
                kind="retry", status=response.status_code, maybe_sent=True,
            )  # fmt: skip
        return job

    async def find_by_hash(self, experiment_id: str, job_hash: str) -> Any | None:
        """``GET /experiments/{id}/jobs/{hash}``: the job, or None on 404."""
        path = f"/experiments/{quote(experiment_id, safe='')}/jobs/{quote(job_hash, safe='')}"
        display = "GET /experiments/{experiment_id}/jobs/{hash}"
        response = await self._request("GET", path)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._failure("GET", display, response)
        return self._job("GET", display, response)

    async def probe(self) -> tuple[int, str]:
        """Status and content type of a lookup that cannot match (for ``doctor``).

        The Jobs API answers 404 in JSON; a wrong base URL gets some web server's 404.
        """
        response = await self._request("GET", "/experiments/logbook-doctor/jobs/0")
        return response.status_code, response.headers.get("content-type", "")

    async def get_job(self, remote_id: str) -> Any | None:
        """``GET /jobs/{id}``: the job, or None on 404."""
        response = await self._request("GET", f"/jobs/{quote(remote_id, safe='')}")
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._failure("GET", "/jobs/{id}", response)
        return self._job("GET", "/jobs/{id}", response)
