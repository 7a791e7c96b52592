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
  requests in flight; beyond it, 429 with Retry-After.

The HTTP layer (routes, validation, auth) is ``logbook.server``, shared with
the emulator.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .engine import BackgroundSyncer, require
from .errors import Conflict, InvalidJob, LogbookError, NotFound
from .jobs import JobDocument, content_key, prepare
from .server import Handler, JobsApi, json_response, presented_key, serve
from .store import Entry
from .store.relay import Held, RelayKeys
from .store.worker import StoreWorker
from .vocab import STATUSES

if TYPE_CHECKING:
    import ssl

    from .config import Config

log = logging.getLogger("logbook.relay")

ID_PREFIX = "relay-"
_STATUSES = frozenset(STATUSES)
#: Requests in flight across all clients; each active client gets an equal share.
MAX_IN_FLIGHT = 1024
#: At most this many jobs are committed in one transaction.
COMMIT_BATCH = 512
#: The most requests a relay keeps in flight upstream.
MAX_FORWARD_CONCURRENCY = 512
#: Relay keys are read again this often, so a revoked key stops working soon.
KEYS_TTL = 2.0


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
        if not (job_id.startswith(ID_PREFIX) and number.isdigit() and len(number) <= 18):
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


class Relay:
    def __init__(self, cfg: Config, options: RelayOptions) -> None:
        from .config import check_endpoint

        self.cfg = cfg
        self.o = options
        # Twice the requests in flight upstream: a job the relay may have sent already (its
        # store may be a restored copy) costs a look-up and a post.
        self.upstream_cfg = replace(
            cfg, endpoint=check_endpoint(options.upstream, "--upstream"),
            concurrency=min(MAX_FORWARD_CONCURRENCY, 2 * cfg.concurrency),
        )  # fmt: skip
        require(self.upstream_cfg)  # the relay holds the upstream key; lab machines never do
        self.db = StoreWorker(str(cfg.db))
        self.forwarder = BackgroundSyncer(self.upstream_cfg, refresh_every=options.refresh_every)
        self.backend = StoreBackend(self.db, self.forwarder.kick)
        self.api = JobsApi(self.backend, self.authorize, wrap=self._fair)
        self.in_flight: Counter[str] = Counter()
        self._keys: dict[str, str] = {}

    def authorize(self, request: web.Request) -> str | None:
        """The client's name for a live relay key, else None (401)."""
        sent = presented_key(request)
        return self._keys.get(RelayKeys.digest(sent)) if sent else None

    async def _keys_loop(self) -> None:
        while True:
            try:
                self._keys = await self.db.run(self.db.store.keys.active)
            except LogbookError as err:
                log.warning("cannot read the relay keys: %s", err)
            await asyncio.sleep(KEYS_TTL)

    def _fair(self, route: str, handler: Handler) -> Handler:
        """At most an equal share of the requests in flight per client key; 429 beyond it."""

        async def fair(request: web.Request) -> web.StreamResponse:
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

        return fair

    async def run(self, ready: Callable[[str], None]) -> None:
        """Serve until SIGTERM/SIGINT; ``ready(url)`` once it listens."""
        keys = asyncio.create_task(self._keys_loop())
        self._keys = await self.db.run(self.db.store.keys.active)
        if not self._keys:
            log.warning(
                "no relay keys yet: lab machines get 401; add one with `logbook relay key add NAME`"
            )
        waiting = await self.db.run(self.db.store.relay.mark_started)
        if waiting:
            log.info(
                "%d jobs not yet forwarded: each is looked up upstream before it is posted"
                " (this store may be a restored copy that forgot it had sent them)", waiting,
            )  # fmt: skip
        self.forwarder.start()

        async def stopped() -> None:
            keys.cancel()
            await self.backend.drain()  # commits in flight finish before the relay exits

        await serve(
            self.api.app(), self.o.host, self.o.port, tls=self.o.tls,
            ready=ready, on_stop=stopped,
        )  # fmt: skip

    def close(self) -> None:
        if not self.forwarder.stop():
            log.warning("a forwarding run was still in flight; the next start looks its jobs up")
        self.db.close()


def relay_status(cfg: Config) -> dict[str, Any]:
    """What ``logbook relay status`` shows: backlog, oldest unforwarded job, upstream contact,
    clients.
    """
    from .store import Store

    if not cfg.db.exists():
        return {"db": str(cfg.db), "backlog": 0, "oldest_unforwarded": None,
                "last_upstream_contact": None, "clients": {}}  # fmt: skip
    with Store(cfg.db, readonly=True) as store:
        counts = store.counts()
        clients = {
            source.removeprefix("relay:"): by_state
            for source, by_state in store.relay.counts_by_source().items()
            if source.startswith("relay:")
        }
        return {
            "db": str(cfg.db),
            "backlog": counts["pending"] + counts["sending"],
            "counts": counts,
            "oldest_unforwarded": store.oldest_pending(),
            "last_upstream_contact": store.get_meta("last_contact"),
            "clients": clients,
        }
