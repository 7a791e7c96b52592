"""The Haiqu Jobs API client: the only package that touches HTTP.

It speaks httpx2 (``httpx2.Request``/``Response``; tests inject
``httpx2.MockTransport``).  Underneath, by default, the bytes go through
aiohttp's connection pool (``transport.AiohttpTransport``): httpx2's own pool
costs several times the CPU per request with many in flight.  Proxies and
trusted CAs come from ``network``.

Two rules shape it:

- The key never leaks.  It is only in the request handed to the transport,
  on its way to the wire: the response carries a key-free request, a
  transport error is raised again against that one, and every message is
  redacted (every spelling of the key, before anything is cut) before it
  leaves this package.  httpx2's client, which logs URLs, is not used.
- Every failure is one ``RequestFailed`` carrying one ``Verdict`` (what the
  failure means for the job: not sent, maybe sent, rejected, retry later, or
  stop the run), decided here, once, from what the wire showed.  "Nothing was
  sent" is claimed only when no connection was opened (DNS, refused, TLS
  handshake, a proxy that refused the CONNECT); anything later may have
  reached the server.  That line is what keeps delivery exactly-once.

A 3xx is never followed: a POST must not go to another URL on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httpx2

from ..config import Network, hidden_url
from ..errors import InvalidJob, RequestFailed, Verdict
from ..jobs import prepare, same_job
from ..redact import redact, show_url
from ..vocab import MAX_RETRY_DELAY, REOFFER_HEADER, STATUSES

# httpx2/httpcore2 log URLs and headers; nothing of ours is worth that risk.
for _name in ("httpx2", "httpcore2", "httpx", "httpcore", "aiohttp.client"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["REQUESTS", "ApiClient", "JobRef", "parse_retry_after", "key_param", "ping"]

#: One line per request at DEBUG (``-vv``): method, route, status, time; the key is never
#: in it (the route is the template, the endpoint shown without credentials).
wire = logging.getLogger("logbook.http")

AUTH_CODES = frozenset({401, 403})
RETRY_CODES = frozenset({408, 429})
RETRY_AFTER_CAP = MAX_RETRY_DELAY
USER_AGENT = "logbook/0.2"
#: delay-seconds (RFC 9110: digits; a decimal fraction is tolerated).
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_STATUS_SET = frozenset(STATUSES)
_CERT_FAILURE = re.compile(r"certificate verify failed|CERTIFICATE_VERIFY_FAILED", re.I)
#: This process's requests by status code ("error": no answer), for the daemons' metrics.
#: Only the loop that sends adds to it; readers take ``dict(REQUESTS)`` (one C call).
REQUESTS: Counter[str] = Counter()
_CODES = {code: str(code) for code in range(100, 600)}
#: One encoder for every body: ``json.dumps`` with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def parse_retry_after(
    value: str | None, *, now: float | None = None, server_date: str | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    A date is taken from the answer's own ``Date`` (``server_date``) when it has
    one: a server whose clock is hours off still means the seconds it says.
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        # float() alone would take "nan", "inf", "-5" and "1e9"; none is a delay.
        when = _http_date(value)
        if when is None:
            return None
        seconds = when - (_http_date(server_date) or (time.time() if now is None else now))
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def _http_date(value: str | None) -> float | None:
    """An HTTP date as a timestamp; None when it is missing or not a date."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    # "-0000" parses without a zone: UTC, not local time
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def key_param(key: str) -> str:
    """The query parameter that carries the key, percent-encoded (a raw ``+`` is a space)."""
    return "HAIQU_API_KEY=" + quote(key, safe="")


def remote_status(value: str) -> str:
    """A status the server sent, as stored: the API's enum, or ``Unknown`` with the raw
    value escaped (once: a value already so marked is kept as it is).
    """
    if value in _STATUS_SET or (value.startswith("Unknown (") and value.endswith(")")):
        return value[:60]
    escaped = value[:40].encode("unicode_escape").decode("ascii")
    return f"Unknown ({escaped})"


class JobRef(NamedTuple):
    """What logbook keeps of a job the server returns.

    ``models.Job`` is the whole shape; reading only these fields keeps
    pydantic out of the sync, and a server that changes any other field breaks
    nothing.  ``info`` carries a relay's ``upstream_id``/``upstream_status``.
    """

    id: str
    status: str
    hash: str
    experiment_id: str | None = None
    info: dict[str, Any] | None = None
    circuit_id: str | None = None

    @property
    def upstream_id(self) -> str | None:
        """The job's id beyond a relay (``info.upstream_id``), when it came through one."""
        value = (self.info or {}).get("upstream_id")
        return value if isinstance(value, str) and value else None

    @property
    def relayed(self) -> bool:
        """Answered by a logbook relay (its jobs say where they are in ``info.relay``)."""
        return isinstance((self.info or {}).get("relay"), str)

    def holds_other_content(self, job: Mapping[str, Any]) -> bool:
        """A relay says (``info.content_key``, its ``circuit_id``) that this job, of
        ``job``'s identity, holds other content: it is not ``job``, whatever its id.
        ``job`` is taken as the relay would store it (``prepare``), so this agrees with the
        relay's own 409.
        """
        key = (self.info or {}).get("content_key")
        if not isinstance(key, str):
            return False
        try:
            return not same_job(key, self.circuit_id, prepare(job))
        except InvalidJob:
            return False  # the relay would refuse it (422): that is no verdict on the job

    @property
    def refused_upstream(self) -> str | None:
        """The API's reason, when a relay says the API refused this job for good."""
        info = self.info or {}
        if info.get("relay") != "rejected":
            return None
        reason = info.get("error")
        return str(reason)[:500] if reason else "the API refused it"


#: ``get_job``'s answer when the server says, in its own JSON, that it has no such job.
GONE = "gone"


def _default_transport(
    connections: int, connect_timeout: float, network: Network, tls: bool
) -> Any:
    from .network import make_ssl_context, proxy_resolver
    from .transport import AiohttpTransport

    return AiohttpTransport(
        limit=connections,
        # Only an https endpoint needs the trust store (reading it costs tens of ms).
        ssl_context=make_ssl_context(network.ca_bundle) if tls else None,
        proxy_for=proxy_resolver(network.proxy),
        connect_timeout=connect_timeout,
    )


class ApiClient:
    """The three routes logbook uses, with failures classified for the sync engine."""

    def __init__(
        self,
        endpoint: str,
        key: str,
        *,
        auth: str = "query",
        connections: int = 64,
        transport: httpx2.AsyncBaseTransport | None = None,
        connect_timeout: float = 10.0,
        deadline: float = 60.0,
        network: Network | None = None,
        endpoint_setting: str = "HAIQU_EDGE_URI",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.endpoint_setting = endpoint_setting  # named in advice: a relay's is --upstream
        self.key = key
        self.auth = auth
        self.deadline = deadline
        self.network = network or Network()
        self.secrets = [key, *_proxy_secrets(self.network)]
        self.transport = transport or _default_transport(
            connections, connect_timeout, self.network, self.endpoint.startswith("https://")
        )
        # identity: RFC 9110 reads no Accept-Encoding as "anything", brotli included.
        base = {
            "user-agent": USER_AGENT,
            "accept": "application/json",
            "accept-encoding": "identity",
        }
        keyed = {**base, "authorization": key} if auth == "header" else base
        self._param = "" if auth == "header" else "?" + key_param(key)
        self._get_headers = httpx2.Headers(keyed)
        self._post_headers = httpx2.Headers({**keyed, "content-type": "application/json"})
        self._reoffer_headers = httpx2.Headers(
            {**keyed, "content-type": "application/json", REOFFER_HEADER: "1"}
        )
        # POST /jobs is the hot path: its keyed URL, and the key-free request its
        # responses and errors carry, are made once.
        self._jobs_url = httpx2.URL(self.endpoint + "/jobs" + self._param)
        self._jobs_plain = httpx2.Request("POST", self.endpoint + "/jobs")
        self._host = urlsplit(self.endpoint).netloc
        # -vv logs each request: decided once, a run without it pays an attribute read.
        self._trace, self._shown = wire.isEnabledFor(logging.DEBUG), show_url(self.endpoint)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, *self.secrets)

    async def send(
        self, method: str, path: str, body: bytes | None = None, *, reoffer: bool = False
    ) -> httpx2.Response:
        """One raw request under the deadline; nothing it returns or raises holds the key.

        The key is in the request handed to the transport and nowhere else: the
        response carries a key-free request, and a transport error is raised
        again against it with a redacted message, outside the ``except`` block
        so that the key-bearing original is neither its cause nor its context.
        """
        if path == "/jobs" and method == "POST":
            url, plain = self._jobs_url, self._jobs_plain
        else:
            url, plain = httpx2.URL(self.endpoint + path + self._param), None
        headers = self._post_headers if body is not None else self._get_headers
        if reoffer:
            headers = self._reoffer_headers
        keyed = httpx2.Request(method, url, content=body, headers=headers)
        try:
            async with asyncio.timeout(self.deadline):
                response = await self.transport.handle_async_request(keyed)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx2.TransportError as err:
            REQUESTS["error"] += 1
            failure = type(err)(self._redact(str(err)), request=plain or self._plain(method, path))
        except TimeoutError:
            REQUESTS["error"] += 1
            raise
        else:
            REQUESTS[_CODES.get(response.status_code) or str(response.status_code)] += 1
            response.request = plain or self._plain(method, path)
            return response
        raise failure

    def _plain(self, method: str, path: str) -> httpx2.Request:
        """The request as it is shown: without the key."""
        return httpx2.Request(method, self.endpoint + path)

    async def _request(
        self, method: str, path: str, shown: str, body: bytes | None = None, *,
        reoffer: bool = False,
    ) -> httpx2.Response:  # fmt: skip
        """One request under an overall deadline (socket timeouts bound each read, not the
        whole); with ``-vv``, one log line each (method, route, status, time).
        """
        started, outcome = (time.monotonic() if self._trace else 0.0), "?"
        try:
            response = await self.send(method, path, body, reoffer=reoffer)
            outcome = str(response.status_code)
            return response
        except (TimeoutError, httpx2.HTTPError) as err:
            outcome = type(err).__name__
            failure = self._classify(method, shown, err)
        finally:
            if self._trace:  # `POST https://host/jobs -> 200 in 41 ms`: the path, no query
                ms = (time.monotonic() - started) * 1000
                wire.debug("%s %s%s -> %s in %.0f ms", method, self._shown, path, outcome, ms)
        raise failure  # outside the except block: no chain back to a key-bearing error

    def _classify(self, method: str, shown: str, err: BaseException) -> RequestFailed:
        """A transport failure as the sync engine needs it: was anything sent?"""
        after_sending = Verdict.MAYBE_SENT if method == "POST" else Verdict.RETRY_LATER
        if isinstance(err, TimeoutError):
            return RequestFailed(
                f"{method} {shown}: no complete answer from {self._host}"
                f" within {self.deadline:g} s",
                after_sending, timed_out=True,
            )  # fmt: skip
        if isinstance(err, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ProxyError)):
            reason = self._redact(str(err)) or type(err).__name__
            if _CERT_FAILURE.search(reason):
                return RequestFailed(
                    f"the TLS certificate of {self._host} (or of the proxy) did not verify"
                    f" ({reason}): if your network inspects TLS, set SSL_CERT_FILE or"
                    " ca_bundle in config.toml to your institution's CA bundle",
                    Verdict.STOP_TRUST,
                )  # fmt: skip
            return RequestFailed(
                f"{reason} (check the network, {self.endpoint_setting} and any proxy setting;"
                " `logbook doctor` tests them)",
                Verdict.NOT_SENT,
            )  # fmt: skip
        # Anything else (a read timeout, a dropped connection, a body that cannot be
        # decoded) came after the request may have reached the server.
        return RequestFailed(
            self._redact(f"{method} {shown}: {type(err).__name__} from {self._host}: {err}"),
            after_sending, timed_out=isinstance(err, httpx2.TimeoutException),
        )  # fmt: skip

    def _failure(self, method: str, shown: str, response: httpx2.Response) -> RequestFailed:
        """A non-2xx answer's verdict: the one place a status code is read for its meaning."""
        code = response.status_code
        detail = self._reason(response)
        msg = f"{method} {shown}: HTTP {code}{': ' + detail if detail else ''}"
        post = method == "POST"
        if 300 <= code < 400:
            return RequestFailed(
                self._redact(msg), Verdict.STOP_REDIRECT, status=code,
                location=self._redact(self._moved_to(response)),
            )  # fmt: skip
        if code in AUTH_CODES:
            return RequestFailed(msg, Verdict.STOP_AUTH, status=code)
        if code == 407:  # the proxy refused it: nothing reached the API
            return RequestFailed(
                f"{method} {shown}: the proxy refused the request (HTTP 407): give its user and"
                " password in the proxy URL (http://user:password@proxy:port)",
                Verdict.NOT_SENT, status=code,
            )  # fmt: skip
        if code == 404 and post and shown == "/jobs":
            return RequestFailed(
                f"POST {self.endpoint}/jobs answered 404: there is no Jobs API at"
                f" {self.endpoint} (a base path it does not serve?); set"
                f" {self.endpoint_setting} to the API's base URL (`logbook doctor` checks it)",
                Verdict.STOP_ENDPOINT, status=code,
            )  # fmt: skip
        if code in RETRY_CODES or code >= 500:
            return RequestFailed(
                msg, Verdict.MAYBE_SENT if code >= 500 and post else Verdict.RETRY_LATER,
                status=code,
                retry_after=parse_retry_after(
                    response.headers.get("retry-after"), server_date=response.headers.get("date")
                ),
            )  # fmt: skip
        if 400 <= code < 500:
            # A GET carries no job to refuse: a 4xx to a look-up (a proxy refusing a long
            # URL, say) is no verdict on the job.
            return RequestFailed(
                msg, Verdict.REJECTED if post else Verdict.RETRY_LATER, status=code
            )
        # 1xx or another code no server should send: it may have stored the job.
        return RequestFailed(msg, Verdict.MAYBE_SENT if post else Verdict.RETRY_LATER, status=code)

    def _moved_to(self, response: httpx2.Response) -> str:
        """The base URL a redirect points at: its Location without the route asked for, nor
        a query.
        """
        location = response.headers.get("location")
        if not location:
            return "(a redirect without a Location)"
        target = httpx2.URL(self.endpoint + "/").join(location)
        route = response.request.url.path[len(urlsplit(self.endpoint).path) :]
        path = target.path
        if route and path.endswith(route):
            path = path[: -len(route)]
        return show_url(str(target.copy_with(path=path or "/", query=None, fragment=None))).rstrip(
            "/"
        )

    def _reason(self, response: httpx2.Response) -> str:
        """The server's reason, redacted, then cut short: FastAPI-style ``detail`` when there
        is one.
        """
        text = self._redact(response.content[:4000].decode("utf-8", "replace"))
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
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
            return self._redact("; ".join(parts))[:300]
        return self._redact(" ".join(str(detail).split()))[:300]

    async def submit(self, body: dict[str, Any], *, reoffer: bool = False) -> JobRef:
        """``POST /jobs``; the created job, or ``RequestFailed``.

        ``reoffer``: the job was looked up first because an earlier send may have
        reached this endpoint (``REOFFER_HEADER``).
        """
        content = _encode(body).encode("utf-8")
        response = await self._request("POST", "/jobs", "/jobs", content, reoffer=reoffer)
        if not 200 <= response.status_code < 300:
            raise self._failure("POST", "/jobs", response)
        job = _job("POST", "/jobs", response)
        return _same_job("POST", "/jobs", job, body["experiment_id"], body["hash"])

    async def find_by_hash(self, experiment_id: str, job_hash: str) -> JobRef | None:
        """``GET /experiments/{id}/jobs/{hash}``: the job, or None on 404.

        Any other 4xx is no verdict on the job (a proxy may refuse a long URL):
        it stays uncertain and is tried again later.
        """
        path = f"/experiments/{quote(experiment_id, safe='')}/jobs/{quote(job_hash, safe='')}"
        shown = "/experiments/{experiment_id}/jobs/{hash}"
        response = await self._request("GET", path, shown)
        code = response.status_code
        if code == 404:
            return None
        if not 200 <= code < 300:
            raise self._failure("GET", shown, response)
        job = _job("GET", shown, response)
        return _same_job("GET", shown, job, experiment_id, job_hash)

    async def get_job(self, remote_id: str) -> JobRef | str:
        """``GET /jobs/{id}``: the job, or ``GONE`` when the server says in JSON it has none.

        A 404 that is not JSON (a web server's page: a wrong base URL, a proxy) says
        nothing about the job: it is a failure like any other.
        """
        response = await self._request("GET", f"/jobs/{quote(remote_id, safe='')}", "/jobs/{id}")
        if response.status_code == 404:
            if _is_json(response):
                return GONE
            raise RequestFailed(
                "GET /jobs/{id}: HTTP 404 that is not the API's (not JSON): check HAIQU_EDGE_URI",
                Verdict.RETRY_LATER, status=404,
            )  # fmt: skip
        if not 200 <= response.status_code < 300:
            raise self._failure("GET", "/jobs/{id}", response)
        return _job("GET", "/jobs/{id}", response)

    async def probe(self) -> tuple[int, str]:
        """Status and content type of a lookup that cannot match (for ``doctor``).

        The Jobs API answers 404 in JSON; a wrong base URL gets some web server's 404.
        """
        response = await self._request("GET", "/experiments/logbook-doctor/jobs/0", "(probe)")
        return response.status_code, response.headers.get("content-type", "")


def _job(method: str, shown: str, response: httpx2.Response) -> JobRef:
    """The job in a 2xx body; a body that is not one may hide a stored job: uncertain."""
    try:
        data = json.loads(response.content)
    except (ValueError, RecursionError):
        data = None
    if (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and data["id"]
        and isinstance(data.get("hash"), str)
        and isinstance(data.get("status"), str)
    ):
        exp, circuit = data.get("experiment_id"), data.get("circuit_id")
        info = data.get("info")
        status = data["status"]
        if isinstance(info, dict) and info.get("upstream_status") in _STATUS_SET:
            status = info["upstream_status"]  # through a relay: the status that counts
        return JobRef(
            data["id"], remote_status(status), data["hash"],
            exp if isinstance(exp, str) else None, info if isinstance(info, dict) else None,
            circuit if isinstance(circuit, str) else None,
        )  # fmt: skip
    raise RequestFailed(
        f"{method} {shown}: HTTP {response.status_code} with a body that is not a Job",
        Verdict.MAYBE_SENT if method == "POST" else Verdict.RETRY_LATER,
        status=response.status_code,
    )  # fmt: skip


def _same_job(method: str, shown: str, job: JobRef, experiment_id: str, job_hash: str) -> JobRef:
    """A job answered for another hash or experiment is never taken for ours: uncertain."""
    if job.hash != job_hash or (
        job.experiment_id is not None and job.experiment_id != experiment_id
    ):
        raise RequestFailed(
            f"{method} {shown}: the server answered with a job of another hash or experiment",
            Verdict.MAYBE_SENT,
        )  # fmt: skip
    return job


def _is_json(response: httpx2.Response) -> bool:
    try:
        json.loads(response.content)
    except (ValueError, RecursionError):
        return False
    return True


def _proxy_secrets(network: Network) -> list[str]:
    from ..redact import url_secrets

    urls = [network.proxy] + [v for k, v in os.environ.items() if k.lower().endswith("_proxy")]
    return [s for url in urls for s in url_secrets(url)]


def ping(url: str, network: Network | None = None, timeout: float = 10.0) -> int:
    """One GET to a heartbeat URL (healthchecks.io style) after a clean sync; its 2xx code.

    A ping URL is a secret (whoever has it can ping): what is raised shows its
    scheme and host alone, redacted of the whole URL.  Raises ``RequestFailed``
    when no 2xx came back.
    """
    return asyncio.run(_ping(url, network or Network(), timeout))


async def _ping(url: str, network: Network, timeout: float) -> int:
    parts = urlsplit(url)
    hidden = [url, parts.path.strip("/"), parts.query, *_proxy_secrets(network)]
    shown = hidden_url(url)
    transport = _default_transport(1, timeout, network, url.startswith("https://"))
    try:
        async with asyncio.timeout(timeout):
            request = httpx2.Request("GET", url, headers={"user-agent": USER_AGENT})
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
    except (TimeoutError, httpx2.HTTPError, ValueError) as err:
        failure = RequestFailed(
            redact(f"GET {shown}: {type(err).__name__}: {err}", *hidden), Verdict.RETRY_LATER
        )
    else:
        code = response.status_code
        if 200 <= code < 300:
            return code
        failure = RequestFailed(f"GET {shown}: HTTP {code}", Verdict.RETRY_LATER, status=code)
    finally:
        await transport.aclose()
    raise failure
