"""The watcher's (and the relay's) syncs: ``run_sync`` repeated on a thread, with back-off."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import AuthError, ConfigError, Redirected, StoreError, Unreachable, WrongEndpoint
from .limits import backoff
from .report import SyncReport
from .run import run_sync

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("logbook.sync")

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
        on_failure: Callable[[str], None] | None = None,
        label: str = "sync",
        meanwhile: str = "still recording",
    ) -> None:
        self.cfg = cfg
        self.on_failure = on_failure  # each failed run's message (a relay keeps the last)
        self.label = label  # how its log lines begin ("sync", a relay's "forwarding")
        self.meanwhile = meanwhile  # what goes on while it backs off
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
            log.warning("%s: %s; retrying in %.0f s (%s)", self.label, message, delay,
                        self.meanwhile)  # fmt: skip
            self.failing = kind
        self.retry_at = time.monotonic() + delay
        if self.on_failure is not None:
            self.on_failure(message)

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
        except (Unreachable, Redirected, WrongEndpoint) as err:
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
            log.warning("%s: working again", self.label)
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
