"""The sync engine: every entry reaches the server exactly once.

Shape (after litestream): ``SyncEngine.sync_once()`` is one step: it claims
the entries that are due, sends each once, and settles the outcomes.
``run_sync()`` is the loop that repeats the step while retries fall due soon,
then refreshes unfinished remote statuses.

Exactly-once rests on three rules:

1. An entry is claimed (``sending`` with a lease) in a short transaction, sent
   outside any transaction, and settled in another; a second sync never
   claims an entry that a live one holds.
2. Whenever an earlier send may have reached the server (timeout after
   sending, dropped connection, 5xx, unreadable 2xx, or a ``sending`` entry
   left by a dead process), the entry carries ``maybe_sent`` and is looked
   up by hash before it is posted again.
3. 401/403 and an unreachable endpoint change nothing: claimed entries go
   back exactly as they were.

The store lives on one dedicated thread (sqlite3 connections are per
thread) so its fsyncs never stall the event loop; outcomes are written in
batches, one transaction for many responses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .errors import AuthError, ConfigError, RequestFailed, Unreachable
from .store import Entry, Outcome, Store, now_iso

if TYPE_CHECKING:
    import httpx

    from .client import ApiClient, JobRef
    from .config import Config

log = logging.getLogger("logbook.sync")

DEFAULT_CONCURRENCY = 64
BASE_BACKOFF = 0.5
MAX_BACKOFF = 300.0
#: Within one run, keep retrying while the next retry falls due this soon...
RETRY_WINDOW = 15.0
#: ...and while the server lets some entries through: stop after this many steps
#: in a row in which nothing was synced or rejected.
MAX_STALLS = 3
SETTLE_BATCH = 256
SETTLE_INTERVAL = 0.05

Progress = Callable[[int, int], None]


@dataclass
class SyncReport:
    """What one run did; ``pending`` is what is still left to send afterwards."""

    synced: int = 0
    rejected: int = 0
    pending: int = 0
    refreshed: int = 0
    reconciled: int = 0
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {
            "synced": self.synced,
            "rejected": self.rejected,
            "pending": self.pending,
            "refreshed": self.refreshed,
        }

    @property
    def exit_code(self) -> int:
        return 0 if self.pending == 0 and self.rejected == 0 else 1

    def summary(self) -> str:
        parts = [f"synced {self.synced}"]
        if self.reconciled:
            parts[0] += f" ({self.reconciled} found already on the server)"
        parts.append(f"rejected {self.rejected}")
        parts.append(f"{self.pending} still pending")
        parts.append(f"refreshed {self.refreshed}")
        text = ", ".join(parts) + f" in {self.elapsed:.1f} s"
        if self.errors and (self.pending or self.rejected):
            text += f"; last error: {self.errors[-1]}"
        return text

    def add_error(self, message: str) -> None:
        self.errors.append(message)
        del self.errors[:-5]


def backoff(
    attempts: int, retry_after: float | None = None, *, rng: random.Random | None = None
) -> float:
    """Seconds before the next try: exponential with full jitter, at least Retry-After."""
    r = rng or random
    delay = r.uniform(0, min(MAX_BACKOFF, BASE_BACKOFF * 2 ** max(0, attempts - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class AdaptiveLimit:
    """How many requests may be in flight: halves on 429/503, creeps back up on success.

    So a fleet of lab machines coming online together backs off instead of
    hammering the server.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._last_cut = 0.0

    async def acquire(self) -> None:
        while self.in_flight >= max(1, int(self.limit)):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = max(1, int(self.limit)) - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / max(1.0, self.limit))
            self._wake()

    def overload(self) -> None:
        now = time.monotonic()
        if now - self._last_cut > 0.25:  # one cut per burst of refusals
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = now
            log.info("server overloaded: %d requests in flight at most", int(self.limit))


class StoreThread:
    """A Store owned by one thread; the event loop calls it without blocking."""

    def __init__(self, path: str) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logbook-store")
        self.store: Store = self._ex.submit(Store, path).result()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = partial(getattr(self.store, method), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn)

    def close(self) -> None:
        try:
            self._ex.submit(self.store.close).result()
        finally:
            self._ex.shutdown(wait=True)


class SyncEngine:
    """Sends due entries with many requests in flight, settling outcomes in batches."""

    def __init__(
        self,
        db: StoreThread,
        client: ApiClient,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float = 600.0,
        progress: Progress | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.client = client
        self.concurrency = concurrency
        self.limit = AdaptiveLimit(concurrency)
        self.lease_seconds = lease_seconds
        self.progress = progress
        self.rng = rng or random.Random()
        self.report = SyncReport()
        self.auth_error: RequestFailed | None = None
        self.connect_error: RequestFailed | None = None
        self.any_success = False
        self._settling: set[asyncio.Future[None]] = set()
        self.done = 0
        self.total = 0
        self._last_progress = 0.0

    # one step

    async def sync_once(self, limit: int | None = None, *, ignore_backoff: bool = False) -> int:
        """Claim and send every entry due now (at most ``limit``); returns how many were sent.

        ``ignore_backoff`` also takes entries still waiting out a retry delay.
        """
        page = max(32, self.concurrency * 2)
        queue: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=page * 2)
        outcomes: list[Outcome] = []
        # Every entry this step claimed and has not settled yet, and those of
        # them whose request has started: an interrupted step releases the
        # first kind and marks the second maybe_sent, so none stays 'sending'.
        held: dict[int, Entry] = {}
        in_flight: dict[int, Entry] = {}
        claims: set[asyncio.Future[list[Entry]]] = set()
        claimed = 0
        # Ignoring backoff, the step walks the pending entries once in id order:
        # one that fails now is not claimed again in this step.
        cursor = 0
        flush_lock = asyncio.Lock()

        def done(outcome: Outcome) -> None:
            held.pop(outcome.entry_id, None)
            outcomes.append(outcome)

        async def flush(force: bool = False) -> None:
            if not outcomes or (not force and len(outcomes) < SETTLE_BATCH):
                return
            async with flush_lock:
                batch = outcomes[:]
                del outcomes[:]
                await self._settle(batch)

        def took(fut: asyncio.Future[list[Entry]]) -> None:
            claims.discard(fut)
            if not fut.cancelled() and fut.exception() is None:
                held.update((e.id, e) for e in fut.result())

        async def claimer() -> None:
            nonlocal claimed, cursor
            try:
                while not self.stopped and (limit is None or claimed < limit):
                    want = page if limit is None else min(page, limit - claimed)
                    # Shielded: once the claim runs on the store thread it commits,
                    # so a cancelled step must still learn which entries it took.
                    fut: asyncio.Future[list[Entry]] = asyncio.ensure_future(
                        self.db.call(
                            "claim", want, lease_seconds=self.lease_seconds,
                            ignore_backoff=ignore_backoff, after_id=cursor,
                        )
                    )  # fmt: skip
                    claims.add(fut)
                    fut.add_done_callback(took)
                    entries = await asyncio.shield(fut)
                    if not entries:
                        break
                    if ignore_backoff:
                        cursor = max(cursor, await self.db.call("last_claimed_pending"))
                    claimed += len(entries)
                    for e in entries:
                        await queue.put(e)
            finally:
                for _ in range(self.concurrency):
                    await queue.put(None)

        async def worker() -> None:
            while True:
                entry = await queue.get()
                if entry is None:
                    return
                if self.stopped:
                    done(Outcome(entry.id, "released"))
                    continue
                await self.limit.acquire()
                if self.stopped:  # a 401 or lost connection while we waited
                    self.limit.release()
                    done(Outcome(entry.id, "released"))
                    continue
                in_flight[entry.id] = entry
                try:
                    outcome = await self._deliver(entry)
                finally:
                    self.limit.release()
                # Only now: a cancelled send stays in in_flight, so it is settled
                # as maybe_sent (gather lets every worker unwind before our
                # finally runs, so popping in a finally here would hide it).
                in_flight.pop(entry.id, None)
                done(outcome)
                if len(outcomes) >= SETTLE_BATCH:
                    await flush()

        async def ticker() -> None:
            renewed = time.monotonic()
            while True:
                await asyncio.sleep(SETTLE_INTERVAL)
                await flush(force=True)
                if time.monotonic() - renewed > self.lease_seconds / 4:
                    # Entries waiting behind a cut limit must not look abandoned.
                    renewed = time.monotonic()
                    await self.db.call("renew_leases", self.lease_seconds)

        tick = asyncio.create_task(ticker())
        tasks = [asyncio.create_task(claimer())]
        tasks += [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            tick.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.shield(self._interrupted(claims, held, in_flight, outcomes, flush_lock))
        return claimed

    async def _interrupted(
        self,
        claims: set[asyncio.Future[list[Entry]]],
        held: dict[int, Entry],
        in_flight: dict[int, Entry],
        outcomes: list[Outcome],
        lock: asyncio.Lock,
    ) -> None:
        """Settle everything a step still holds when it ends (normally or cancelled)."""
        if claims:  # a claim committed on the store thread after we were cancelled
            await asyncio.gather(*list(claims), return_exceptions=True)
        now = time.time()
        for e in list(held.values()):
            if e.id in in_flight:  # the request started: it may have arrived
                outcomes.append(
                    Outcome(e.id, "pending", error="interrupted while sending",
                            maybe_sent=True, next_attempt_at=now)
                )  # fmt: skip
            else:
                outcomes.append(Outcome(e.id, "released"))
        held.clear()
        await self._final_flush(outcomes, lock)

    async def _settle(self, batch: list[Outcome]) -> None:
        """Write a batch of outcomes; a cancelled caller never loses it.

        The write runs in its own task, shielded: cancelling the ticker or a
        worker mid-write (the run is stopping) must not drop outcomes that
        were already taken off the list, or entries stay ``sending`` and go
        uncounted.
        """
        task = asyncio.ensure_future(self._write_batch(batch))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _write_batch(self, batch: list[Outcome]) -> None:
        await self.db.call("settle", batch)
        self._count(batch)

    async def _final_flush(self, outcomes: list[Outcome], lock: asyncio.Lock) -> None:
        # Writes started by cancelled callers first, then whatever is left.
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        async with lock:
            batch = outcomes[:]
            del outcomes[:]
            if batch:
                await self._write_batch(batch)

    @property
    def stopped(self) -> bool:
        return self.auth_error is not None or self.connect_error is not None

    def _count(self, batch: list[Outcome]) -> None:
        for o in batch:
            if o.state == "synced":
                self.report.synced += 1
            elif o.state == "rejected":
                self.report.rejected += 1
        self.done += sum(1 for o in batch if o.state in ("synced", "rejected"))
        if self.progress and self.total:
            now = time.monotonic()
            if now - self._last_progress > 0.1 or self.done >= self.total:
                self._last_progress = now
                self.progress(min(self.done, self.total), self.total)

    async def _deliver(self, entry: Entry) -> Outcome:
        """Send one entry (looking it up first if it may already be there)."""
        try:
            if entry.maybe_sent:
                job = await self.client.find_by_hash(entry.experiment_id, entry.hash)
                if job is not None:
                    self.report.reconciled += 1
                    return self._synced(entry, job)
                if self.stopped:  # a 401 arrived during the lookup: post nothing new
                    return Outcome(entry.id, "released")
            job = await self.client.submit(entry.job_body())
            return self._synced(entry, job)
        except RequestFailed as failure:
            return self._failed(entry, failure)

    def _synced(self, entry: Entry, job: JobRef) -> Outcome:
        self.any_success = True
        self.limit.success()
        return Outcome(entry.id, "synced", remote_id=job.id, remote_status=job.status)

    def _failed(self, entry: Entry, failure: RequestFailed) -> Outcome:
        message = str(failure)
        if failure.kind == "auth":
            self.auth_error = self.auth_error or failure
            return Outcome(entry.id, "released")
        if failure.connect_failed and not self.any_success:
            self.connect_error = self.connect_error or failure
            return Outcome(entry.id, "released")
        self.report.add_error(message)
        if failure.kind == "reject":
            self.any_success = True  # the server answered
            return Outcome(entry.id, "rejected", error=message)
        if failure.status in (429, 503):
            self.limit.overload()
        delay = backoff(entry.attempts + 1, failure.retry_after, rng=self.rng)
        return Outcome(
            entry.id, "pending", error=message, next_attempt_at=time.time() + delay,
            maybe_sent=entry.maybe_sent or failure.maybe_sent,
        )  # fmt: skip

    # status refresh

    async def refresh(self, synced_before: str) -> int:
        """``GET /jobs/{id}`` for synced entries whose remote status is unfinished."""
        after, refreshed = 0, 0
        while not self.stopped:
            entries = await self.db.call("unfinished_remote", 500, after)
            if not entries:
                break
            after = entries[-1].id
            due = [e for e in entries if (e.synced_at or "") < synced_before and e.remote_id]

            async def one(e: Entry) -> tuple[int, str] | None:
                await self.limit.acquire()
                try:
                    job = await self.client.get_job(str(e.remote_id))
                except RequestFailed as failure:
                    if failure.kind == "auth":
                        self.auth_error = self.auth_error or failure
                    elif failure.connect_failed and not self.any_success:
                        self.connect_error = self.connect_error or failure
                    else:
                        self.report.add_error(str(failure))
                    return None
                finally:
                    self.limit.release()
                self.any_success = True
                return None if job is None else (e.id, job.status)

            results = await asyncio.gather(*(one(e) for e in due))
            updates = [r for r in results if r is not None]
            refreshed += len(updates)
            await self.db.call("set_remote_status", updates)
        return refreshed


def _require(cfg: Config) -> tuple[str, str]:
    if not cfg.endpoint:
        raise ConfigError(
            'no endpoint: set HAIQU_EDGE_URI, pass --endpoint URL, or put endpoint = "..."'
            " in config.toml"
        )
    if not cfg.api_key:
        raise ConfigError("no API key: set HAIQU_API_KEY (or api_key in config.toml)")
    return cfg.endpoint, cfg.api_key


def dry_run(cfg: Config, *, limit: int | None = None) -> list[Entry]:
    """The entries a sync would send now, without claiming or sending anything."""
    if not cfg.db.exists():
        return []
    with Store(cfg.db) as store:
        return store.due(limit if limit is not None else 1_000_000_000)


def run_sync(
    cfg: Config,
    *,
    concurrency: int | None = None,
    limit: int | None = None,
    refresh: bool = True,
    max_time: float | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retry_window: float = RETRY_WINDOW,
    respect_backoff: bool = False,
) -> SyncReport:
    """Run one sync: send what is due (retrying within the run), then refresh statuses.

    A run asked for by the user sends every pending entry now; retries within
    the run back off.  ``respect_backoff`` (the watcher's repeated syncs) also
    leaves entries whose retry delay has not run out.

    Raises ``AuthError`` (401/403: nothing changed), ``Unreachable`` (nothing
    changed) or ``ConfigError`` (no endpoint or key).
    """
    endpoint, key = _require(cfg)
    return asyncio.run(
        _run(
            cfg, endpoint, key,
            concurrency=concurrency or cfg.concurrency or DEFAULT_CONCURRENCY,
            limit=limit, refresh=refresh, max_time=max_time, progress=progress,
            transport=transport, retry_window=retry_window, respect_backoff=respect_backoff,
        )
    )  # fmt: skip


async def _run(
    cfg: Config,
    endpoint: str,
    key: str,
    *,
    concurrency: int,
    limit: int | None,
    refresh: bool,
    max_time: float | None,
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
    retry_window: float,
    respect_backoff: bool,
) -> SyncReport:
    from .client import ApiClient

    started = time.monotonic()
    run_stamp = now_iso()
    stop_at = None if max_time is None else started + max_time
    loop = asyncio.get_running_loop()
    db = await loop.run_in_executor(None, StoreThread, str(cfg.db))
    deadline = cfg.request_timeout or 60.0
    client = ApiClient(
        endpoint, key, auth=cfg.auth, connections=concurrency, transport=transport,
        deadline=deadline,
    )  # fmt: skip
    engine = SyncEngine(
        db, client, concurrency=concurrency, progress=progress,
        lease_seconds=max(600.0, deadline * 4),
    )  # fmt: skip
    try:
        engine.total = await db.call("count_due", ignore_backoff=not respect_backoff)
        if limit is not None:
            engine.total = min(engine.total, limit)
        sent = 0
        first = not respect_backoff
        stalls = 0  # steps in a row in which nothing was synced or rejected
        while True:
            settled = engine.report.synced + engine.report.rejected
            left = None if limit is None else limit - sent
            if left is not None and left <= 0:
                break
            step = engine.sync_once(left, ignore_backoff=first)
            first = False
            if stop_at is not None:
                try:
                    sent += await asyncio.wait_for(step, max(0.0, stop_at - time.monotonic()))
                except TimeoutError:
                    break
            else:
                sent += await step
            if engine.stopped:
                break
            stalls = 0 if engine.report.synced + engine.report.rejected > settled else stalls + 1
            if stalls >= MAX_STALLS:  # the server keeps failing: leave the rest for later
                break
            next_due = await db.call("next_due_at")
            if next_due is None:
                break
            wait = max(0.0, next_due - time.time())
            horizon = retry_window
            if stop_at is not None:
                horizon = min(horizon, stop_at - time.monotonic())
            if wait > horizon:
                break
            await asyncio.sleep(wait)
        if engine.auth_error is not None:
            raise AuthError(
                f"the server refused the API key (HTTP {engine.auth_error.status}):"
                " check HAIQU_API_KEY; no entry was changed"
            )
        if engine.connect_error is not None and not engine.any_success:
            raise Unreachable(
                f"cannot reach {endpoint}: {_short(engine.connect_error)}; no entry was changed"
            )
        if refresh and (stop_at is None or time.monotonic() < stop_at):
            engine.report.refreshed = await engine.refresh(run_stamp)
            if engine.auth_error is not None:
                raise AuthError(
                    f"the server refused the API key (HTTP {engine.auth_error.status}):"
                    " check HAIQU_API_KEY"
                )
            if engine.connect_error is not None and not engine.any_success:
                raise Unreachable(f"cannot reach {endpoint}: {_short(engine.connect_error)}")
        await db.call("set_meta", "last_sync", now_iso())
        engine.report.pending = await db.call("count_left")
        engine.report.elapsed = time.monotonic() - started
        return engine.report
    finally:
        await client.aclose()
        await loop.run_in_executor(None, db.close)


def _short(failure: RequestFailed) -> str:
    text = str(failure)
    return text.split(": ", 2)[-1] if ": " in text else text


class _CallableModule(types.ModuleType):
    """This module, callable as ``logbook.sync(...)``.

    Importing ``logbook.sync`` (which ``logbook.sync()`` itself does, and so do
    the CLI and the watcher) makes Python set the package attribute ``sync`` to
    this module, replacing the ``logbook.sync`` function of the public API: the
    second ``logbook.sync()`` in a process raised "'module' object is not
    callable".  Calling the module runs the API function instead.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> SyncReport:
        from .api import sync

        return sync(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
