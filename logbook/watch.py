"""``logbook watch``: record every result file that appears, once, never half-read.

Events alone lose files (FINDINGS.md, "Watching directories"): the kernel queue
overflows in a burst, nothing reports files written while the watcher was down,
and a writer may close a file twice.  So events are only hints.  The truth is
the directory itself, compared with the store's ledger of files seen:

- The observer starts first, then every watched directory is scanned (catch-up).
  A rescan runs again when inotify reports an overflow (watchdog only logs it:
  a logging filter on its logger turns the log record into a rescan), every
  ``--rescan`` seconds, and when a directory or the observer comes back.
  A rescan stats each file and skips those whose size and mtime the ledger
  already has, so it reads nothing twice.
- Threads: watchdog's handler only puts ``(kind, src, dest, is_dir)`` tuples on
  a ``SimpleQueue`` and never raises.  One worker (the thread that called
  ``run_watch``, normally the main thread) owns the only store connection
  (sqlite3 connections are bound to their thread), settles files, reads them and
  records them.  ``--sync`` runs ``run_sync`` on its own thread with its own
  connection, so the network never blocks recording.
- Settling: a file is read once its size and mtime have not changed for
  ``settle`` seconds (by our own observations or by its mtime's age, whichever
  shows it first), and it is read again if it changes.  A file that does not
  parse is held a little longer (``INVALID_GRACE``) before it is called
  invalid, so a writer that pauses half-way is not reported.
- Dedupe: the ledger (path, size, mtime_ns, sha256, outcome) and the store's
  unique ``(experiment_id, hash)`` make a file seen by an event and a rescan, or
  the same job in two files, one entry.  Each file's jobs and its ledger row are
  written in one transaction (``Store.record_file``).
- Stopping: SIGINT/SIGTERM set a flag; the worker finishes the file in hand
  and returns 0.  Files not yet settled are found by the next start's scan.

This is the only module that imports watchdog.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import random
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .ingest import DEFAULT_PATTERNS, ReadResult, is_ignored, matches, read_file
from .store import Store

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("logbook.watch")

Echo = Callable[[str], None]

#: Seconds between full rescans when ``--rescan`` is not given.  Events do the
#: work; the periodic rescan only catches what the kernel or NFS never reported.
DEFAULT_RESCAN = 60.0
#: A file that does not parse is held this long after its last change before it
#: is recorded as invalid (a writer may pause half-way through a file).
INVALID_GRACE = 1.0
#: How often the worker checks the observer's health and the watched directories.
HEALTH_INTERVAL = 1.0
#: The longest the worker sleeps, so a stop request is never kept waiting.
MAX_WAIT = 0.5
#: At most this many queued events are taken per loop turn, so due files are
#: recorded while a burst is still being drained.
DRAIN_BATCH = 5000
#: At most this many files are committed in one transaction.
RECORD_BATCH = 256
#: Polling observer: seconds between directory snapshots.
POLL_INTERVAL = 1.0
#: Sync back-off after a failed or unfinished run (seconds): doubled, jittered, capped.
SYNC_BACKOFF_START = 1.0
SYNC_BACKOFF_CAP = 60.0
#: After the server refused the key, try again this rarely (the key may be fixed server-side).
SYNC_AUTH_RETRY = 300.0
#: Upper bound of one sync run, so a slow server never holds a run (and a stop) for long.
SYNC_MAX_TIME = 30.0
#: How long a stop waits for a sync run in flight before leaving it to the next sync.
SYNC_STOP_WAIT = 2.0

_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
_RESCAN = ("rescan", "", "", True)
_WAKE = ("wake", "", "", False)


@dataclass
class WatchOptions:
    dirs: Sequence[str]
    experiment_id: str | None = None
    patterns: Sequence[str] = ()
    sync: bool = False
    polling: bool = False
    settle: float = 0.2
    rescan: float | None = None
    max_bytes: int = 64 * 1024 * 1024
    quiet: bool = False
    refresh: float = 300.0  # seconds between remote status refreshes with --sync; 0: never


@dataclass
class _Candidate:
    """A file that may need reading: what it looked like, and since when."""

    key: tuple[int, int]  # (size, mtime_ns) at the last observation
    since: float  # monotonic time when ``key`` was first observed
    due: float = 0.0


@dataclass
class _Ready:
    """A settled file, read, waiting for its batch to commit."""

    path: str
    cand: _Candidate
    res: ReadResult
    seen: tuple[int, int, str, str] | None


@dataclass
class WatchStats:
    files: int = 0
    created: int = 0
    known: int = 0
    invalid: int = 0
    rescans: int = 0
    overflows: int = 0


# --- watchdog side: hand events on, never raise ------------------------------------------


def _make_handler(events: queue.SimpleQueue[tuple[str, str, str, bool]]) -> Any:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    class _Handler(FileSystemEventHandler):
        """On watchdog's thread: only queue the event (a raise here kills the observer)."""

        def dispatch(self, event: FileSystemEvent) -> None:
            try:
                events.put(
                    (
                        event.event_type,
                        os.fsdecode(event.src_path),
                        os.fsdecode(event.dest_path or ""),
                        event.is_directory,
                    )
                )
            except BaseException:  # noqa: BLE001 - never let anything reach watchdog's thread
                pass

    return _Handler()


class _OverflowFilter(logging.Filter):
    """Turns watchdog's "Inotify queue overflowed" log record into a rescan request.

    watchdog 7 tells no handler about an overflow; it only logs a warning.  The
    record is swallowed (the watcher prints its own line) and everything else
    passes.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self.on_overflow = on_overflow

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        if "overflow" in msg.lower():
            if "events were lost" in msg or "reconciling" not in msg:
                try:
                    self.on_overflow()
                except Exception:  # noqa: BLE001
                    pass
            return False
        return True


def _event_filter(polling: bool) -> list[Any]:
    """Only the events the watcher uses: fewer inotify events, later overflows."""
    from watchdog.events import (
        DirCreatedEvent,
        DirDeletedEvent,
        DirMovedEvent,
        FileClosedEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileModifiedEvent,
        FileMovedEvent,
    )

    kinds: list[Any] = [
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        DirCreatedEvent,
        DirMovedEvent,
        DirDeletedEvent,
    ]
    if not polling:
        kinds.append(FileClosedEvent)
    return kinds


# --- the sync thread -----------------------------------------------------------------------


class _Syncer:
    """Runs ``run_sync`` on its own thread when new entries were recorded.

    At most one run is in flight; kicks during a run coalesce into one more run.
    Failures back off exponentially with jitter; recording never waits for it.
    The server refusing the key (401/403) is reported once and retried rarely:
    the watcher keeps recording (exit code stays 0 on SIGTERM).
    """

    def __init__(
        self,
        cfg: Config,
        echo: Echo,
        quiet: bool,
        run_sync: Callable[..., Any],
        refresh_every: float = 300.0,
    ) -> None:
        self.cfg = cfg
        self.refresh_every = refresh_every
        self.refreshed_at = time.monotonic()
        self.echo = echo
        self.quiet = quiet
        self.run_sync = run_sync
        self.kicked = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="logbook-sync", daemon=True)
        self.retry_at: float | None = None
        self.backoff = SYNC_BACKOFF_START
        self.failing: str | None = None  # the last failure reported, to say it once
        self.busy = False

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

    def _say(self, line: str) -> None:
        from .secrets import redact

        self.echo(redact(line, self.cfg.api_key))

    def _fail(self, message: str, delay: float, kind: str | None = None) -> None:
        """Back off; say why once (per ``kind``, else per message), not on every retry."""
        kind = kind or message
        if kind != self.failing:
            self._say(f"sync: {message}; retrying in {delay:.0f} s (still recording)")
            self.failing = kind
        self.retry_at = time.monotonic() + delay

    def _next_backoff(self) -> float:
        delay = self.backoff * random.uniform(0.5, 1.0)
        self.backoff = min(self.backoff * 2, SYNC_BACKOFF_CAP)
        return max(delay, 0.5)

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
            self._run_once()

    def _refresh_due(self) -> bool:
        """Time to ask the server for unfinished statuses (``--refresh``)."""
        return self.refresh_every > 0 and time.monotonic() - self.refreshed_at >= self.refresh_every

    def _run_once(self) -> None:
        from .errors import AuthError, ConfigError, Unreachable

        refresh = self._refresh_due()
        try:
            self.busy = True
            report = self.run_sync(
                self.cfg,
                concurrency=self.cfg.concurrency,
                refresh=refresh,
                max_time=SYNC_MAX_TIME,
                respect_backoff=True,
            )
        except AuthError as err:
            self._fail(str(err), SYNC_AUTH_RETRY, "auth")
            return
        except Unreachable as err:
            self._fail(str(err), self._next_backoff(), "unreachable")
            return
        except ConfigError as err:
            self._fail(f"not configured: {err}", SYNC_AUTH_RETRY, "config")
            return
        except Exception as err:  # noqa: BLE001 - the sync thread must outlive any run
            log.debug("sync run failed", exc_info=True)
            self._fail(f"failed: {type(err).__name__}: {err}", self._next_backoff())
            return
        finally:
            self.busy = False
        if refresh:
            self.refreshed_at = time.monotonic()
        synced = getattr(report, "synced", 0)
        rejected = getattr(report, "rejected", 0)
        pending = getattr(report, "pending", 0)
        if self.failing is not None and (synced or not pending):
            self._say("sync: working again")
            self.failing = None
        if (synced or rejected) and not self.quiet:
            self._say(f"synced {synced}, rejected {rejected}, pending {pending}")
        if not pending:
            self.backoff = SYNC_BACKOFF_START
            return
        # Retryable failures (5xx, 429, the run's time limit): come back after a back-off;
        # progress resets it.
        if synced:
            self.backoff = SYNC_BACKOFF_START
            self.retry_at = time.monotonic() + self._next_backoff()
            return
        errors = getattr(report, "errors", None) or []
        last = f" (last error: {errors[-1]})" if errors else ""
        self._fail(f"{pending} entries still pending{last}", self._next_backoff(), "pending")


# --- the watcher ----------------------------------------------------------------------------


class Watcher:
    """The worker: owns the store connection, the candidates and the observer."""

    def __init__(self, cfg: Config, options: WatchOptions, echo: Echo) -> None:
        self.cfg = cfg
        self.opt = options
        self.echo = echo
        self.roots = [os.path.abspath(d) for d in options.dirs]
        self.patterns = tuple(options.patterns) or DEFAULT_PATTERNS
        self.settle = max(0.0, float(options.settle))
        self.grace = max(INVALID_GRACE, 3 * self.settle)
        self.rescan_every = options.rescan if options.rescan is not None else DEFAULT_RESCAN
        self.events: queue.SimpleQueue[tuple[str, str, str, bool]] = queue.SimpleQueue()
        self.stop_flag = threading.Event()
        self.overflowed = threading.Event()
        self.candidates: dict[str, _Candidate] = {}
        self.heap: list[tuple[float, str]] = []
        self.pending_scans: list[str] = []
        self.missing: set[str] = set()
        self.stats = WatchStats()
        self.store: Store | None = None
        self.observer: Any = None
        self.handler: Any = None
        self.syncer: _Syncer | None = None
        self.cwd = os.getcwd()
        self._filters: list[tuple[logging.Logger, logging.Filter]] = []

    # output

    def say(self, line: str) -> None:
        if not self.opt.quiet:
            self.echo(line)

    def warn(self, line: str) -> None:
        self.echo(f"logbook: warning: {line}")

    def show(self, path: str) -> str:
        """A path as the user would type it: relative to the cwd when below it."""
        rel = os.path.relpath(path, self.cwd)
        return path if rel.startswith("..") else rel

    # observer

    def _new_observer(self) -> Any:
        if self.opt.polling:
            from watchdog.observers.polling import PollingObserver

            return PollingObserver(timeout=POLL_INTERVAL)
        from watchdog.observers import Observer

        return Observer()

    def start_observer(self) -> None:
        """Start a fresh observer on every watched directory that exists now."""
        self.stop_observer()
        observer = self._new_observer()
        if self.handler is None:
            self.handler = _make_handler(self.events)
        for root in self.roots:
            if not os.path.isdir(root):
                continue
            observer.schedule(
                self.handler,
                root,
                recursive=True,
                event_filter=_event_filter(self.opt.polling),
            )
        observer.daemon = True
        observer.start()
        self.observer = observer

    def stop_observer(self) -> None:
        observer, self.observer = self.observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(1.0)
        except Exception:  # noqa: BLE001 - a broken observer is being replaced anyway
            log.debug("stopping the observer failed", exc_info=True)

    def _observer_error(self, err: OSError) -> str:
        hint = ""
        if err.errno in (28, 24):  # ENOSPC, EMFILE: inotify limits
            hint = (
                " (inotify limit reached: raise fs.inotify.max_user_watches /"
                " max_user_instances, or use --polling)"
            )
        return f"cannot watch {', '.join(self.roots)}: {err.strerror or err}{hint}"

    def install_overflow_filter(self) -> None:
        flt = _OverflowFilter(self.request_overflow_rescan)
        for name in _OVERFLOW_LOGGERS:
            lg = logging.getLogger(name)
            if lg.getEffectiveLevel() > logging.WARNING:
                lg.setLevel(logging.WARNING)
            lg.addFilter(flt)
            self._filters.append((lg, flt))

    def remove_overflow_filter(self) -> None:
        for lg, flt in self._filters:
            lg.removeFilter(flt)
        self._filters.clear()

    def request_overflow_rescan(self) -> None:
        """Called on watchdog's thread: only flags and wakes the worker."""
        self.overflowed.set()
        self.events.put(_RESCAN)

    def request_stop(self) -> None:
        self.stop_flag.set()
        self.events.put(_WAKE)

    # candidates

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return root
        return None

    def relevant(self, path: str) -> bool:
        """A result file name under a watched directory, not hidden or temporary."""
        name = os.path.basename(path)
        if is_ignored(name) or not matches(name, self.patterns):
            return False
        return self.relevant_dir(os.path.dirname(path))

    def relevant_dir(self, path: str) -> bool:
        """A watched directory or one below it that is not hidden (as ``import`` walks them)."""
        root = self._root_of(path)
        if root is None:
            return False
        rel = os.path.relpath(path, root)
        return rel == "." or not any(p.startswith(".") for p in rel.split(os.sep))

    def touch(self, path: str, st: os.stat_result | None = None) -> None:
        """Note that ``path`` may have changed; schedule a settle check."""
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                self.candidates.pop(path, None)
                return
        if not stat.S_ISREG(st.st_mode):
            self.candidates.pop(path, None)
            return
        now = time.monotonic()
        key = (st.st_size, st.st_mtime_ns)
        cand = self.candidates.get(path)
        if cand is None or cand.key != key:
            cand = _Candidate(key=key, since=now)
            self.candidates[path] = cand
        age = time.time() - st.st_mtime_ns / 1e9
        wait = min(max(self.settle - max(age, now - cand.since), 0.0), self.settle)
        self._schedule(path, cand, now + wait)

    def _schedule(self, path: str, cand: _Candidate, due: float) -> None:
        if cand.due and cand.due <= due and cand.due > time.monotonic():
            return  # an earlier check is already queued; it reschedules if needed
        cand.due = due
        heapq.heappush(self.heap, (due, path))

    def handle_event(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        if kind == "rescan":
            return  # the overflow flag is read by the loop
        if kind == "wake":
            return
        if is_dir:
            if kind in ("created", "moved"):
                target = dest if kind == "moved" else src
                if target and target not in self.roots and self.relevant_dir(target):
                    self.pending_scans.append(target)
            if kind in ("deleted", "moved") and src in self.roots:
                self.check_roots()
            return
        if kind == "moved":
            self.candidates.pop(src, None)
            if dest and self.relevant(dest):
                self.touch(dest)
            return
        if kind == "deleted":
            self.candidates.pop(src, None)
            return
        if self.relevant(src):
            self.touch(src)

    # scanning

    def scan(self, top: str) -> int:
        """Walk ``top``; make a candidate of each result file the ledger lacks or has changed."""
        assert self.store is not None
        found = 0
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        if is_ignored(name) or not matches(name, self.patterns):
                            continue
                        st = entry.stat()
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    path = entry.path
                    seen = self.store.file_seen(path)
                    if seen is not None and (seen[0], seen[1]) == (st.st_size, st.st_mtime_ns):
                        continue
                    found += 1
                    self.touch(path, st)
        return found

    def rescan_all(self) -> None:
        self.stats.rescans += 1
        for root in self.roots:
            if root not in self.missing:
                self.scan(root)

    # settling and recording

    def check_due(self, budget: float = 0.25) -> None:
        """Read the candidates whose settle time has come and record them in batches.

        Works for up to ``budget`` seconds so events keep being drained in a burst.
        A batch is one transaction (one fsync): a burst of small files is bound by
        fsyncs otherwise.  Each file's jobs and ledger row still commit together.
        """
        start = time.monotonic()
        batch: list[_Ready] = []
        while self.heap and not self.stop_flag.is_set():
            due, path = self.heap[0]
            now = time.monotonic()
            if due > now or now - start > budget:
                break
            heapq.heappop(self.heap)
            cand = self.candidates.get(path)
            if cand is None or cand.due != due:
                continue  # stale heap entry
            cand.due = 0.0
            try:
                ready = self.check(path, cand)
            except Exception as err:  # noqa: BLE001 - one file never stops the watcher
                self._failed(path, cand, err)
                continue
            if ready is not None:
                batch.append(ready)
                if len(batch) >= RECORD_BATCH:
                    self.record(batch)
                    batch = []
        self.record(batch)

    def _failed(self, path: str, cand: _Candidate, err: Exception) -> None:
        from .errors import StoreError

        if isinstance(err, StoreError):
            # The store is busy or failing: keep the file and try again shortly.
            self.warn(f"{self.show(path)}: {err}; will retry")
            self._schedule(path, cand, time.monotonic() + 1.0)
        else:
            log.debug("checking %s failed", path, exc_info=True)
            self.warn(f"{self.show(path)}: {type(err).__name__}: {err}")
            self.candidates.pop(path, None)

    def check(self, path: str, cand: _Candidate) -> _Ready | None:
        """Settle check for one due file: its read result when it is ready to record."""
        assert self.store is not None
        try:
            st = os.stat(path)
        except OSError:
            self.candidates.pop(path, None)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.candidates.pop(path, None)
            return None
        now = time.monotonic()
        key = (st.st_size, st.st_mtime_ns)
        if key != cand.key:
            self.touch(path, st)  # changed since the last look: settle again
            return None
        quiet = max(now - cand.since, time.time() - st.st_mtime_ns / 1e9)
        if quiet < self.settle:
            self._schedule(path, cand, now + self.settle - quiet)
            return None
        seen = self.store.file_seen(path)
        if seen is not None and (seen[0], seen[1]) == key:
            self.candidates.pop(path, None)  # already handled, as it is now
            return None
        res = read_file(path, experiment_id=self.opt.experiment_id, max_bytes=self.opt.max_bytes)
        if res.sha256 and (res.size, res.mtime_ns) != key:
            # It changed while we read it: settle again on what it is now.
            self.touch(path)
            return None
        if not res.ok and quiet < self.grace and not self.stop_flag.is_set():
            # Maybe a writer paused half-way: give it the grace period before calling it invalid.
            self._schedule(path, cand, now + self.grace - quiet)
            return None
        return _Ready(path, cand, res, seen)

    def record(self, batch: list[_Ready]) -> None:
        """Commit a batch of read files (one transaction), then log each one."""
        assert self.store is not None
        if not batch:
            return
        items = [
            {
                "path": r.path,
                "size": r.res.size,
                "mtime_ns": r.res.mtime_ns,
                "sha256": r.res.sha256,
                "jobs": r.res.jobs,
                "reason": "; ".join(r.res.errors) if r.res.errors else None,
            }
            for r in batch
        ]
        try:
            counts = self.store.record_files(items)
        except Exception as err:  # noqa: BLE001 - retried below, per file
            for r in batch:
                self._failed(r.path, r.cand, err)
            return
        any_created = False
        for r, item, (created, known) in zip(batch, items, counts, strict=True):
            if self.candidates.get(r.path) is r.cand:
                self.candidates.pop(r.path, None)
            reason = item["reason"]
            self.stats.files += 1
            self.stats.created += created
            self.stats.known += known
            any_created = any_created or bool(created)
            seen = r.seen
            same = (
                seen is not None
                and seen[2] == r.res.sha256
                and seen[3] == ("invalid" if reason else "recorded")
            )
            if reason:
                self.stats.invalid += 1
                if not same:
                    extra = f" ({created} new recorded)" if created else ""
                    self.echo(f"invalid {self.show(r.path)}: {reason}{extra}")
            elif not same:
                tail = f", {known} already known" if known else ""
                self.say(f"recorded {self.show(r.path)}: {created} new{tail}")
        if any_created and self.syncer is not None:
            self.syncer.kick()

    # health

    def check_roots(self) -> bool:
        """Notice watched directories that went away or came back; True if one came back."""
        came_back = False
        for root in self.roots:
            present = os.path.isdir(root)
            if not present and root not in self.missing:
                self.missing.add(root)
                self.warn(f"watched directory {root} has disappeared; waiting for it to come back")
                for path in [p for p in self.candidates if self._root_of(p) == root]:
                    self.candidates.pop(path, None)
            elif present and root in self.missing:
                self.missing.discard(root)
                self.say(f"watched directory {root} is back; watching it again")
                came_back = True
        return came_back

    def supervise(self) -> None:
        """Restart the observer if its thread died or a directory came back, then rescan."""
        came_back = self.check_roots()
        dead = self.observer is None or not self.observer.is_alive()
        if not dead and not came_back:
            return
        if dead:
            self.warn("the file system observer stopped; restarting it")
        try:
            self.start_observer()
        except OSError as err:
            raise _Fatal(self._observer_error(err)) from None
        self.rescan_all()

    # the loop

    def run(self) -> int:
        self.store = Store(self.cfg.db)
        try:
            return self._run()
        finally:
            self.stop_observer()
            self.remove_overflow_filter()
            self.store.close()

    def _run(self) -> int:
        assert self.store is not None
        self.install_overflow_filter()
        try:
            self.start_observer()
        except OSError as err:
            self.echo(f"logbook: error: {self._observer_error(err)}")
            return 1
        mode = "polling" if self.opt.polling else "inotify"
        self.say(
            f"watching {', '.join(self.show(r) for r in self.roots)} ({mode}; settle"
            f" {self.settle:g} s; rescan every {self.rescan_every:g} s"
            f"{'; sync on' if self.syncer else ''})"
        )
        if self.syncer is not None:
            self.syncer.start()
        self.rescan_all()  # catch-up: the observer is already running
        next_rescan = time.monotonic() + self.rescan_every
        next_health = time.monotonic() + HEALTH_INTERVAL
        while not self.stop_flag.is_set():
            now = time.monotonic()
            wait = min(MAX_WAIT, next_health - now, next_rescan - now)
            if self.heap:
                wait = min(wait, self.heap[0][0] - now)
            self._drain(max(0.0, wait))
            if self.stop_flag.is_set():
                break
            now = time.monotonic()
            if self.overflowed.is_set():
                self.overflowed.clear()
                self.stats.overflows += 1
                self.warn("the kernel's event queue overflowed; rescanning the watched directories")
                self._drain(0.0, limit=None)
                self.rescan_all()
                next_rescan = time.monotonic() + self.rescan_every
            elif now >= next_rescan:
                self.rescan_all()
                next_rescan = time.monotonic() + self.rescan_every
            while self.pending_scans:
                self.scan(self.pending_scans.pop())
            if now >= next_health:
                try:
                    self.supervise()
                except _Fatal as err:
                    self.echo(f"logbook: error: {err}")
                    return 1
                next_health = time.monotonic() + HEALTH_INTERVAL
            self.check_due()
        st = self.stats
        self.say(
            f"stopped: {st.files} files read, {st.created} new entries, {st.known} already"
            f" known, {st.invalid} invalid; {st.rescans} rescans, {st.overflows} overflows"
        )
        return 0

    def _drain(self, wait: float, limit: int | None = DRAIN_BATCH) -> None:
        """Take queued events: block up to ``wait`` for the first, then take what is there."""
        try:
            item = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        n = 0
        while True:
            try:
                self.handle_event(*item)
            except Exception:  # noqa: BLE001 - one odd event never stops the watcher
                log.debug("event %r failed", item, exc_info=True)
            n += 1
            if limit is not None and n >= limit:
                return
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return


class _Fatal(Exception):
    """The watcher cannot go on (the observer cannot be restarted)."""


def _check_dirs(roots: Sequence[str]) -> str | None:
    for root in roots:
        if not os.path.exists(root):
            return f"no such directory: {root}"
        if not os.path.isdir(root):
            return f"not a directory: {root}"
        if not os.access(root, os.R_OK | os.X_OK):
            return f"cannot read directory: {root} (permission denied)"
    return None


def run_watch(cfg: Config, options: WatchOptions, echo: Echo) -> int:
    """Watch until SIGINT/SIGTERM; returns the exit code (0 after a signal).

    2: a watched directory does not exist (or --sync without endpoint/key);
    1: the observer could not be started or restarted.
    """
    from .errors import ConfigError
    from .fsinfo import network_filesystem

    roots = [os.path.abspath(d) for d in options.dirs]
    problem = _check_dirs(roots)
    if problem:
        echo(f"logbook: error: {problem}")
        return 2
    watcher = Watcher(cfg, options, echo)
    if options.sync:
        if not cfg.endpoint:
            raise ConfigError(
                "--sync needs the API base URL: give --endpoint URL or set HAIQU_EDGE_URI"
            )
        if not cfg.api_key:
            raise ConfigError(
                "--sync needs the API key: set HAIQU_API_KEY (or api_key in config.toml)"
            )
        from .sync import run_sync

        watcher.syncer = _Syncer(cfg, echo, options.quiet, run_sync, options.refresh)
    if not options.polling and not options.quiet:
        for root in roots:
            fstype = network_filesystem(root)
            if fstype:
                watcher.warn(
                    f"{root} is on a network filesystem ({fstype}): inotify does not see"
                    " files written by other hosts there; use --polling"
                )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watcher.request_stop()

    installed: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            installed.append((sig, signal.signal(sig, on_signal)))
    try:
        code = watcher.run()
    finally:
        for sig, old in installed:
            signal.signal(sig, old)
        if watcher.syncer is not None and not watcher.syncer.stop():
            echo("logbook: note: a sync run was still in flight; `logbook sync` finishes it")
    s = watcher.stats
    watcher.say(
        f"stopped: {s.files} files read, {s.created} new entries, {s.known} already known,"
        f" {s.invalid} invalid"
    )
    return code


__all__ = ["WatchOptions", "Watcher", "run_watch", "DEFAULT_RESCAN", "INVALID_GRACE"]
