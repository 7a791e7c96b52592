"""The exactly-once core: claim what is due, send each entry once, settle the outcomes.

``SyncEngine`` holds a run's shared state (the client, the store, the
limits, the report); ``_Step`` is one pass over what is due: a claimer
feeds workers through a queue and a ticker settles outcomes in batches.
The rules it keeps are listed in the package's docstring.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_CONCURRENCY
from ..errors import RequestFailed, StoreError
from ..progress import Progress
from ..store import Entry
from ..store.leases import Outcome, end_owner, new_owner
from ..store.worker import StoreWorker
from .limits import AdaptiveLimit, backoff
from .policy import MAX_TIMEOUTS, Action, decide, throttles
from .report import SyncReport

if TYPE_CHECKING:
    from ..client import ApiClient, JobRef

log = logging.getLogger("logbook.sync")

SETTLE_BATCH = 256
SETTLE_INTERVAL = 0.05
LEASE_SECONDS = 600.0


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
        self.lease_seconds = lease_seconds
        self.progress = progress or Progress()
        self.limit = AdaptiveLimit(concurrency, self.rng, on_pause=self.progress.pause)
        self.report = SyncReport()
        self.owner = new_owner()
        #: Why the run stops early (auth, redirect, unreachable), if it does.
        self.stop_reason: RequestFailed | None = None
        self.interrupted: int | None = None
        #: A store that could not be written: the run ends with this error once it has unwound.
        self.store_error: StoreError | None = None
        #: The server answered something this run (so a refused connection is a blip).
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
                # A relay's old refusal is no answer to this send (a user's retry, say):
                # posted again, the relay forwards it once more.  Nor is a relay's job of
                # this identity with other content: posted, it is answered 409.
                if (
                    job is not None
                    and job.refused_upstream is None
                    and not job.holds_other_content(entry.post_body())
                ):
                    self.report.reconciled += 1
                    return self._answer(entry, job)
                if self.stopped:  # a 401 arrived during the lookup: post nothing new
                    return Outcome(entry.id, "released")
            # After a look-up, say so: a relay then looks the job up upstream too.
            job = await self.client.submit(entry.post_body(), reoffer=entry.maybe_sent)
            self._answered()
            return self._answer(entry, job)
        except RequestFailed as failure:
            return self._failed(entry, failure)

    def _answered(self) -> None:
        self.timeouts_in_a_row = 0

    def _answer(self, entry: Entry, job: JobRef) -> Outcome:
        """The endpoint has the job.  A relay's job is synced but not confirmed until the
        API's id comes back; one the relay says the API refused is rejected.
        """
        self.any_success = True
        self.limit.success()
        refused = job.refused_upstream
        if refused is not None:
            return Outcome(entry.id, "rejected", error=f"the API refused it (the relay says): "
                           f"{refused}")  # fmt: skip
        return Outcome(
            entry.id, "synced", remote_id=job.id, remote_status=job.status,
            upstream_id=job.upstream_id, via=self.client.endpoint if job.relayed else None,
        )  # fmt: skip

    def _stop(self, failure: RequestFailed) -> None:
        if self.stop_reason is None:
            self.stop_reason = failure

    def judge(self, failure: RequestFailed) -> Action:
        """The policy's action for a failure, and what it tells about the endpoint."""
        action = decide(failure.verdict, reached=self.any_success)
        if failure.timed_out:
            self.timeouts_in_a_row += 1
            if self.timeouts_in_a_row >= MAX_TIMEOUTS and not self.any_success:
                self._stop(failure)
        elif action is not Action.STOP:
            self._answered()
        if action is Action.STOP:
            self._stop(failure)
        return action

    def _failed(self, entry: Entry, failure: RequestFailed) -> Outcome:
        action = self.judge(failure)
        if action is Action.STOP:
            return Outcome(entry.id, "released")
        message = str(failure)
        self.report.add_error(message)
        if action is Action.REJECT:
            self.any_success = True  # the server answered
            return Outcome(entry.id, "rejected", error=message)
        self.progress.retries += 1
        if throttles(failure):
            self.progress.throttled += 1
            self.limit.overload(failure.retry_after, rate_limited=failure.status == 429)
        delay = backoff(entry.attempts + 1, failure.retry_after, rng=self.rng)
        return Outcome(
            entry.id, "pending", error=message, next_attempt_at=time.time() + delay,
            maybe_sent=entry.maybe_sent or action is Action.RETRY_UNCERTAIN,
        )  # fmt: skip


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

    async def renew(self, *, if_stale: bool = False) -> None:
        """Renew the lease on what the step holds; drop what another run took meanwhile.

        The one place a lease is renewed: before a POST once half the lease has
        gone (``still_ours``, ``if_stale``: once for all the workers that saw it),
        and from the ticker while entries wait.
        """
        lost: set[int] = set()
        async with self.lease_lock:
            if if_stale and self._lease_fresh():
                return
            ids = list(self.held)
            until = time.time() + self.e.lease_seconds
            kept = await self.e.db.run(
                self.e.leases.revalidate, self.e.owner, ids, self.e.lease_seconds
            )
            self.lease_until = until
            lost = set(ids) - kept
            for entry_id in lost:
                self.held.pop(entry_id, None)
        if lost:
            log.warning(
                "%d entries were taken over by another sync while this one was"
                " paused: they are left to it", len(lost),
            )  # fmt: skip

    def _lease_fresh(self) -> bool:
        return time.time() < self.lease_until - self.e.lease_seconds / 2

    async def still_ours(self, entry: Entry) -> bool:
        """The lease check before a POST: in memory while the lease stands, else in the store."""
        if not self._lease_fresh():
            await self.renew(if_stale=True)
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
                renewed = time.time()
                await self.renew()

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
