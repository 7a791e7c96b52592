"""The Jobs API's HTTP layer, written once for the emulator and the relay (aiohttp.web).

Three routes with the API's shapes: ``POST /jobs``, ``GET /jobs/{job_id}`` and
``GET /experiments/{experiment_id}/jobs/{job_hash}``; the key in the query
string or the ``authorization`` header (raw or "Bearer"); 422 in FastAPI's
shape for a body that fails the API's model or is not JSON; 404, 405 and 413
like the API.  What happens to a job is a ``Backend``'s business: the
emulator keeps jobs in memory, the relay commits them to a logbook store.

``serve()`` runs an app until SIGTERM/SIGINT, with TLS when given a
certificate, printing a ready line with the bound address; connections are
capped and timed out (``listen``), and request bodies in memory are capped
(``ByteBudget``: past it, 429 with Retry-After, or 413 for a body that could
never fit).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from pydantic import ValidationError

from ..models import ServerJobSubmit
from ..redact import presented
from ..vocab import REOFFER_HEADER
from .listen import RESERVED_FDS, CappedSite, Connections, Limits, OneLineRequestErrors
from .listen import descriptor_budget as descriptor_budget

KEY_PARAM = "HAIQU_API_KEY"
MAX_BODY = 16 * 1024 * 1024
MIB = 1024 * 1024
#: Request bodies held in memory at once (read, parsed, waiting for their commit),
#: in all and per client: what a body costs in memory is a few times its size.
MAX_BYTES_IN_FLIGHT = 32 * MIB
MAX_BYTES_IN_FLIGHT_PER_CLIENT = 16 * MIB
#: A body that sends nothing for this long is answered 408.
BODY_TIMEOUT = 60.0
ROUTE_POST_JOBS = "POST /jobs"
ROUTE_GET_JOB = "GET /jobs/{job_id}"
ROUTE_GET_BY_HASH = "GET /experiments/{experiment_id}/jobs/{job_hash}"
ROUTES: tuple[str, ...] = (ROUTE_POST_JOBS, ROUTE_GET_JOB, ROUTE_GET_BY_HASH)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: ``wrap(route, handler)``: lets the emulator put latency and faults around a route.
Wrap = Callable[[str, Handler], Handler]


class Backend(Protocol):
    """Where jobs live.  ``client`` names who sent the request (a relay key's name, or "")."""

    async def create(
        self, body: dict[str, Any], client: str, *, reoffer: bool = False
    ) -> dict[str, Any]: ...

    async def get(self, job_id: str) -> dict[str, Any] | None: ...

    async def find(self, experiment_id: str, job_hash: str) -> dict[str, Any] | None: ...


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json",
        headers=headers,
    )  # fmt: skip


def presented_key(request: web.Request) -> str | None:
    """The key a request carries: the query parameter, else the authorization header.

    Whatever it is, it is redacted from anything logged about this request.
    """
    sent = request.query.get(KEY_PARAM)
    if sent is None:
        sent = request.headers.get("authorization")
        if sent is not None and sent[:7].lower() == "bearer ":
            sent = sent[7:]
    if sent:
        presented.set((sent,))
    return sent


def key_matches(sent: str | None, key: bytes) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), key)


def _detail(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape: one entry per field, ``loc`` starting with "body"."""
    return [
        {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404, 405 and 413 answered in the API's JSON, as FastAPI does."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return json_response(413, {"detail": "Request entity too large"})
    except web.HTTPMethodNotAllowed:
        return json_response(405, {"detail": "Method Not Allowed"})
    except web.HTTPNotFound:
        return json_response(404, {"detail": "Not Found"})


class ByteBudget:
    """Bytes of request bodies in flight, per client and in all, so memory stays bounded
    whatever clients send: a body is admitted only when its bytes fit both.
    """

    def __init__(self, total: int = MAX_BYTES_IN_FLIGHT,
                 per_client: int = MAX_BYTES_IN_FLIGHT_PER_CLIENT) -> None:  # fmt: skip
        self.total = total
        self.per_client = per_client
        self.held = 0
        self.by_client: dict[str, int] = {}

    def fits_ever(self, n: int) -> bool:
        return n <= min(self.total, self.per_client)

    def take(self, client: str, n: int) -> bool:
        mine = self.by_client.get(client, 0)
        if self.held + n > self.total or mine + n > self.per_client:
            return False
        self.held += n
        self.by_client[client] = mine + n
        return True

    def give(self, client: str, n: int) -> None:
        self.held -= n
        left = self.by_client.get(client, 0) - n
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


class JobsApi:
    """The three routes over a ``Backend``.

    ``authorize(request)`` returns the client's name, or None for a wrong or
    missing key (401).  ``wrap`` (the emulator's faults) goes around each route.
    """

    def __init__(
        self,
        backend: Backend,
        authorize: Callable[[web.Request], str | None],
        *,
        wrap: Wrap | None = None,
        max_body: int = MAX_BODY,
        budget: ByteBudget | None = None,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.authorize = authorize
        self.wrap = wrap
        self.max_body = max_body
        self.budget = budget or ByteBudget()
        self.body_timeout = body_timeout

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[_api_errors])
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        def route(name: str, handler: Handler) -> Handler:
            guarded = self._guarded(handler)
            return self.wrap(name, guarded) if self.wrap else guarded

        app.router.add_post("/jobs", route(ROUTE_POST_JOBS, self.post_job))
        app.router.add_get("/jobs/{job_id}", route(ROUTE_GET_JOB, self.get_job))
        app.router.add_get(
            "/experiments/{experiment_id}/jobs/{job_hash}",
            route(ROUTE_GET_BY_HASH, self.get_by_hash),
        )

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            client = self.authorize(request)
            if client is None:
                return json_response(401, {"detail": "Invalid or missing API key"})
            request["client"] = client
            return await handler(request)

        return guarded

    async def post_job(self, request: web.Request) -> web.StreamResponse:
        """A POST's body is read only when its bytes fit the budget (429 or 413 otherwise), and
        it holds its share until the job is answered."""
        length = request.content_length
        most = min(self.max_body, self.budget.total, self.budget.per_client)
        need = most if length is None else length  # a chunked body may be as large as allowed
        if need > most:
            raise web.HTTPRequestEntityTooLarge(max_size=most, actual_size=need)
        client = request["client"]
        if not self.budget.take(client, need):
            return json_response(
                429, {"detail": "too many request bytes in flight: try again shortly"},
                {"Retry-After": "1"},
            )  # fmt: skip
        try:
            return await self._post_job(request, need)
        finally:
            self.budget.give(client, need)

    async def _read_body(self, request: web.Request, most: int) -> bytearray | None:
        """The body, or None when it stalled for ``body_timeout``; 413 past ``most`` bytes."""
        body = bytearray()
        while True:
            try:
                async with asyncio.timeout(self.body_timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                return None
            if not chunk:
                return body
            body += chunk
            if len(body) > most:
                raise web.HTTPRequestEntityTooLarge(max_size=most, actual_size=len(body))

    async def _post_job(self, request: web.Request, most: int) -> web.StreamResponse:
        raw = await self._read_body(request, most)
        if raw is None:
            response = json_response(408, {"detail": "the request body stalled"})
            response.force_close()
            return response
        if not raw.strip():
            detail = [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
            return json_response(422, {"detail": detail})
        try:
            body = ServerJobSubmit.model_validate_json(raw)
        except ValidationError as exc:
            return json_response(422, {"detail": _detail(exc)})
        reoffer = request.headers.get(REOFFER_HEADER) == "1"
        job = await self.backend.create(body.model_dump(), request["client"], reoffer=reoffer)
        return json_response(200, job)

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        job = await self.backend.get(request.match_info["job_id"])
        if job is None:
            return json_response(404, {"detail": "Job not found"})
        return json_response(200, job)

    async def get_by_hash(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        job = await self.backend.find(info["experiment_id"], info["job_hash"])
        if job is None:
            return json_response(404, {"detail": "Job not found"})
        return json_response(200, job)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from a PEM certificate (chain) and key, or None for plain http."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("TLS needs both a certificate and a key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (OSError when it is taken or not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    shutdown_timeout: float = 10.0,
    limits: Limits | None = None,
    reserve_fds: int = RESERVED_FDS,
) -> None:
    """Serve until SIGTERM or SIGINT: stop accepting, let requests in hand finish, then return.

    The socket is bound first (OSError when the port is taken: nothing else has
    started); ``ready`` gets the base URL once it listens (port 0 picks a free
    one).  ``limits`` caps and times out connections; ``reserve_fds``
    descriptors are kept for everything else the process opens.
    """
    sock = bind(host, port)
    limits = descriptor_budget(limits or Limits(), reserve_fds)
    errors = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineRequestErrors) for f in errors.filters):
        errors.addFilter(OneLineRequestErrors())
    conns = Connections()
    app.middlewares.insert(0, conns.middleware())
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
        keepalive_timeout=limits.idle_timeout,
    )  # fmt: skip
    try:
        await runner.setup()
        site = CappedSite(runner, sock, limits, conns, ssl_context=tls)
        await site.start()
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    ready(f"{'https' if tls else 'http'}://{shown}:{bound}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # stops accepting, waits for requests in hand
        if on_stop is not None:
            await on_stop()
