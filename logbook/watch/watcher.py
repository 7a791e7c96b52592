"""``logbook watch``: record every result file that appears, once, never half-read.

Events alone lose files: the kernel queue overflows in a burst, nothing
reports files written while the watcher was down, and a writer may close a
file twice.  So events are only hints.  The truth is the directory itself,
compared with the store's ledger of files seen:

- The observer starts first, then every watched directory is scanned
  (catch-up).  A rescan runs again when inotify overflows, every
  ``rescan`` seconds, and when a directory or the observer comes back.  A
  rescan stats each file and skips those the ledger has as they are now.
- One thread (the caller's) owns the store connection, settles files, reads
  them and records them; the observer's thread only queues events.
- A file is read once it has settled (``settle.Settler``) and read again if
  it changes.  Each file's jobs and its ledger row commit together, a batch
  of files in one transaction; one bad file never fails its neighbours.
- ``request_stop()`` (from a signal handler) makes ``run()`` return after
  the file in hand.  Files not yet settled are found by the next start's scan.

Everything it has to say goes to the ``logbook.watch`` logger; the CLI
decides how it looks.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import DEFAULT_MAX_FILE_BYTES, DEFAULT_SETTLE
from ..errors import LogbookError, StoreError
from ..importer import store_files
from ..ingest import DEFAULT_PATTERNS, NEEDS_EXPERIMENT, ReadResult, read_file, walk, wanted
from ..ingest.walk import Excluded, not_a_file, unstattable
from ..progress import Progress
from ..store import Store
from ..store.ledger import FileRead, FileRecord, FileState, shown
from .observer import Event, Observer
from .settle import Settler

if TYPE_CHECKING:
    from ..config import Config
    from ..engine import BackgroundSyncer

log = logging.getLogger("logbook.watch")

#: Seconds between full rescans when ``rescan`` is not given.  Events do the
#: work; the periodic rescan only catches what the kernel or NFS never reported.
DEFAULT_RESCAN = 60.0
#: A file that does not parse is held this long after its last change before it
#: is recorded as invalid (a writer may pause half-way through a file).
INVALID_GRACE = 1.0
#: How often the observer's health and the watched directories are checked.
HEALTH_INTERVAL = 1.0
#: The longest the loop sleeps, so a stop request is never kept waiting.
MAX_WAIT = 0.5
#: At most this many queued events are taken per loop turn, so due files are
#: recorded while a burst is still being drained.
DRAIN_BATCH = 5000
#: At most this many files are committed in one transaction.
RECORD_BATCH = 256

_RESCAN: Event = ("rescan", "", "", True)
_WAKE: Event = ("wake", "", "", False)


class WatchError(LogbookError):
    """The watcher cannot go on: the observer cannot be started (an inotify limit)."""


@dataclass
class WatchOptions:
    dirs: Sequence[str]
    experiment_id: str | None = None
    patterns: Sequence[str] = ()
    polling: bool = False
    settle: float = DEFAULT_SETTLE
    rescan: float | None = None
    max_bytes: int = DEFAULT_MAX_FILE_BYTES


@dataclass
class WatchStats:
    files: int = 0
    created: int = 0
    known: int = 0
    invalid: int = 0
    rescans: int = 0
    overflows: int = 0

    def summary(self) -> str:
        return (
            f"{self.files} files read, {self.created} new entries, {self.known} already known,"
            f" {self.invalid} invalid; {self.rescans} rescans, {self.overflows} overflows"
        )


@dataclass
class _Ready:
    """A settled file, read, waiting for its batch to commit."""

    path: str
    res: ReadResult
    seen: FileRecord | None
    key: tuple[int, int] = field(default=(0, 0))


class Recorder:
    """Reads the files that have settled and records them in batches: one transaction each,
    then one line per file that says what came of it (once per change, not per rescan)."""

    def __init__(
        self,
        settler: Settler,
        options: WatchOptions,
        stop_flag: threading.Event,
        show: Callable[[str], str],
        touch: Callable[[str], None],
    ) -> None:
        self.settler = settler
        self.options = options
        self.stop_flag = stop_flag
        self.show = show
        self.touch = touch
        self.stats = WatchStats()
        self.store: Store | None = None
        self.progress: Progress | None = None
        self.syncer: BackgroundSyncer | None = None

    def check_due(self, budget: float = 0.25) -> None:
        """Read the files whose settle time has come and record them in batches.

        Works for up to ``budget`` seconds so events keep being drained in a
        burst.  A batch is one transaction (one fsync).
        """
        start = time.monotonic()
        batch: list[_Ready] = []
        while not self.stop_flag.is_set() and time.monotonic() - start <= budget:
            path = self.settler.pop_due()
            if path is None:
                break
            try:
                ready = self.check(path)
            except Exception as err:  # noqa: BLE001 - one file never stops the watcher
                log.debug("checking %s failed", path, exc_info=True)
                log.warning("%s: %s: %s", self.show(path), type(err).__name__, err)
                self.settler.forget(path)
                continue
            if ready is not None:
                batch.append(ready)
                if len(batch) >= RECORD_BATCH:
                    self.record(batch)
                    batch = []
        self.record(batch)

    def check(self, path: str) -> _Ready | None:
        """The settle check of one due file: its read result when it is ready to record."""
        assert self.store is not None
        try:
            st = os.stat(path)
        except OSError:
            self.settler.forget(path)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.settler.forget(path)
            return None
        key = (st.st_size, st.st_mtime_ns)
        if not self.settler.ready(path, key):
            return None
        seen = self.store.ledger.seen(path)
        if self._as_read(path, seen, FileState.of(st)):
            self.settler.forget(path)  # already handled, as it is now
            return None
        res = read_file(
            path, experiment_id=self.options.experiment_id, max_bytes=self.options.max_bytes
        )
        if res.sha256 and (res.size, res.mtime_ns) != key:
            self.touch(path)  # it changed while we read it: settle again on what it is now
            return None
        if not res.ok and not self.stop_flag.is_set() and self.settler.hold_invalid(path, key):
            return None  # maybe a writer paused half-way: give it the grace period
        return _Ready(path, res, seen, key)

    def _reason(self, r: _Ready) -> str | None:
        """Why the file is invalid; one that was recorded before and is invalid now only for
        want of --experiment says so (a watcher restarted without it)."""
        reason = "; ".join(r.res.errors) or None
        if reason and NEEDS_EXPERIMENT in reason and r.seen is not None:
            if r.seen.outcome == "recorded" and not self.options.experiment_id:
                reason += (
                    "; it was recorded before, by a run given --experiment (its entries are"
                    " kept): this watcher has none"
                )
        return reason

    def _as_read(self, path: str, seen: FileRecord | None, state: FileState) -> bool:
        """The file is as the ledger has it, so it is not read again; except an invalid one
        that only lacked an experiment id, when this watcher has one to give it now."""
        assert self.store is not None
        if not self.store.ledger.unchanged(path, seen, state):
            return False
        assert seen is not None
        lacked = seen.outcome == "invalid" and NEEDS_EXPERIMENT in (seen.reason or "")
        return not (lacked and self.options.experiment_id)

    def record(self, batch: list[_Ready]) -> None:
        """Commit a batch of read files (one transaction), then say what came of each."""
        assert self.store is not None
        if not batch:
            return
        items = [
            FileRead(
                r.path,
                FileState(r.res.size, r.res.mtime_ns, r.res.ino, r.res.ctime_ns),
                r.res.sha256,
                jobs=r.res.jobs,
                reason=self._reason(r),
                read_ns=r.res.read_ns,
            )  # fmt: skip
            for r in batch
        ]
        try:
            counts = self.store.ledger.record(items)
        except StoreError as err:
            # The store is busy or full: keep the files and try again shortly.
            log.warning("cannot record %d files now: %s; will retry", len(batch), err)
            for r in batch:
                self.settler.touch(r.path, r.key)
            return
        any_created = False
        for r, item, (created, known) in zip(batch, items, counts, strict=True):
            self.settler.done(r.path, r.key)
            self.stats.files += 1
            self.stats.created += created
            self.stats.known += known
            any_created = any_created or bool(created)
            reason = item.reason if isinstance(item.reason, str) else None
            outcome = "invalid" if reason else "recorded"
            # Say it once per change: a file read again as it was is not news.
            news = r.seen is None or r.seen.sha256 != r.res.sha256 or r.seen.outcome != outcome
            if reason:
                self.stats.invalid += 1
                if news:
                    extra = f" ({created} new recorded)" if created else ""
                    log.warning("invalid %s: %s%s", self.show(r.path), reason, extra)
            elif news:
                tail = f", {known} already known" if known else ""
                log.info("recorded %s: %d new%s", self.show(r.path), created, tail)
        if self.progress is not None:
            self.progress.done += len(batch)
        if any_created and self.syncer is not None:
            self.syncer.kick()


class Watcher:
    """The loop: owns the store connection, the settler and the observer."""

    def __init__(
        self,
        cfg: Config,
        options: WatchOptions,
        *,
        syncer: BackgroundSyncer | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.opt = options
        self.syncer = syncer
        self.progress = progress
        # Real paths: inotify watches a symlink itself (no events), not what it points to.
        self.roots = [os.path.realpath(d) for d in options.dirs]
        self.patterns = tuple(options.patterns) or DEFAULT_PATTERNS
        self.settler = Settler(options.settle, max(INVALID_GRACE, 3 * options.settle))
        self.rescan_every = options.rescan if options.rescan is not None else DEFAULT_RESCAN
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.stop_flag = threading.Event()
        self.overflowed = threading.Event()
        self.pending_scans: list[str] = []
        self.missing: set[str] = set()
        self.recorder = Recorder(
            self.settler, options, self.stop_flag, self.show, lambda path: self.touch(path)
        )
        self.recorder.progress, self.recorder.syncer = progress, syncer
        self.stats = self.recorder.stats
        self.exclude = store_files(str(cfg.db))
        self.excluded = Excluded(self.exclude)
        self.observer = Observer(
            self.roots, self.events, polling=options.polling, on_overflow=self.request_rescan
        )
        self.store: Store | None = None
        self.cwd = os.getcwd()
        self.reported: set[str] = set()  # what is not a file, said once per run
        #: Called on every turn of the loop (and per file of a scan): systemd's watchdog and
        #: /healthz follow it (``monitor.Monitor.heartbeat``).
        self.heartbeat: Callable[[], None] = _nothing
        #: Called once the observer runs, before the catch-up scan (READY=1 for systemd).
        self.on_watching: Callable[[], None] = _nothing

    def show(self, path: str) -> str:
        """A path as the user would type it (relative below the cwd), printable whatever its
        bytes.
        """
        rel = os.path.relpath(path, self.cwd)
        return shown(path if rel.startswith("..") else rel)

    # --- signals from other threads: only flag and wake ------------------------------------

    def request_rescan(self) -> None:
        """On watchdog's thread, when the kernel's event queue overflowed."""
        self.overflowed.set()
        self.events.put(_RESCAN)

    def request_stop(self) -> None:
        self.stop_flag.set()
        self.events.put(_WAKE)

    # --- candidates ------------------------------------------------------------------------

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return root
        return None

    def relevant_dir(self, path: str) -> bool:
        """A watched directory or one below it that is not hidden (as the walker goes)."""
        root = self._root_of(path)
        if root is None:
            return False
        rel = os.path.relpath(path, root)
        return rel == "." or not any(p.startswith(".") for p in rel.split(os.sep))

    def relevant(self, path: str) -> bool:
        """A result file under a watched directory: not hidden, not temporary, not the store's."""
        return (
            wanted(os.path.basename(path), self.patterns)
            and not self.excluded(path)
            and self.relevant_dir(os.path.dirname(path))
        )

    def touch(self, path: str, st: os.stat_result | None = None) -> None:
        if st is None:
            try:
                st = os.stat(path)
            except OSError as err:
                self.settler.forget(path)
                why = unstattable(path, err)
                if why:
                    self.skipped(path, why)
                return
        if not stat.S_ISREG(st.st_mode):
            self.settler.forget(path)
            self.skipped(path, not_a_file(st))
            return
        self.settler.touch(path, (st.st_size, st.st_mtime_ns))

    def skipped(self, path: str, why: str) -> None:
        """A result file's name that is no file to read (a FIFO, a socket, a link to a device
        or to nowhere): said once, never opened, never waited on."""
        if path not in self.reported:
            self.reported.add(path)
            log.warning("skipped %s: %s", self.show(path), why)

    def handle_event(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        if kind in ("rescan", "wake"):
            return  # the loop reads the flags
        if is_dir:
            if kind in ("created", "moved"):
                target = dest if kind == "moved" else src
                if target and target not in self.roots and self.relevant_dir(target):
                    self.pending_scans.append(target)
            if kind in ("deleted", "moved") and src in self.roots:
                self.check_roots()
            return
        if kind in ("moved", "deleted"):
            self.settler.forget(src)
            if kind == "moved" and dest and self.relevant(dest):
                self.touch(dest)
            return
        if self.relevant(src):
            self.touch(src)

    # --- scanning --------------------------------------------------------------------------

    def scan(self, top: str) -> int:
        """Walk ``top``; make a candidate of each result file the ledger lacks or that changed."""
        assert self.store is not None
        found = 0
        for path, st in walk(
            top, self.patterns, exclude=self.exclude, sort=False, skipped=self.skipped
        ):
            self.heartbeat()  # a long scan is the loop at work, not a hung loop
            if self.recorder._as_read(path, self.store.ledger.seen(path), FileState.of(st)):
                continue
            found += 1
            self.touch(path, st)
        return found

    def rescan_all(self) -> None:
        self.stats.rescans += 1
        log.debug("rescan %d of the watched directories", self.stats.rescans)
        assert self.store is not None
        self.store.ledger.forget_missing([r for r in self.roots if r not in self.missing])
        for root in self.roots:
            if root not in self.missing:
                self.scan(root)

    # --- health ---------------------------------------------------------------------------

    def check_roots(self) -> bool:
        """Notice watched directories that went away or came back; True if one came back."""
        came_back = False
        for root in self.roots:
            present = os.path.isdir(root)
            if not present and root not in self.missing:
                self.missing.add(root)
                log.warning(
                    "watched directory %s has disappeared; waiting for it to come back", root
                )
                for path in [p for p in self.settler.candidates if self._root_of(p) == root]:
                    self.settler.forget(path)
            elif present and root in self.missing:
                self.missing.discard(root)
                log.warning("watched directory %s is back; watching it again", root)
                came_back = True
        return came_back

    def supervise(self) -> None:
        """Restart the observer if its thread died or a directory came back, then rescan."""
        came_back = self.check_roots()
        alive = self.observer.alive()
        if alive and not came_back:
            return
        if not alive:
            log.warning("the file system observer stopped; restarting it")
        self._start_observer()
        self.rescan_all()

    def _start_observer(self) -> None:
        try:
            self.observer.start()
        except OSError as err:
            hint = ""
            if err.errno in (28, 24):  # ENOSPC, EMFILE: inotify limits
                hint = (
                    " (inotify limit reached: raise fs.inotify.max_user_watches /"
                    " max_user_instances, or use --polling)"
                )
            raise WatchError(
                f"cannot watch {', '.join(self.roots)}: {err.strerror or err}{hint}"
            ) from None

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> WatchStats:
        """Watch until ``request_stop()``; raises ``WatchError`` if the observer cannot run."""
        self.store = self.recorder.store = Store(self.cfg.db)
        try:
            self._run()
        finally:
            self.observer.stop()
            self.store.close()
        return self.stats

    def _run(self) -> None:
        self._start_observer()
        mode = "polling" if self.opt.polling else "inotify"
        log.info(
            "watching %s (%s; settle %g s; rescan every %g s%s)",
            ", ".join(self.show(r) for r in self.roots), mode, self.settler.settle,
            self.rescan_every, "; sync on" if self.syncer else "",
        )  # fmt: skip
        if self.syncer is not None:
            self.syncer.start()
        self.on_watching()
        self._catch_up()
        next_rescan = time.monotonic() + self.rescan_every
        next_health = time.monotonic() + HEALTH_INTERVAL
        while not self.stop_flag.is_set():
            self.heartbeat()
            now = time.monotonic()
            wait = min(MAX_WAIT, next_health - now, next_rescan - now)
            due = self.settler.next_due()
            if due is not None:
                wait = min(wait, due - now)
            self._drain(max(0.0, wait))
            if self.stop_flag.is_set():
                break
            if self.overflowed.is_set():
                self.overflowed.clear()
                self.stats.overflows += 1
                log.warning(
                    "the kernel's event queue overflowed; rescanning the watched directories"
                )
                self._drain(0.0, limit=None)
                self.rescan_all()
                next_rescan = time.monotonic() + self.rescan_every
            elif time.monotonic() >= next_rescan:
                self.rescan_all()
                next_rescan = time.monotonic() + self.rescan_every
            while self.pending_scans:
                self.scan(self.pending_scans.pop())
            if time.monotonic() >= next_health:
                self.supervise()
                next_health = time.monotonic() + HEALTH_INTERVAL
            self.recorder.check_due()

    def _catch_up(self) -> None:
        """The start-up scan (the observer is already running), with progress for a big backlog."""
        self.rescan_all()
        if self.progress is not None:
            scanned = self.settler.clock()
            self.progress.begin("catching up", len(self.settler))
            # Until the files found are read; one still being written (a log appended for
            # ever) is a live file from then on, left to the loop: it never holds up the rest.
            while self.settler.backlog(scanned) and not self.stop_flag.is_set():
                self.heartbeat()
                self._drain(0.0)
                self.recorder.check_due(budget=1.0)
                due = self.settler.next_due()
                if due is not None and due > time.monotonic():
                    self._drain(min(MAX_WAIT, due - time.monotonic()))
            self.progress.end()

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


def _nothing() -> None:
    """The default hook: no watchdog, nobody to tell."""


def check_dirs(roots: Sequence[str]) -> None:
    """Raise ``BadInput`` for a watched directory that does not exist or cannot be read."""
    from ..errors import BadInput

    for root in roots:
        if not os.path.exists(root):
            raise BadInput(f"no such directory: {shown(root)}")
        if not os.path.isdir(root):
            raise BadInput(f"not a directory: {shown(root)}")
        if not os.access(root, os.R_OK | os.X_OK):
            raise BadInput(f"cannot read directory: {shown(root)} (permission denied)")
