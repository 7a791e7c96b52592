"""Watching a daemon (``watch``, ``relay``): its figures, systemd's notify protocol, its metrics.

One ``Monitor`` per daemon.  It reads the store's figures on a store thread
of its own (``StoreWorker``: a scrape never waits on the daemon's writes, and
never blocks the relay's loop), keeps the last warnings (redacted) for the
status page, tells systemd how things stand (``STATUS=`` when the line
changes, checked every few seconds) and serves ``--metrics``
(``server.metrics``).

The watchdog is fed by the daemon's own loop through ``heartbeat.beat()``:
the watcher's loop calls it on every turn; the relay's event loop runs a
task that calls it.  A loop that hangs stops feeding it (systemd restarts
the daemon) and turns ``/healthz`` to 503.

``sync_textfile`` writes the same figures for node_exporter after a cron
``logbook sync``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .client import REQUESTS
from .errors import ConfigError
from .health import (
    DEFAULT_MAX_LAG,
    Figures,
    Snapshot,
    summary,
    write_textfile,
)
from .notify import Heartbeat, Notifier
from .readiness import figures_of
from .redact import redact, url_secrets
from .server.metrics import ClientRequests
from .store.worker import StoreWorker

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("logbook.monitor")

#: How often the figures are read for systemd's status line (it is sent only when it changed).
STATUS_EVERY = 5.0
#: A loop that has not turned for this long is stuck (``/healthz`` 503); with systemd's
#: watchdog, its period, if shorter.
STUCK_AFTER = 60.0
#: Warnings and errors the status page keeps.
KEEP_ERRORS = 10
#: Figures that took longer than this to read (a store holding a great many entries a relay
#: has not confirmed: they are counted row by row) are reused for REUSE times as long, so
#: that however often the daemon is scraped, its monitor stays near 5% of one core.
SLOW_READ = 0.010
REUSE = 20


def secrets_of(cfg: Config) -> list[str]:
    """What no page, metric or status line may show: the key and any proxy's password."""
    proxies = [cfg.proxy] + [v for k, v in os.environ.items() if k.lower().endswith("_proxy")]
    found = [cfg.api_key, os.environ.get("HAIQU_API_KEY")]
    found += [s for url in proxies for s in url_secrets(url)]
    return [s for s in found if s]


class RecentErrors(logging.Handler):
    """The last warnings and errors logged, redacted as they arrive, for the status page."""

    def __init__(self, secrets: list[str], keep: int = KEEP_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.secrets = secrets
        self.items: deque[tuple[float, str, str]] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = redact(record.getMessage(), *self.secrets)
        except Exception:  # noqa: BLE001 - a log call must never fail the daemon
            return
        self.items.append((record.created, record.levelname.lower(), message[:500]))


class Monitor:
    """What a daemon tells systemd and ``--metrics``; ``role`` is "watch" or "relay"."""

    def __init__(
        self,
        cfg: Config,
        *,
        role: str,
        version: str,
        max_lag: float = DEFAULT_MAX_LAG,
        listen: tuple[str, int] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.role = role
        self.version = version
        self.max_lag = max_lag
        self.listen = listen
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.heartbeat = Heartbeat(self.notifier)
        period = self.notifier.watchdog_interval
        self.stuck_after = min(STUCK_AFTER, 2 * period) if period else STUCK_AFTER
        self.errors = RecentErrors(secrets_of(cfg))
        #: The relay's requests by client (set by the relay, which counts them).
        self.clients: ClientRequests | None = None
        self.url: str | None = None
        self._db: StoreWorker | None = None
        self._runner: Any = None  # the metrics site's aiohttp AppRunner
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._figures: Figures | None = None
        self._fresh_until = 0.0

    @property
    def wanted(self) -> bool:
        """Anything to do: ``--metrics`` was given, or systemd listens."""
        return self.listen is not None or self.notifier.enabled

    # --- on the daemon's event loop (the relay), or on a thread's own (the watcher) ----------

    async def start(self, *, beat: bool = False) -> str | None:
        """Start on the running loop; ``beat``: this loop is the daemon's, feed the watchdog
        from it.  Returns the metrics URL, if ``listen`` was given.
        """
        from .server.metrics import start

        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(None, StoreWorker, str(self.cfg.db))
        logging.getLogger("logbook").addHandler(self.errors)
        if beat:
            self._tasks.append(asyncio.create_task(self._beat()))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._status_loop()))
        if self.listen is not None:
            host, port = self.listen
            try:
                self._runner, self.url = await start(self, host, port)
            except OSError as err:
                await self.stop()
                raise ConfigError(
                    f"cannot listen on {host}:{port} for --metrics: {err.strerror or err}"
                ) from None
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logging.getLogger("logbook").removeHandler(self.errors)
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(None, db.close)

    async def snapshot(self) -> Snapshot:
        clients = self.clients
        figures = await self._read_figures()
        return Snapshot(
            role=self.role, version=self.version, figures=figures, max_lag=self.max_lag,
            requests=dict(REQUESTS),
            relay_requests=None if clients is None else dict(clients.counts),
            clients_seen={} if clients is None else dict(clients.seen),
            errors=list(self.errors.items),
        )  # fmt: skip

    async def _read_figures(self) -> Figures:
        assert self._db is not None
        start = time.monotonic()
        if self._figures is not None and start < self._fresh_until:
            return self._figures
        figures = await self._db.run(self._db.store.figures)
        took = time.monotonic() - start
        self._figures = figures
        self._fresh_until = time.monotonic() + (REUSE * took if took > SLOW_READ else 0.0)
        return figures

    def loop_age(self) -> float:
        return self.heartbeat.age()

    async def _beat(self) -> None:
        period = self.heartbeat.interval
        tick = min(1.0, period / 2) if period else 1.0
        while True:
            self.heartbeat.beat()
            await asyncio.sleep(tick)

    async def _status_loop(self) -> None:
        while True:
            try:
                snap = await self.snapshot()
                self.notifier.status(summary(snap.figures, snap.verdict))
            except Exception:  # noqa: BLE001 - the next turn tries again
                log.debug("cannot read the figures for systemd's status line", exc_info=True)
            await asyncio.sleep(STATUS_EVERY)

    # --- systemd ---------------------------------------------------------------------------

    def ready(self) -> None:
        """READY=1: listening (the relay) or watching (the watcher)."""
        self.heartbeat.beat()
        self.notifier.ready()

    def stopping(self) -> None:
        """STOPPING=1: SIGTERM arrived (the status line says so too)."""
        self.notifier.stopping(f"stopping ({self.role})")

    # --- on a thread of its own (the watcher, whose loop is not an event loop) -------------

    def start_thread(self) -> str | None:
        """Run the monitor on a thread with its own event loop; the metrics URL, if any."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="logbook-monitor", daemon=True
        )
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(60)
        except BaseException:
            self.stop_thread()
            raise

    def stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._db is not None or self._tasks or self._runner is not None:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        except Exception:  # noqa: BLE001 - stopping must not fail the daemon's exit
            log.debug("the monitor did not stop cleanly", exc_info=True)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            self.notifier.close()


def sync_textfile(cfg: Config, path: str, version: str, max_lag: float = DEFAULT_MAX_LAG) -> None:
    """The figures after a ``logbook sync``, for node_exporter's textfile collector."""
    snap = Snapshot(
        role="sync", version=version, figures=figures_of(cfg), max_lag=max_lag, now=time.time(),
        requests=dict(REQUESTS),
    )  # fmt: skip
    write_textfile(path, snap)
