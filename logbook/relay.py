"""``logbook relay``: a lab gateway that speaks the Jobs API and forwards it, exactly once.

Lab machines point ``HAIQU_EDGE_URI`` at the relay and authenticate with
relay keys (``store.keys``); only the relay holds the upstream key.

- **Durable before it answers.**  A POST is validated like the API (422),
  then committed to the relay's own logbook store (WAL, ``synchronous=FULL``)
  before the 2xx goes out.  Concurrent POSTs share one commit (group commit):
  while one batch is being written, the next gathers.
- **Exactly once across two hops.**  The store's unique ``(experiment_id,
  hash)`` makes a repeated POST return the job already held: unlike the API,
  the relay de-duplicates, so a lab machine's retry after a dropped answer
  creates nothing new.  Upstream, the store is drained by the sync engine
  (``engine.BackgroundSyncer``): look-ups after uncertain outcomes, back-off,
  proxies and CAs, and refresh of unfinished statuses.
- **Ids and statuses flow back.**  The relay answers at once with its own
  stable id (``relay-<entry id>``); once the job is upstream, its documents
  carry ``info.upstream_id`` and ``info.upstream_status`` (the API's ``info``
  is a free object, which its clients ignore), and ``status`` is the
  upstream's.
- **Fair share.**  Each client key may have at most its share of the
  requests in flight; beyond it, 429 with Retry-After.  Bodies in memory,
  connections and their timeouts are capped by ``logbook.server``.
- **Keys take effect at once.**  ``relay key add`` and ``revoke`` (another
  process) are seen by the next request (``KeyRing``).
- **One trust domain.**  Any live relay key reads any job of the relay, and a
  POST of a job another key posted returns that job (de-duplication works
  across the lab): run one relay per group that may see each other's jobs.

The HTTP layer (routes, validation, auth) is ``logbook.server``, shared with
the emulator.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .engine import BackgroundSyncer, require
from .errors import Conflict, InvalidJob, LogbookError, NotFound
from .jobs import JobDocument, content_key, prepare
from .server import (
    ROUTE_POST_JOBS,
    ByteBudget,
    Handler,
    JobsApi,
    json_response,
    presented_key,
    serve,
)
from .server.listen import RESERVED_FDS, Every, Limits
from .server.metrics import ClientRequests, count_requests
from .store import Entry
from .store.relay import Held, RelayKeys
from .store.worker import StoreWorker
from .vocab import STATUSES

if TYPE_CHECKING:
    import ssl

    from .config import Config
    from .monitor import Monitor

log = logging.getLogger("logbook.relay")

ID_PREFIX = "relay-"
_STATUSES = frozenset(STATUSES)
#: Requests in flight across all clients; each active client gets an equal share.
MAX_IN_FLIGHT = 1024
#: At most this many jobs are committed in one transaction.
COMMIT_BATCH = 512
#: How often the relay looks for jobs other processes put in its store.
BACKLOG_POLL = 2.0
#: The most requests a relay keeps in flight upstream.
MAX_FORWARD_CONCURRENCY = 512


#: Where a job is at the relay, as its documents say in ``info.relay``.
_WHERE = {"pending": "queued", "sending": "forwarding", "rejected": "rejected"}


def job_view(entry: Entry) -> dict[str, Any]:
    """An entry as the API's Job document (``jobs.JobDocument``), with the API's id and
    status in ``info`` once the API has the job (``upstream_id``, ``upstream_status``).

    ``status`` is always one of the API's values (clients such as the Haiqu SDK refuse
    others): an upstream status outside the enum is kept in ``info.upstream_status_raw``.
    """
    # The content's key (``jobs.same_job``): a lab never takes a job of its identity with
    # other content for its own (a fresh relay may give that job the id the lab's once had).
    info: dict[str, Any] = {
        "relay": _WHERE.get(entry.state, "forwarded"),
        "content_key": content_key(entry.post_body()),
    }
    status = "Submitted"
    if entry.confirmed:
        status = entry.remote_status if entry.remote_status in _STATUSES else "Submitted"
        info["upstream_id"] = entry.api_id
        info["upstream_status"] = status
        if entry.remote_status not in _STATUSES:
            info["upstream_status_raw"] = entry.remote_status
    elif entry.state == "rejected":
        info["error"] = entry.last_error
        status = "Error"
    doc = JobDocument.from_job(
        entry.post_body(), id=f"{ID_PREFIX}{entry.id}", status=status,
        created=entry.created_at, info=info,
    )  # fmt: skip
    return doc.to_dict()


class StoreBackend:
    """Jobs in the relay's store, committed in groups before anyone is answered."""

    def __init__(self, db: StoreWorker, on_commit: Callable[[], None]) -> None:
        self.db = db
        self.on_commit = on_commit
        self.queue: list[tuple[dict[str, Any], str, bool, asyncio.Future[Held]]] = []
        self.writer: asyncio.Task[None] | None = None
        self.commits = 0

    async def create(
        self, body: dict[str, Any], client: str, *, reoffer: bool = False
    ) -> dict[str, Any]:
        """Commit the job (or find it held), then answer with it.

        Raises ``InvalidJob`` (422, like the API's own checks) and ``Conflict`` (409:
        the identity is held with other content).
        """
        job = prepare(body)
        fut: asyncio.Future[Held] = asyncio.get_running_loop().create_future()
        self.queue.append((job, f"relay:{client}", reoffer, fut))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write())
        held = await asyncio.shield(fut)  # a client that hangs up cannot undo a commit
        if held.conflict:
            raise Conflict(
                f"{ID_PREFIX}{held.entry.id} holds experiment_id {job['experiment_id']!r} and"
                " this hash with other content: a job is never linked to another's"
            )
        return job_view(held.entry)

    async def _write(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:COMMIT_BATCH], self.queue[COMMIT_BATCH:]
            store = self.db.store
            try:
                results = await self.db.run(
                    store.relay.record_batch, [b[0] for b in batch], [b[1] for b in batch],
                    [b[2] for b in batch],
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 - every waiter learns why
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.commits += 1
            for (*_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            self.on_commit()

    async def drain(self) -> None:
        if self.writer is not None:
            await self.writer

    async def get(self, job_id: str) -> dict[str, Any] | None:
        number = job_id.removeprefix(ID_PREFIX)
        # ASCII digits only: str.isdigit() takes '²', '١' and '１' too.
        if not (job_id.startswith(ID_PREFIX) and number.isascii() and number.isdigit()
                and len(number) <= 18):  # fmt: skip
            return None
        store = self.db.store
        try:
            entry = await self.db.run(store.get, int(number))
        except NotFound:  # only then: a 404 tells a lab its relay lost the job
            return None
        return job_view(entry)

    async def find(self, experiment_id: str, job_hash: str) -> dict[str, Any] | None:
        entry = await self.db.run(self.db.store.find, experiment_id, job_hash)
        return None if entry is None else job_view(entry)


@dataclass
class RelayOptions:
    host: str
    port: int
    upstream: str
    tls: ssl.SSLContext | None = None
    refresh_every: float = 30.0
    max_in_flight: int = MAX_IN_FLIGHT
    limits: Limits = field(default_factory=Limits)
    budget: ByteBudget = field(default_factory=ByteBudget)


class KeyRing:
    """The relay keys as the running relay sees them, read again whenever the store changed.

    ``relay key add`` and ``revoke`` (another process) commit to the store; the
    next request sees ``PRAGMA data_version`` change and reads the keys again,
    so both take effect at once.  Checking costs one pragma (about 8 µs) on a
    read-only connection of the loop's own thread (no wait behind the store
    thread's commits), once per turn of the event loop.
    """

    def __init__(self, path: str) -> None:
        from .store import Store

        self.store = Store(path, readonly=True)
        self.version: int | None = None
        self.keys: dict[str, tuple[str, bool]] = {}
        self.every = Every()
        self.fresh = False

    def refresh(self) -> None:
        """Read the keys again if the store changed; checked once per turn of the event loop
        (requests that arrived together share the check: a burst costs one pragma)."""
        if self.fresh:
            return
        try:
            version = self.store.keys.version()
            if version != self.version:
                self.keys = self.store.keys.by_digest()
                self.version = version
        except LogbookError as err:  # the last keys read stay in force
            self.every.log(logging.WARNING, "keys", "cannot read the relay keys: %s", err)
        try:
            asyncio.get_running_loop().call_soon(self._stale)
            self.fresh = True
        except RuntimeError:  # no loop running: check every time
            pass

    def _stale(self) -> None:
        self.fresh = False

    def active(self) -> int:
        return sum(1 for _, live in self.keys.values() if live)

    def client(self, sent: str, remote: str | None) -> str | None:
        """The name of a live key, else None (401), with the refusal logged (rate-limited):
        the key's name when it is a revoked one, a short fingerprint otherwise, never the key.
        """
        self.refresh()
        digest = RelayKeys.digest(sent)
        name, live = self.keys.get(digest, (None, False))
        if live:
            return name
        who = f"the revoked relay key {name!r}" if name else f"an unknown key (sha256 {digest[:8]})"
        self.every.log(logging.WARNING, f"refused {name}", "refused %s from %s", who, remote)
        return None

    def close(self) -> None:
        self.store.close()


class Relay:
    def __init__(self, cfg: Config, options: RelayOptions) -> None:
        from .config import check_endpoint

        self.cfg = cfg
        self.o = options
        # Four times the requests in flight upstream: every job costs a look-up and a post
        # (its store may be a restored copy), and twice was 0.82x-0.87x a direct sync at 50 ms.
        self.upstream_cfg = replace(
            cfg, endpoint=check_endpoint(options.upstream, "--upstream"),
            endpoint_setting="--upstream",
            concurrency=min(MAX_FORWARD_CONCURRENCY, 4 * cfg.concurrency),
        )  # fmt: skip
        require(self.upstream_cfg)  # the relay holds the upstream key; lab machines never do
        self.db = StoreWorker(str(cfg.db))
        self.keyring = KeyRing(str(cfg.db))
        self.forwarder = BackgroundSyncer(
            self.upstream_cfg, refresh_every=options.refresh_every,
            on_failure=self._upstream_failed, label="forwarding", meanwhile="still taking jobs",
        )  # fmt: skip
        self.backend = StoreBackend(self.db, self.forwarder.kick)
        self.api = JobsApi(
            self.backend, self.authorize, wrap=self._fair, budget=options.budget,
            body_timeout=options.limits.idle_timeout,
        )  # fmt: skip
        self.in_flight: Counter[str] = Counter()
        self.answered: Counter[int] = Counter()
        self.taken = 0
        self.counts_at_start: dict[str, int] = {}
        self.counts_at_end: dict[str, int] = {}
        #: systemd and ``--metrics`` (set by the command line before ``run``), if wanted.
        self.monitor: Monitor | None = None

    def authorize(self, request: web.Request) -> str | None:
        """The client's name for a live relay key, else None (401); once per request."""
        if "relay_client" not in request:
            sent = presented_key(request)
            request["relay_client"] = self.keyring.client(sent, request.remote) if sent else None
        return request["relay_client"]  # type: ignore[no-any-return]

    def _upstream_failed(self, message: str) -> None:
        """The forwarder's last failure, kept in the store for ``relay status`` (another
        process); called on the forwarder's thread."""
        from .store import Store, now_iso

        try:
            with Store(self.cfg.db) as store:
                store.set_meta("last_upstream_error_at", now_iso())
                store.set_meta("last_upstream_error", message)
        except LogbookError as err:
            log.debug("cannot keep the upstream error in the store: %s", err)

    def _fair(self, route: str, handler: Handler) -> Handler:
        """At most an equal share of the requests in flight per client key; 429 beyond it."""

        async def fair(request: web.Request) -> web.StreamResponse:
            response = await self._fair_share(request, handler)
            self.answered[response.status] += 1
            if route == ROUTE_POST_JOBS and response.status == 200:
                self.taken += 1
            return response

        return fair

    async def _fair_share(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client = self.authorize(request)
        if client is None:
            return await handler(request)  # answered 401 there
        active = sum(1 for c, n in self.in_flight.items() if n > 0 and c != client) + 1
        share = max(1, self.o.max_in_flight // active)
        if self.in_flight[client] >= share:
            return json_response(
                429, {"detail": f"over this client's share ({share} requests in flight)"},
                {"Retry-After": "1"},
            )  # fmt: skip
        self.in_flight[client] += 1
        try:
            return await handler(request)
        except InvalidJob as err:
            detail = [{"loc": ["body"], "msg": str(err), "type": "value_error"}]
            return json_response(422, {"detail": detail})
        except Conflict as err:
            return json_response(409, {"detail": str(err)})
        except LogbookError as err:
            log.warning("cannot store a job: %s", err)
            return json_response(
                503, {"detail": "the relay cannot store the job now"}, {"Retry-After": "5"}
            )
        finally:
            self.in_flight[client] -= 1

    async def run(self, ready: Callable[[str], None]) -> None:
        """Serve until SIGTERM/SIGINT; ``ready(url)`` once it listens.

        The forwarder starts only once the socket is bound: a relay that cannot
        listen (the port taken) has touched nothing upstream.
        """
        self.counts_at_start = await self.db.run(self.db.store.counts)
        # Before the forwarder can start: its store may be a restored copy.
        waiting = await self.db.run(self.db.store.relay.mark_started)

        def listening(url: str) -> None:
            if waiting:
                log.info(
                    "%d jobs not yet forwarded: each is looked up upstream before it is posted"
                    " (this store may be a restored copy that forgot it had sent them)", waiting,
                )  # fmt: skip
            self.keyring.refresh()
            if not self.keyring.active():
                log.warning("no relay keys yet: lab machines get 401; add one with"
                            " `logbook relay key add NAME`")  # fmt: skip
            self.forwarder.start()
            ready(url)

        app = self.api.app()
        await self._monitored(app)
        poll = asyncio.create_task(self._poll_backlog())

        async def stopped() -> None:
            poll.cancel()
            await self.backend.drain()  # commits in flight finish before the relay exits
            if self.monitor is not None:
                await self.monitor.stop()

        await serve(
            app, self.o.host, self.o.port, tls=self.o.tls, ready=listening, on_stop=stopped,
            limits=self.o.limits, reserve_fds=RESERVED_FDS + self.upstream_cfg.concurrency,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._stop_forwarding)
        self.counts_at_end = await self.db.run(self.db.store.counts)

    async def _poll_backlog(self) -> None:
        """Forward what other processes put in the store (``logbook bundle import`` into a
        relay's store): its own intake kicks the forwarder, theirs is noticed here.
        """
        while True:
            await asyncio.sleep(BACKLOG_POLL)
            try:
                if await self.db.run(self.db.store.leases.any_due):
                    self.forwarder.kick()
            except LogbookError as err:
                log.debug("cannot look at the backlog: %s", err)

    def _stop_forwarding(self) -> None:
        if self.forwarder.thread.is_alive() and not self.forwarder.stop():
            log.warning("a forwarding run was still in flight; the next start looks its jobs up")

    async def _monitored(self, app: web.Application) -> None:
        """Count requests by client, feed systemd's watchdog from this loop, serve --metrics,
        and say STOPPING=1 as soon as SIGTERM stops the accepting."""
        monitor = self.monitor
        if monitor is None:
            return
        monitor.clients = ClientRequests()
        app.middlewares.insert(0, count_requests(monitor.clients, self.authorize))

        async def stopping(_app: web.Application) -> None:
            monitor.stopping()

        app.on_shutdown.append(stopping)
        await monitor.start(beat=True)

    def close(self) -> None:
        self._stop_forwarding()
        self.keyring.close()
        self.db.close()

    def summary(self) -> str:
        """What ``relay stopped:`` says: jobs taken, new, forwarded, waiting, and the rest."""
        start, end = self.counts_at_start, self.counts_at_end
        line = f"{self.taken} jobs taken"
        if start and end:
            new = sum(end.values()) - sum(start.values())
            line += (
                f" ({new} new), {end['synced'] - start['synced']} forwarded upstream,"
                f" {end['pending'] + end['sending']} waiting"
            )
        others = sum(self.answered.values()) - self.taken
        answered = ", ".join(f"{code}: {n}" for code, n in sorted(self.answered.items()))
        return line + (f"; {others} other requests (answered {answered})" if others else "")


def relay_status(cfg: Config) -> dict[str, Any]:
    """What ``logbook relay status`` shows: backlog, oldest unforwarded job, upstream contact,
    clients.
    """
    from .store import Store

    if not cfg.db.exists():
        return {"db": str(cfg.db), "backlog": 0, "oldest_unforwarded": None,
                "last_upstream_contact": None, "last_upstream_error": None,
                "clients": {}}  # fmt: skip
    with Store(cfg.db, readonly=True) as store:
        counts = store.counts()
        clients = {
            source.removeprefix("relay:"): by_state
            for source, by_state in store.relay.counts_by_source().items()
            if source.startswith("relay:")
        }
        error = store.get_meta("last_upstream_error")
        return {
            "db": str(cfg.db),
            "backlog": counts["pending"] + counts["sending"],
            "counts": counts,
            "oldest_unforwarded": store.oldest_pending(),
            "last_upstream_contact": store.get_meta("last_contact"),
            "last_upstream_error": error and {
                "at": store.get_meta("last_upstream_error_at"), "message": error},
            "clients": clients,
        }  # fmt: skip
