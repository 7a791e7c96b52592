"""The sync engine: every entry reaches the server exactly once.

Shape (after litestream): a ``_Step`` claims the entries that are due,
sends each once and settles the outcomes; ``run_sync()`` is the loop that
repeats steps while retries fall due soon, then refreshes unfinished remote
statuses.  ``BackgroundSyncer`` repeats ``run_sync`` for the watcher.

Exactly-once rests on four rules:

1. An entry is claimed (``sending`` with a lease) in a short transaction,
   sent outside any transaction, and settled in another; no other run takes
   an entry that a live run holds (``store.leases``).
2. Right before each POST the run checks its lease still stands; once it has
   run out (the process was paused), it renews what it still holds and drops
   the rest unposted.
3. Whenever an earlier send may have reached the server (timeout after
   sending, dropped connection, 5xx, unreadable 2xx, a run interrupted or
   killed mid-request), the entry carries ``maybe_sent`` and is looked up by
   hash before it is posted again; a lookup must answer with the same
   experiment and hash to count.
4. 401/403, a redirect and an unreachable endpoint stop the run: entries not
   yet answered go back exactly as they were.

The store lives on one thread of its own (sqlite3 connections are bound to
their thread) so its fsyncs never stall the event loop; outcomes are written
in batches, one transaction for many responses.  A busy store is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .config import DEFAULT_CONCURRENCY, NO_KEY
from .errors import (
    AuthError,
    ConfigError,
    Interrupted,
    Redirected,
    RequestFailed,
    StoreBusy,
    StoreError,
    TrustError,
    Unreachable,
)
from .progress import Progress
from .store import Entry, Store, now_iso
from .store.leases import Outcome, end_owner, new_owner

if TYPE_CHECKING:
    from .client import ApiClient, JobRef
    from .config import Config

log = logging.getLogger("logbook.sync")
T = TypeVar("T")
P = ParamSpec("P")

BASE_BACKOFF = 0.5
MAX_BACKOFF = 300.0
#: Within one run, keep retrying while the next retry falls due this soon...
RETRY_WINDOW = 15.0
#: ...and while the server lets some entries through: stop after this many steps
#: in a row in which nothing was synced or rejected.
MAX_STALLS = 3
#: This many requests in a row that time out make the endpoint unreachable (exit 4).
MAX_TIMEOUTS = 8
SETTLE_BATCH = 256
SETTLE_INTERVAL = 0.05
LEASE_SECONDS = 600.0
#: How long an interrupted run waits for requests already sent to be answered.
INTERRUPT_GRACE = 2.0
#: How long a busy store is retried before a run gives up on it.
STORE_BUSY_PATIENCE = 120.0


def lease_seconds(deadline: float) -> float:
    """The lease a run takes: long enough for a few slow requests.

    ``LOGBOOK_LEASE_SECONDS`` shortens it; it exists for tests of paused runs.
    """
    override = os.environ.get("LOGBOOK_LEASE_SECONDS")
    if override:
        return max(0.5, float(override))
    return max(LEASE_SECONDS, deadline * 4)


@dataclass
class SyncReport:
    """What one run did; ``pending`` is what is still left to send afterwards."""

    synced: int = 0
    rejected: int = 0
    pending: int = 0
    refreshed: int = 0
    reconciled: int = 0
    held_elsewhere: int = 0
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
        parts += [f"rejected {self.rejected}", f"{self.pending} still pending"]
        parts.append(f"refreshed {self.refreshed}")
        text = ", ".join(parts) + f" in {self.elapsed:.1f} s"
        if self.held_elsewhere:
            text += f"; {self.held_elsewhere} being sent by another sync"
        if self.errors and (self.pending or self.rejected):
            text += f"; last error: {self.errors[-1]}"
        return text

    def add_error(self, message: str) -> None:
        self.errors.append(message)
        del self.errors[:-5]


def backoff(
    attempts: int,
    retry_after: float | None = None,
    *,
    base: float = BASE_BACKOFF,
    cap: float = MAX_BACKOFF,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next try: exponential with full jitter, at least Retry-After.

    Full jitter spreads a fleet's retries after a shared failure (an entry's
    next try, and a watcher's next background run, both use it).
    """
    r = rng or random
    delay = r.uniform(0, min(cap, base * 2 ** max(0, attempts - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class AdaptiveLimit:
    """How many requests may be in flight, and when the next may start.

    Halves on 429/503 and creeps back up on success, and a 429 pauses every
    request of the run until its ``Retry-After`` (plus jitter) has passed: a
    fleet of lab machines coming online together backs off together instead
    of hammering the server, and does not come back in lockstep.
    """

    def __init__(
        self,
        maximum: int,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.rng = rng or random.Random()
        self.clock, self.sleep = clock, sleep  # injectable: tests run the pause on a fake clock
        self.paused_until = 0.0
        self._waiters: list[asyncio.Future[None]] = []
        self._last_cut = 0.0

    async def acquire(self) -> None:
        while True:
            pause = self.paused_until - self.clock()
            if pause > 0:
                await self.sleep(pause)
                continue
            if self.in_flight < max(1, int(self.limit)):
                break
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
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

    def overload(self, retry_after: float | None = None) -> None:
        now = self.clock()
        if retry_after:
            until = now + retry_after * self.rng.uniform(1.0, 1.5)
            self.paused_until = max(self.paused_until, until)
        if now - self._last_cut > 0.25:  # one cut per burst of refusals
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = now
            log.info("server overloaded: %d requests in flight at most", int(self.limit))


class StoreWorker:
    """A Store on a thread of its own; the event loop calls it without blocking.

    A busy store (another process holding the write lock) is retried with
    back-off for up to ``patience`` seconds before the run gives up.
    """

    def __init__(self, path: str, patience: float = STORE_BUSY_PATIENCE) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logbook-store")
        self.store: Store = self._ex.submit(Store, path).result()
        self.patience = patience

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                return await loop.run_in_executor(self._ex, partial(fn, *args, **kwargs))
            except StoreBusy:
                if time.monotonic() > deadline:
                    raise
                log.info("the store is busy (another process holds it); retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        try:
            self._ex.submit(self.store.close).result()
        finally:
            self._ex.shutdown(wait=True)


class SyncEngine:
    """Sends due entries with many requests in flight, settling outcomes in batches."""

    def __init__(
        self,
        db: StoreWorker,
        client: ApiClient,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float = LEASE_SECONDS,
        progress: Progress | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.leases = db.store.leases
        self.client = client
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self.limit = AdaptiveLimit(concurrency, self.rng)
        self.lease_seconds = lease_seconds
        self.progress = progress or Progress()
        self.report = SyncReport()
        self.owner = new_owner()
        #: Why the run stops early (auth, redirect, unreachable), if it does.
        self.stop_reason: RequestFailed | None = None
        self.interrupted: int | None = None
        #: A store that could not be written: the run ends with this error once it has unwound.
        self.store_error: StoreError | None = None
        self.any_success = False
        self.timeouts_in_a_row = 0
        self._settling: set[asyncio.Future[None]] = set()
        self._finishing: set[asyncio.Future[None]] = set()

    def close(self) -> None:
        end_owner(self.owner)

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None or self.interrupted is not None

    async def sync_once(self, limit: int | None = None, *, ignore_backoff: bool = False) -> int:
        """Claim and send every entry due now (at most ``limit``); returns how many were claimed.

        ``ignore_backoff`` also takes entries still waiting out a retry delay.
        """
        return await _Step(self, limit, ignore_backoff).run()

    # --- settling --------------------------------------------------------------------

    async def settle(self, batch: list[Outcome]) -> None:
        """Write a batch of outcomes; a cancelled caller never loses it.

        The write runs in its own task, shielded: cancelling a worker mid-write
        (the run is stopping) must not drop outcomes already taken off the list.
        """
        task = asyncio.ensure_future(self._write(batch))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _write(self, batch: list[Outcome]) -> None:
        try:
            written = await self.db.run(self.leases.settle, self.owner, batch)
        except StoreError as err:
            self.store_error = self.store_error or err
            raise
        self.report.synced += written.get("synced", 0)
        self.report.rejected += written.get("rejected", 0)
        self.progress.done += written.get("synced", 0) + written.get("rejected", 0)

    async def drain_settling(self, *, steps: bool = False) -> None:
        """Wait for outcome writes in flight (and, with ``steps``, for interrupted steps' ends)."""
        while self._settling or (steps and self._finishing):
            pending = self._settling | (self._finishing if steps else set())
            await asyncio.gather(*pending, return_exceptions=True)

    # --- one entry ---------------------------------------------------------------------

    async def deliver(self, entry: Entry) -> Outcome:
        """Send one entry (looking it up first if it may already be there)."""
        try:
            if entry.maybe_sent:
                job = await self.client.find_by_hash(entry.experiment_id, entry.hash)
                self._answered()
                if job is not None:
                    self.report.reconciled += 1
                    return self._synced(entry, job)
                if self.stopped:  # a 401 arrived during the lookup: post nothing new
                    return Outcome(entry.id, "released")
            job = await self.client.submit(entry.post_body())
            self._answered()
            return self._synced(entry, job)
        except RequestFailed as failure:
            return self._failed(entry, failure)

    def _answered(self) -> None:
        self.timeouts_in_a_row = 0

    def _synced(self, entry: Entry, job: JobRef) -> Outcome:
        self.any_success = True
        self.limit.success()
        return Outcome(
            entry.id, "synced", remote_id=job.id, remote_status=job.status,
            upstream_id=job.upstream_id,
        )  # fmt: skip

    def _stop(self, failure: RequestFailed) -> None:
        if self.stop_reason is None:
            self.stop_reason = failure

    def _failed(self, entry: Entry, failure: RequestFailed) -> Outcome:
        message = str(failure)
        if failure.kind in ("auth", "redirect") or failure.trust_failed:
            self._stop(failure)
            return Outcome(entry.id, "released")
        if failure.connect_failed and not self.any_success:
            self._stop(failure)
            return Outcome(entry.id, "released")
        if failure.timed_out:
            self.timeouts_in_a_row += 1
            if self.timeouts_in_a_row >= MAX_TIMEOUTS and not self.any_success:
                self._stop(failure)
        else:
            self._answered()
        self.report.add_error(message)
        if failure.kind == "reject":
            self.any_success = True  # the server answered
            return Outcome(entry.id, "rejected", error=message)
        self.progress.retries += 1
        if failure.status in (429, 503):
            self.progress.throttled += 1
            self.limit.overload(failure.retry_after)
        delay = backoff(entry.attempts + 1, failure.retry_after, rng=self.rng)
        return Outcome(
            entry.id, "pending", error=message, next_attempt_at=time.time() + delay,
            maybe_sent=entry.maybe_sent or failure.maybe_sent,
        )  # fmt: skip

    # --- status refresh --------------------------------------------------------------------

    async def refresh(self, synced_before: str) -> int:
        """``GET /jobs/{id}`` for synced entries whose remote status is unfinished."""
        after, refreshed = 0, 0
        due = await self.db.run(self.leases.count_unfinished_remote, synced_before)
        self.progress.begin("refreshing", due)
        while not self.stopped:
            entries = await self.db.run(self.leases.unfinished_remote, 500, after, synced_before)
            if not entries:
                break
            after = entries[-1].id
            results = await asyncio.gather(*(self._refresh_one(e) for e in entries))
            updates = [r for r in results if r is not None]
            refreshed += len(updates)
            self.progress.done += len(entries)
            await self.db.run(self.leases.set_remote_status, updates)
        return refreshed

    async def _refresh_one(self, e: Entry) -> tuple[int, str, str | None] | None:
        if self.stopped:
            return None
        await self.limit.acquire()
        try:
            job = await self.client.get_job(str(e.remote_id))
        except RequestFailed as failure:
            if failure.kind in ("auth", "redirect") or failure.trust_failed:
                self._stop(failure)
            elif failure.connect_failed and not self.any_success:
                self._stop(failure)
            else:
                self.report.add_error(str(failure))
            return None
        finally:
            self.limit.release()
        self.any_success = True
        if job is None or job.id != e.remote_id or job.hash != e.hash:
            return None  # not the job asked for: nothing to learn from it
        return (e.id, job.status, job.upstream_id)


class _Step:
    """One pass over what is due: a claimer feeds workers through a queue; a ticker settles.

    It keeps every entry it claimed and has not settled (``held``) and those
    whose request has started (``in_flight``): when the step ends, normally
    or cancelled, the first kind is released and the second marked
    ``maybe_sent``, so none stays ``sending``.
    """

    def __init__(self, engine: SyncEngine, limit: int | None, ignore_backoff: bool) -> None:
        self.e = engine
        self.limit = limit
        self.ignore_backoff = ignore_backoff
        self.page = max(32, engine.concurrency * 2)
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=self.page * 2)
        self.outcomes: list[Outcome] = []
        self.held: dict[int, Entry] = {}
        self.in_flight: dict[int, Entry] = {}
        self.claiming: set[asyncio.Future[Any]] = set()
        self.claimed = 0
        # A step walks the pending entries once, in id order: one that fails now
        # is not claimed again in this step, however short its back-off.
        self.cursor = 0
        self.lease_until = time.time() + engine.lease_seconds
        self.flush_lock = asyncio.Lock()
        self.lease_lock = asyncio.Lock()

    async def run(self) -> int:
        tick = asyncio.create_task(self.ticker())
        tasks = [asyncio.create_task(self.claimer())]
        tasks += [asyncio.create_task(self.worker()) for _ in range(self.e.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            tick.cancel()
            for t in tasks:
                t.cancel()
            # Shielded and tracked: a cancelled run still waits for it (drain_settling).
            fin = asyncio.ensure_future(self.finish())
            self.e._finishing.add(fin)
            fin.add_done_callback(self.e._finishing.discard)
            await asyncio.shield(fin)
        return self.claimed

    def done(self, outcome: Outcome) -> None:
        self.held.pop(outcome.entry_id, None)
        self.outcomes.append(outcome)

    async def flush(self, force: bool = False) -> None:
        if not self.outcomes or (not force and len(self.outcomes) < SETTLE_BATCH):
            return
        async with self.flush_lock:
            batch, self.outcomes = self.outcomes, []
            try:
                await self.e.settle(batch)
            except StoreError:
                self.outcomes[:0] = batch  # not written: kept for the next flush or finish()
                raise

    def _took(self, fut: asyncio.Future[Any]) -> None:
        self.claiming.discard(fut)
        if not fut.cancelled() and fut.exception() is None:
            claim = fut.result()
            self.held.update((e.id, e) for e in claim.entries)

    async def claimer(self) -> None:
        e = self.e
        try:
            while not e.stopped and (self.limit is None or self.claimed < self.limit):
                want = (
                    self.page if self.limit is None else min(self.page, self.limit - self.claimed)
                )
                # Shielded: once the claim runs on the store thread it commits,
                # so a cancelled step must still learn which entries it took.
                fut = asyncio.ensure_future(
                    e.db.run(
                        e.leases.claim, e.owner, want, lease_seconds=e.lease_seconds,
                        ignore_backoff=self.ignore_backoff, after_id=self.cursor,
                    )
                )  # fmt: skip
                self.claiming.add(fut)
                fut.add_done_callback(self._took)
                claim = await asyncio.shield(fut)
                if not claim.entries:
                    break
                self.lease_until = min(self.lease_until, time.time() + e.lease_seconds)
                self.cursor = max(self.cursor, claim.last_pending)
                self.claimed += len(claim.entries)
                for entry in claim.entries:
                    await self.queue.put(entry)
        finally:
            for _ in range(e.concurrency):
                await self.queue.put(None)

    async def still_ours(self, entry: Entry) -> bool:
        """The lease check before a POST: in memory while the lease stands, else in the store."""
        if time.time() < self.lease_until - self.e.lease_seconds / 2:
            return True
        async with self.lease_lock:
            if time.time() >= self.lease_until - self.e.lease_seconds / 2:
                ids = list(self.held)
                until = time.time() + self.e.lease_seconds
                kept = await self.e.db.run(
                    self.e.leases.revalidate, self.e.owner, ids, self.e.lease_seconds
                )
                self.lease_until = until
                for lost in set(ids) - kept:
                    self.held.pop(lost, None)
                if len(kept) < len(ids):
                    log.warning(
                        "%d entries were taken over by another sync while this one was"
                        " paused: they are left to it", len(ids) - len(kept),
                    )  # fmt: skip
        return entry.id in self.held

    async def worker(self) -> None:
        e = self.e
        while True:
            entry = await self.queue.get()
            if entry is None:
                return
            if e.stopped:
                self.done(Outcome(entry.id, "released"))
                continue
            await e.limit.acquire()
            try:
                if e.stopped:  # a 401 or lost connection while we waited
                    self.done(Outcome(entry.id, "released"))
                    continue
                if not await self.still_ours(entry):
                    continue  # another run owns it now: never post it from here
                self.in_flight[entry.id] = entry
                outcome = await e.deliver(entry)
            finally:
                e.limit.release()
            # Only now: a cancelled send stays in in_flight, so it is settled as
            # maybe_sent (gather lets every worker unwind before finish() runs).
            self.in_flight.pop(entry.id, None)
            self.done(outcome)
            if len(self.outcomes) >= SETTLE_BATCH:
                await self.flush()

    async def ticker(self) -> None:
        renewed = time.time()
        while True:
            await asyncio.sleep(SETTLE_INTERVAL)
            try:
                await self.flush(force=True)
            except StoreError as err:  # busy past patience: the outcomes wait for the next tick
                log.info("cannot write outcomes yet: %s", err)
            if time.time() - renewed > self.e.lease_seconds / 4 and self.held:
                # Entries waiting behind a cut limit must not look abandoned.
                async with self.lease_lock:
                    renewed = time.time()
                    held = await self.e.db.run(
                        self.e.leases.revalidate, self.e.owner, list(self.held),
                        self.e.lease_seconds,
                    )  # fmt: skip
                    self.lease_until = renewed + self.e.lease_seconds
                    for lost in set(self.held) - held:
                        self.held.pop(lost, None)

    async def finish(self) -> None:
        """Settle everything the step still holds when it ends (normally or cancelled)."""
        if self.claiming:  # a claim committed on the store thread after we were cancelled
            await asyncio.gather(*list(self.claiming), return_exceptions=True)
        now = time.time()
        for entry in list(self.held.values()):
            if entry.id in self.in_flight:  # the request started: it may have arrived
                self.outcomes.append(
                    Outcome(entry.id, "pending", error="interrupted while sending",
                            maybe_sent=True, next_attempt_at=now)
                )  # fmt: skip
            else:
                self.outcomes.append(Outcome(entry.id, "released"))
        self.held.clear()
        await self.e.drain_settling()
        async with self.flush_lock:
            batch, self.outcomes = self.outcomes, []
            if batch:
                await self.e.settle(batch)


# --- one run ------------------------------------------------------------------------------


def require(cfg: Config) -> tuple[str, str]:
    """The endpoint and key a sync needs, or the ``ConfigError`` that says how to set them."""
    if not cfg.endpoint:
        raise ConfigError(
            'no endpoint: set HAIQU_EDGE_URI, pass --endpoint URL, or put endpoint = "..."'
            " in config.toml"
        )
    if not cfg.api_key:
        raise ConfigError(f"{NO_KEY}; see `logbook config`")
    return cfg.endpoint, cfg.api_key


def dry_run(cfg: Config, *, limit: int | None = None) -> list[Entry]:
    """The entries ``logbook sync`` would send now, without claiming or sending anything
    (it sends entries still waiting out a retry delay too: the user asked for it now).
    """
    if not cfg.db.exists():
        return []
    with Store(cfg.db, readonly=True) as store:
        return store.leases.due(limit if limit is not None else 1_000_000_000, ignore_backoff=True)


def run_sync(
    cfg: Config,
    *,
    concurrency: int | None = None,
    limit: int | None = None,
    refresh: bool = True,
    max_time: float | None = None,
    progress: Progress | None = None,
    transport: Any = None,
    retry_window: float = RETRY_WINDOW,
    respect_backoff: bool = False,
    handle_signals: bool = False,
) -> SyncReport:
    """Run one sync: send what is due (retrying within the run), then refresh statuses.

    A run asked for by the user sends every pending entry now; retries within
    the run back off.  ``respect_backoff`` (the watcher's repeated syncs) also
    leaves entries whose retry delay has not run out.  ``handle_signals``
    (the CLI) makes SIGINT/SIGTERM stop the run cleanly: it raises
    ``Interrupted`` once what was answered is settled.

    Raises ``AuthError`` (401/403), ``Redirected``, ``Unreachable`` (or
    ``TrustError``) and ``ConfigError`` (no endpoint or key).
    """
    endpoint, key = require(cfg)
    run = _Run(
        cfg, endpoint, key,
        concurrency=concurrency or cfg.concurrency,
        limit=limit, refresh=refresh,
        max_time=max_time if max_time is not None else cfg.max_time,
        progress=progress or Progress(), transport=transport, retry_window=retry_window,
        respect_backoff=respect_backoff,
    )  # fmt: skip
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run.main(handle_signals))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (it halves the loop's own CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Run:
    """One ``logbook sync``: steps while retries fall due soon, then the refresh."""

    def __init__(self, cfg: Config, endpoint: str, key: str, **options: Any) -> None:
        self.cfg, self.endpoint, self.key = cfg, endpoint, key
        self.o = options
        self.signum: int | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def main(self, handle_signals: bool) -> SyncReport:
        from .client import ApiClient

        loop = asyncio.get_running_loop()
        started = time.monotonic()
        max_time = self.o["max_time"] or None
        self.stop_at = None if max_time is None else started + max_time
        deadline = self.cfg.request_timeout
        db = await loop.run_in_executor(None, StoreWorker, str(self.cfg.db))
        client = ApiClient(
            self.endpoint, self.key, auth=self.cfg.auth, connections=self.o["concurrency"],
            transport=self.o["transport"], deadline=deadline, network=self.cfg.network(),
        )  # fmt: skip
        engine = SyncEngine(
            db, client, concurrency=self.o["concurrency"], progress=self.o["progress"],
            lease_seconds=lease_seconds(deadline),
        )  # fmt: skip
        self.engine = engine
        task = asyncio.current_task()
        installed = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig, task)
                installed.append(sig)
        run_stamp = now_iso()
        try:
            await self._send()
            self._raise_if_stopped(engine)
            if self.o["refresh"] and not self._out_of_time() and self.signum is None:
                engine.report.refreshed = await engine.refresh(run_stamp)
                self._raise_if_stopped(engine)
            if self.signum is None:
                return await self._finish(db, engine, started, "ok")
        except asyncio.CancelledError:
            if self.signum is None:
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(db, engine, started, "failed"))
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self.signum is not None:
                await asyncio.shield(self._finish(db, engine, started, "interrupted"))
            engine.close()
            await client.aclose()
            await loop.run_in_executor(None, db.close)
        assert self.signum is not None
        raise Interrupted(
            f"interrupted by {signal.Signals(self.signum).name}: {engine.report.summary()}",
            signum=self.signum, report=engine.report,
        )  # fmt: skip

    def _on_signal(self, signum: int, task: asyncio.Task[Any] | None) -> None:
        """Stop claiming at once; let requests already sent be answered for a moment."""
        if self.signum is not None:
            if task is not None:
                task.cancel()  # a second signal: stop waiting
            return
        self.signum = signum
        self.engine.interrupted = signum
        log.warning("stopping: settling what was answered (press again to stop at once)")
        if task is not None:
            self._timer = asyncio.get_running_loop().call_later(INTERRUPT_GRACE, task.cancel)

    def _out_of_time(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    async def _send(self) -> None:
        engine, limit = self.engine, self.o["limit"]
        db = engine.db
        total = await db.run(engine.leases.count_due, ignore_backoff=not self.o["respect_backoff"])
        engine.progress.begin("sending", total if limit is None else min(total, limit))
        sent, first, stalls = 0, not self.o["respect_backoff"], 0
        while True:
            settled = engine.report.synced + engine.report.rejected
            left = None if limit is None else limit - sent
            if left is not None and left <= 0:
                break
            step = engine.sync_once(left, ignore_backoff=first)
            first = False
            if self.stop_at is not None:
                try:
                    sent += await asyncio.wait_for(step, max(0.0, self.stop_at - time.monotonic()))
                except TimeoutError:
                    break
            else:
                sent += await step
            if engine.stopped:
                break
            stalls = 0 if engine.report.synced + engine.report.rejected > settled else stalls + 1
            if stalls >= MAX_STALLS:  # the server keeps failing: leave the rest for later
                break
            next_due = await db.run(engine.leases.next_due_at)
            if next_due is None:
                break
            wait = max(0.0, next_due - time.time())
            horizon = self.o["retry_window"]
            if self.stop_at is not None:
                horizon = min(horizon, self.stop_at - time.monotonic())
            if wait > horizon:
                break
            await asyncio.sleep(wait)

    def _raise_if_stopped(self, engine: SyncEngine) -> None:
        if engine.store_error is not None:
            raise engine.store_error
        failure = engine.stop_reason
        if failure is None:
            return
        synced = engine.report.synced
        kept = (
            f"{synced} entries synced before that are kept; the rest were left as they were"
            if synced
            else "no entry was changed"
        )
        if failure.kind == "auth":
            raise AuthError(
                f"the server refused the API key (HTTP {failure.status}): check HAIQU_API_KEY"
                f" (`logbook doctor` tests it); {kept}"
            )
        if failure.kind == "redirect":
            raise Redirected(
                f"the endpoint redirects to {failure.location}; set HAIQU_EDGE_URI to it ({kept})"
            )
        if failure.trust_failed:
            raise TrustError(f"{failure}; {kept}")
        if failure.timed_out:
            raise Unreachable(
                f"{self.endpoint} timed out {MAX_TIMEOUTS} requests in a row: is it up? {kept};"
                " entries that were in flight are looked up before they are sent again"
            )
        if not engine.any_success:
            raise Unreachable(f"{failure}; {kept}")

    async def _finish(
        self, db: StoreWorker, engine: SyncEngine, started: float, how: str
    ) -> SyncReport:
        """Record the run, count what is left, and make sure nothing is still held."""
        await engine.drain_settling(steps=True)
        leases = engine.leases
        report = engine.report
        held = await db.run(leases.count_owned, engine.owner)
        if held:
            # Never report success while holding claims: they go to the next run,
            # which looks them up first (this run has ended, so they count as gone).
            report.add_error(f"{held} entries could not be settled; the next sync looks them up")
        report.held_elsewhere = await db.run(leases.count_held, engine.owner)
        report.pending = await db.run(leases.count_left) + held
        report.elapsed = time.monotonic() - started
        engine.progress.end()
        await db.run(db.store.record_run, report_row(report, how), engine.any_success)
        return report


def report_row(report: SyncReport, outcome: str) -> dict[str, Any]:
    return {
        "ended_at": now_iso(), "outcome": outcome, "synced": report.synced,
        "rejected": report.rejected, "pending": report.pending, "refreshed": report.refreshed,
        "elapsed": round(report.elapsed, 3),
    }  # fmt: skip


# --- the watcher's syncs ----------------------------------------------------------------------

#: Sync back-off after a failed or unfinished run (seconds): doubled, jittered, capped.
SYNC_BACKOFF_START = 1.0
SYNC_BACKOFF_CAP = 60.0
#: After the server refused the key, try again this rarely (the key may be fixed server-side).
SYNC_AUTH_RETRY = 300.0
#: Upper bound of one background run, so a slow server never holds a run (and a stop) for long.
SYNC_MAX_TIME = 30.0
#: How long a stop waits for a run in flight before leaving it to the next sync.
SYNC_STOP_WAIT = 2.0


class BackgroundSyncer:
    """Runs ``run_sync`` on its own thread when new entries were recorded (``watch --sync``).

    At most one run is in flight; kicks during a run coalesce into one more.
    Failures back off exponentially with jitter; recording never waits for it.
    The server refusing the key is reported once and retried rarely: the
    watcher keeps recording.  Everything it has to say goes to the
    ``logbook.sync`` logger.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        refresh_every: float = 300.0,
        sync: Callable[..., SyncReport] = run_sync,
    ) -> None:
        self.cfg = cfg
        self.refresh_every = refresh_every
        self.refreshed_at = time.monotonic()
        self.sync = sync
        self.kicked = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="logbook-sync", daemon=True)
        self.retry_at: float | None = None
        self.failures = 0  # runs in a row that made no progress: the back-off's exponent
        self.failing: str | None = None  # the kind of failure last reported, to say it once

    def start(self) -> None:
        self.kicked.set()  # upload whatever was left pending by earlier runs
        self.thread.start()

    def kick(self) -> None:
        self.kicked.set()

    def stop(self) -> bool:
        """Ask the thread to stop; True when it stopped within ``SYNC_STOP_WAIT``."""
        self.stopping.set()
        self.kicked.set()
        self.thread.join(SYNC_STOP_WAIT)
        return not self.thread.is_alive()

    def _fail(self, message: str, delay: float, kind: str) -> None:
        """Back off; say why once per kind of failure, not on every retry."""
        if kind != self.failing:
            log.warning("sync: %s; retrying in %.0f s (still recording)", message, delay)
            self.failing = kind
        self.retry_at = time.monotonic() + delay

    def _next_backoff(self) -> float:
        self.failures += 1
        return max(0.5, backoff(self.failures, base=SYNC_BACKOFF_START, cap=SYNC_BACKOFF_CAP))

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if self.retry_at is not None:
                # Backing off: new entries wait for the retry too (the server is struggling).
                remaining = self.retry_at - time.monotonic()
                if remaining > 0:
                    self.stopping.wait(min(remaining, 1.0))
                    continue
            elif not self.kicked.wait(1.0) and not self._refresh_due():
                continue
            if self.stopping.is_set():
                return
            self.kicked.clear()
            self.retry_at = None
            self.run_once()

    def _refresh_due(self) -> bool:
        return self.refresh_every > 0 and time.monotonic() - self.refreshed_at >= self.refresh_every

    def run_once(self) -> None:
        refresh = self._refresh_due()
        try:
            report = self.sync(
                self.cfg, concurrency=self.cfg.concurrency, refresh=refresh,
                max_time=SYNC_MAX_TIME, respect_backoff=True,
            )  # fmt: skip
        except AuthError as err:
            self._fail(str(err), SYNC_AUTH_RETRY, "auth")
            return
        except (Unreachable, Redirected) as err:
            self._fail(str(err), self._next_backoff(), type(err).__name__)
            return
        except ConfigError as err:
            self._fail(f"not configured: {err}", SYNC_AUTH_RETRY, "config")
            return
        except StoreError as err:
            self._fail(str(err), self._next_backoff(), "store")
            return
        except Exception as err:  # noqa: BLE001 - the sync thread must outlive any run
            log.debug("sync run failed", exc_info=True)
            self._fail(f"failed: {type(err).__name__}: {err}", self._next_backoff(), "other")
            return
        if refresh:
            self.refreshed_at = time.monotonic()
        if self.failing is not None and (report.synced or not report.pending):
            log.warning("sync: working again")
            self.failing = None
        if report.synced or report.rejected:
            log.info(
                "synced %d, rejected %d, pending %d", report.synced, report.rejected,
                report.pending,
            )  # fmt: skip
        if not report.pending:
            self.failures = 0
            return
        # Retryable failures (5xx, 429, the run's time limit): come back after a
        # back-off; progress resets it.
        if report.synced:
            self.failures = 0
            self.retry_at = time.monotonic() + self._next_backoff()
            return
        last = f" (last error: {report.errors[-1]})" if report.errors else ""
        self._fail(f"{report.pending} entries still pending{last}", self._next_backoff(), "pending")
