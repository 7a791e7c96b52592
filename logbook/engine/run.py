"""One ``logbook sync``: steps while retries fall due soon, then the refresh; its signals.

``run_sync`` is the loop (litestream's shape: the step, ``SyncEngine.sync_once``,
is kept apart from what repeats it); ``_Run`` owns the run's lifecycle: the
store thread, the client, SIGINT/SIGTERM, the time budget and the record of
the run in ``runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import NO_KEY
from ..errors import ConfigError, Interrupted
from ..progress import Progress
from ..store import Entry, Store, now_iso
from ..store.sentmark import check_restored
from ..store.worker import StoreWorker
from .core import LEASE_SECONDS, SyncEngine
from .policy import run_error
from .refresh import Refresher
from .report import SyncReport, report_row

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("logbook.sync")

#: Within one run, keep retrying while the next retry falls due this soon...
RETRY_WINDOW = 15.0
#: ...and while the server lets some entries through: stop after this many steps
#: in a row in which nothing was synced or rejected.
MAX_STALLS = 3
#: How long an interrupted run waits for requests already sent to be answered.
INTERRUPT_GRACE = 2.0


def lease_seconds(deadline: float) -> float:
    """The lease a run takes: long enough for a few slow requests.

    ``LOGBOOK_LEASE_SECONDS`` shortens it; it exists for tests of paused runs.
    """
    override = os.environ.get("LOGBOOK_LEASE_SECONDS")
    if override:
        return max(0.5, float(override))
    return max(LEASE_SECONDS, deadline * 4)


def require(cfg: Config) -> tuple[str, str]:
    """The endpoint and key a sync needs, or the ``ConfigError`` that says how to set them."""
    if not cfg.endpoint:
        raise ConfigError(
            'no endpoint: set HAIQU_EDGE_URI, pass --endpoint URL, or put endpoint = "..."'
            " in config.toml"
        )
    if not cfg.api_key:
        raise ConfigError(f"{NO_KEY}; see `logbook config`")
    from ..client.network import proxy_source

    proxy_source(cfg.proxy, cfg.endpoint)  # a malformed proxy in the environment: before any claim
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
        #: Entries claimed so far (``--limit`` counts across the run's sending passes).
        self.sent = 0

    async def main(self, handle_signals: bool) -> SyncReport:
        from ..client import ApiClient

        loop = asyncio.get_running_loop()
        started = time.monotonic()
        max_time = self.o["max_time"] or None
        self.stop_at = None if max_time is None else started + max_time
        deadline = self.cfg.request_timeout
        db = await loop.run_in_executor(None, StoreWorker, str(self.cfg.db))
        client = ApiClient(
            self.endpoint, self.key, auth=self.cfg.auth, connections=self.o["concurrency"],
            transport=self.o["transport"], deadline=deadline, network=self.cfg.network(),
            endpoint_setting=self.cfg.endpoint_setting,
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
            await db.run(check_restored, db.store)  # a store restored from a backup: told here
            await self._send()
            self._raise_if_stopped(engine)
            if self.o["refresh"] and not self._out_of_time() and self.signum is None:
                engine.report.refreshed = await Refresher(engine, run_stamp).run()
                self._raise_if_stopped(engine)
                if engine.report.reoffered and not self._out_of_time() and self.signum is None:
                    await self._send()  # what a relay lost goes again in this same run
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
        first, stalls = not self.o["respect_backoff"], 0
        while True:
            settled = engine.report.synced + engine.report.rejected
            left = None if limit is None else limit - self.sent
            if left is not None and left <= 0:
                break
            step = engine.sync_once(left, ignore_backoff=first)
            first = False
            if self.stop_at is not None:
                try:
                    self.sent += await asyncio.wait_for(
                        step, max(0.0, self.stop_at - time.monotonic())
                    )
                except TimeoutError:
                    break
            else:
                self.sent += await step
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
            recent = time.monotonic() - engine.limit.last_overload < wait + 5.0
            engine.progress.pause(wait, "Retry-After" if recent else "back-off")
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
        raise run_error(failure, self.endpoint, kept, self.cfg.endpoint_setting)

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
