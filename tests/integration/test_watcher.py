"""The watcher driven in-process: real directories and observers, the loop on a thread.

Each test runs ``Watcher.run()`` on a thread, writes files as lab code does,
waits (``wait_until``, a generous deadline) on what the store and the ledger
say, and stops the loop with ``request_stop()``.  What the watcher has to
say is read from the ``logbook.watch`` logger (caplog).  The store is read
through its own read-only connections (a sqlite3 connection belongs to the
thread that made it; the watcher's is on the watcher's thread).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

import logbook.watch.watcher as watcher_module
from logbook.config import load_config
from logbook.importer import store_files
from logbook.progress import Progress
from logbook.store import Store
from logbook.store.ledger import FileRecord
from logbook.watch import Watcher, WatchOptions

SETTLE = 0.05
HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def job(name: str, experiment: str = "exp-watch", counts: dict[str, int] | None = None) -> str:
    return json.dumps({
        "experiment_id": experiment, "name": name, "device_id": "basic_simulator",
        "results": json.dumps(counts or {"00": 510, "11": 514}), "shots": "[1024]",
        "metrics": {"n": name},
    })  # fmt: skip


def write_via_rename(path: Path | bytes, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    raw = os.fsencode(path)
    tmp = raw + b".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, raw)


# --- reading what the watcher did -----------------------------------------------------------


def store_db() -> Path:
    return load_config().db


@contextmanager
def reading() -> Iterator[Store | None]:
    db = store_db()
    if not db.exists():
        yield None
        return
    with Store(db, readonly=True) as store:
        yield store


SENTINEL = "sentinel"  # the experiment of the files ``Running.quiesce`` writes


def names() -> list[str]:
    """The names of the entries recorded (the test's own sentinels left out)."""
    with reading() as store:
        entries = [] if store is None else store.entries()
        return sorted(e.name or "" for e in entries if e.experiment_id != SENTINEL)


def entry_count() -> int:
    return len(names())


def seen(path: Path | bytes) -> FileRecord | None:
    with reading() as store:
        return None if store is None else store.ledger.seen(os.fsdecode(path))


def outcome(path: Path | bytes) -> str | None:
    rec = seen(path)
    return None if rec is None else rec.outcome


def ledger_paths() -> list[bytes]:
    with reading() as store:
        return (
            []
            if store is None
            else [bytes(r["path_bytes"]) for r in store.read("SELECT path_bytes FROM files")]
        )


class Logs:
    """The watcher's log lines, as the logger got them."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def lines(self, level: int = logging.DEBUG) -> list[str]:
        return [
            r.getMessage() for r in list(self.caplog.records)
            if r.name.startswith("logbook") and r.levelno >= level
        ]  # fmt: skip

    def count(self, text: str, level: int = logging.DEBUG) -> int:
        return sum(text in line for line in self.lines(level))

    def text(self) -> str:
        return "\n".join(self.lines())


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Logs:
    # An in-process CLI run earlier in the session may have set the "logbook" logger up
    # for its own (closed) stderr and stopped propagation: undo that for this test.
    root = logging.getLogger("logbook")
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "propagate", True)
    caplog.set_level(logging.DEBUG, logger="logbook")
    return Logs(caplog)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    return d


class Running:
    """A watcher whose loop runs on a thread."""

    def __init__(self, watcher: Watcher, thread: threading.Thread, progress: Progress) -> None:
        self.watcher = watcher
        self.thread = thread
        self.progress = progress
        self.errors: list[BaseException] = []

    def alive(self) -> bool:
        return self.thread.is_alive()

    def rescan(self, unless: Callable[[], bool] = lambda: False) -> None:
        """Ask for a rescan (as an inotify overflow does) and wait until it ran and settled.

        A sentinel file written after the request is recorded only after the
        rescan's scan (the loop scans before it checks due files); when it is
        in, and nothing is left to settle, the rescan's reads are done.
        """
        w = self.watcher
        before = w.stats.rescans
        w.request_rescan()
        self.quiesce(lambda: w.stats.rescans > before, unless=unless)

    def idle(self) -> bool:
        """No file waiting to settle or being read, and every recorded batch fully logged.

        A file stays a candidate until its batch is committed and it is done;
        ``progress.done`` moves after a batch's log lines, ``stats.files`` before.
        """
        w = self.watcher
        return len(w.settler) == 0 and self.progress.done == w.stats.files

    def quiesce(
        self,
        condition: Callable[[], bool] = lambda: True,
        unless: Callable[[], bool] = lambda: False,
    ) -> None:
        """Wait until every event so far has been handled and no file is waiting to settle.

        ``unless``: stop waiting as soon as it is true (what the test checks went wrong).
        """
        root = Path(self.watcher.roots[0])
        sentinel = root / f"zz-sentinel-{time.monotonic_ns()}.json"
        write_via_rename(sentinel, job(sentinel.name, experiment=SENTINEL))
        wait_until(
            lambda: unless() or (condition() and outcome(sentinel) == "recorded" and self.idle()),
            what="the watcher to catch up",
        )


@pytest.fixture
def watch(results: Path) -> Iterator[Callable[..., Running]]:
    """Start a watcher on a thread: ``watch(dirs=..., **WatchOptions)``; stopped after the test."""
    started: list[Running] = []

    def start(dirs: list[Path] | None = None, **options: Any) -> Running:
        options.setdefault("settle", SETTLE)
        opts = WatchOptions(dirs=[str(d) for d in (dirs or [results])], **options)
        progress = Progress()
        w = Watcher(load_config(), opts, progress=progress)
        run: Running

        def target() -> None:
            try:
                w.run()
            except BaseException as err:  # noqa: BLE001 - reported by the test
                run.errors.append(err)

        thread = threading.Thread(target=target, name="watcher-under-test", daemon=True)
        run = Running(w, thread, progress)
        started.append(run)
        thread.start()
        wait_until(lambda: progress.phase == "done" or not thread.is_alive(), what="the catch-up")
        assert thread.is_alive(), run.errors
        return run

    yield start
    for run in started:
        run.watcher.request_stop()
        run.thread.join(30)
        assert not run.thread.is_alive(), "the watcher did not stop"
        assert not run.errors, run.errors


# --- catch-up and new files -----------------------------------------------------------------


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_catch_up_of_existing_files_then_new_ones(
    watch: Callable[..., Running], results: Path, logs: Logs, polling: bool
) -> None:
    (results / "before.json").write_text(job("before"))
    (results / "sub").mkdir()
    (results / "sub" / "nested.json").write_text(job("nested"))
    (results / "batch.jsonl").write_text(job("line-1") + "\n" + job("line-2") + "\n")
    run = watch(polling=polling)
    wait_until(lambda: entry_count() == 4, what="the files present at start")
    (results / "after.json").write_text(job("after"))
    wait_until(lambda: entry_count() == 5, what="the new file")
    wait_until(run.idle)
    assert names() == ["after", "before", "line-1", "line-2", "nested"]
    assert logs.count("recorded") == 4  # one line per file
    assert logs.count(f"recorded {results}/before.json: 1 new") == 1
    assert logs.count(f"recorded {results}/batch.jsonl: 2 new") == 1
    assert run.alive()


def test_files_already_in_the_ledger_are_not_read_again_at_start(
    watch: Callable[..., Running], results: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        p = results / f"old-{i}.json"
        p.write_text(job(f"old-{i}"))
        os.utime(p, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    first = watch()
    wait_until(lambda: entry_count() == 3)
    first.watcher.request_stop()
    first.thread.join(30)
    reads: list[str] = []
    real_read = watcher_module.read_file
    monkeypatch.setattr(
        watcher_module, "read_file", lambda p, **kw: (reads.append(p), real_read(p, **kw))[1]
    )
    second = watch()
    second.quiesce()
    assert [os.path.basename(p) for p in reads if "sentinel" not in p] == []
    assert entry_count() == 3


# --- bad files next to good ones ------------------------------------------------------------


def test_lone_surrogate_is_invalid_once_and_the_others_are_recorded(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    for i in range(20):
        (results / f"good-{i:02d}.json").write_text(job(f"good-{i:02d}"))
    bad = results / "surrogate.json"
    bad.write_text('{"experiment_id": "exp-watch", "name": "\\ud800 half a pair"}')
    run = watch()
    wait_until(lambda: entry_count() == 20 and outcome(bad) == "invalid", what="20 good, 1 invalid")
    wait_until(run.idle)
    warnings = [ln for ln in logs.lines(logging.WARNING) if "surrogate.json" in ln]
    assert len(warnings) == 1, warnings
    assert "name" in warnings[0] and "surrogate" in warnings[0]
    reason = seen(bad).reason  # type: ignore[union-attr]
    assert reason is not None and "name" in reason
    for _ in range(2):  # a rescan (an overflow, or the periodic one) is not news
        run.rescan()
    assert logs.count("surrogate.json", logging.WARNING) == 1, logs.text()
    assert entry_count() == 20
    with reading() as store:
        assert store is not None and store.ledger.invalid_count() == 1


def test_name_that_is_not_utf8_is_recorded_and_shown_escaped(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    before = os.fsencode(results) + b"/early\xff.json"
    with open(before, "w") as f:
        f.write(job("early"))
    run = watch()
    after = os.fsencode(results) + b"/bad\xff.json"
    write_via_rename(after, job("bad-ff"))
    wait_until(lambda: outcome(after) == "recorded" and outcome(before) == "recorded")
    run.quiesce()
    assert sorted(names()) == ["bad-ff", "early"]
    assert logs.count("recorded " + str(results) + "/bad\\xff.json: 1 new") == 1, logs.text()
    assert logs.count("early\\xff.json") == 1
    assert not any("\udcff" in line for line in logs.lines())  # escaped, never a surrogate
    with reading() as store:
        assert store is not None
        sources = {e.source for e in store.entries()}
    assert f"{results}/bad\\xff.json" in sources
    assert run.alive()
    (results / "later.json").write_text(job("later"))
    wait_until(lambda: "later" in names(), what="a file after the odd name")


# --- the store inside a watched directory ---------------------------------------------------


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real_read = watcher_module.read_file

    def spy(path: str, **kw: Any) -> Any:
        reads.append(path)
        return real_read(path, **kw)

    monkeypatch.setattr(watcher_module, "read_file", spy)
    return reads


def _store_is_never_read(
    watch: Callable[..., Running], watched: Path, logs: Logs, reads: list[str]
) -> None:
    db = str(store_db())
    (watched / "first.txt").write_text(job("first"))
    run = watch(dirs=[watched], patterns=["*"])
    wait_until(lambda: "first" in names())
    for i in range(5):  # every record writes the -wal: each write is an event in the watched dir
        (watched / f"more-{i}.txt").write_text(job(f"more-{i}"))
    own = {os.path.realpath(p) for p in store_files(db)}

    def read_own() -> list[str]:
        return [p for p in reads if os.path.realpath(p) in own]

    wait_until(lambda: entry_count() == 6 or read_own())
    run.rescan(unless=read_own)
    run.rescan(unless=read_own)
    assert os.path.exists(db + "-wal")
    assert read_own() == []
    assert not any(os.path.realpath(os.fsdecode(p)) in own for p in ledger_paths())
    assert "logbook.db" not in logs.text()


def test_the_stores_own_files_are_never_read(
    watch: Callable[..., Running], results: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGBOOK_HOME", str(results / "home"))
    _store_is_never_read(watch, results, logs, _spy_reads(monkeypatch))


@pytest.mark.parametrize("via", ["watched-dir", "logbook-home"])
def test_the_stores_own_files_are_never_read_through_a_symlink(
    watch: Callable[..., Running], tmp_path: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch,
    via: str,
) -> None:  # fmt: skip
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    home = (link if via == "logbook-home" else real) / "home"
    monkeypatch.setenv("LOGBOOK_HOME", str(home))
    Store(store_db()).close()
    _store_is_never_read(
        watch, link if via == "watched-dir" else real, logs, _spy_reads(monkeypatch)
    )


# --- what is not a regular file -------------------------------------------------------------


def _specials(d: Path, tag: str) -> dict[str, Path]:
    """A FIFO, a socket, a symlink to /dev/zero, a symlink loop and a dangling link."""
    made = {
        "fifo": d / f"{tag}-fifo.json", "socket": d / f"{tag}-socket.json",
        "zero": d / f"{tag}-zero.json", "loop": d / f"{tag}-loop-a.json",
        "dangling": d / f"{tag}-dangling.json",
    }  # fmt: skip
    os.mkfifo(made["fifo"])
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(made["socket"]))
    made["zero"].symlink_to("/dev/zero")
    (d / f"{tag}-loop-b.json").symlink_to(made["loop"])
    made["loop"].symlink_to(d / f"{tag}-loop-b.json")
    made["dangling"].symlink_to(d / "nowhere.json")
    return made


def test_fifos_sockets_devices_and_loops_never_block_the_watcher(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    early = _specials(results, "early")
    (results / "good-early.json").write_text(job("good-early"))
    run = watch()
    late = _specials(results, "late")  # seen by events, not by the start-up scan
    (results / "good-late.json").write_text(job("good-late"))
    wait_until(lambda: {"good-early", "good-late"} <= set(names()), what="the regular files")
    run.rescan()
    run.rescan()
    assert run.alive()
    for path in [*early.values(), *late.values()]:
        assert outcome(path) != "recorded", path
        # Each is reported once, however often it is seen (never opened, never waited on).
        assert logs.count(path.name, logging.WARNING) == 1, logs.text()
    assert not any("Traceback" in line for line in logs.lines())
    (results / "after.json").write_text(job("after"))
    wait_until(lambda: "after" in names(), what="a file after the odd ones")


def test_a_file_appended_forever_never_holds_up_the_others(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    """A log-like file that keeps growing is waited on, alone: the others are recorded
    meanwhile, and it is recorded whole, once, when its writer stops."""
    growing = results / "growing.jsonl"
    stop = threading.Event()
    lines = 0

    def append() -> None:
        nonlocal lines
        with growing.open("a") as f:
            while not stop.is_set():
                f.write(job(f"line-{lines}").replace("\n", " ") + "\n")
                f.flush()
                lines += 1
                stop.wait(SETTLE / 10)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        run = watch()
        for i in range(3):
            (results / f"other-{i}.json").write_text(job(f"other-{i}"))
            wait_until(lambda i=i: f"other-{i}" in names(), what=f"other-{i} beside it")  # type: ignore[misc]
        assert outcome(growing) is None  # never read half-written
        assert not any(n.startswith("line-") for n in names())
        assert run.alive()
    finally:
        stop.set()
        writer.join(10)
    wait_until(lambda: outcome(growing) == "recorded", what="the file once it stopped growing")
    recorded = [n for n in names() if n.startswith("line-")]
    assert len(recorded) == lines and len(set(recorded)) == lines
    assert not any("Traceback" in line for line in logs.lines())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_unreadable_file_is_invalid_once_then_recorded_when_made_readable(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    locked = results / "locked.json"
    locked.write_text(job("locked"))
    locked.chmod(0)
    run = watch()
    wait_until(lambda: outcome(locked) == "invalid", what="the unreadable file reported")
    run.rescan()
    assert logs.count("locked.json", logging.WARNING) == 1, logs.text()
    assert "permission denied" in seen(locked).reason  # type: ignore[union-attr, operator]
    locked.chmod(0o644)  # only the ctime changes: size and mtime are as recorded
    run.rescan()
    wait_until(lambda: outcome(locked) == "recorded", what="the readable file recorded")
    assert names().count("locked") == 1


def test_fixed_file_with_the_same_size_and_mtime_is_read_again(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    """A fix that keeps size and mtime (``touch -r``) still changes the ctime: read it again."""
    path = results / "fixed.json"
    bad = '{"experiment_id": "exp-watch", "name": "fixed", "status": "Nope"}'
    good = '{"experiment_id": "exp-watch", "name": "fixed", "status": "Done"}'
    assert len(bad) == len(good)
    path.write_text(bad)
    os.utime(path, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    run = watch()
    wait_until(lambda: outcome(path) == "invalid", what="the bad version reported")
    before = os.stat(path)
    with open(path, "r+") as f:  # in place: same inode, same size
        f.write(good)
    os.utime(path, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino,
    )  # fmt: skip
    run.rescan()
    wait_until(lambda: outcome(path) == "recorded", what="the fixed version recorded")
    wait_until(run.idle)
    assert names().count("fixed") == 1
    assert logs.count("invalid") == 1 and logs.count("recorded " + str(path)) == 1


def test_replaced_by_other_content_of_the_same_size_and_mtime_is_read_again(
    watch: Callable[..., Running], results: Path
) -> None:
    path = results / "replaced.json"
    first = job("first", counts={"00": 1})
    second = job("other", counts={"11": 1})
    assert len(first) == len(second)
    path.write_text(first)
    os.utime(path, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    run = watch()
    wait_until(lambda: names() == ["first"])
    tmp = results / "replaced.json.tmp"
    tmp.write_text(second)
    os.utime(tmp, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    os.replace(tmp, path)  # a new inode with the old size and mtime
    run.rescan()
    wait_until(lambda: names() == ["first", "other"], what="the replacement read")


def test_an_invalid_file_that_is_deleted_is_no_longer_counted(
    watch: Callable[..., Running], results: Path
) -> None:
    run = watch()
    bad = results / "scratch.json"
    bad.write_text("not json")
    wait_until(lambda: outcome(bad) == "invalid")
    bad.unlink()
    run.rescan()
    with reading() as store:
        assert store is not None and store.ledger.invalid_count() == 0


# --- writers that pause, and files that change ----------------------------------------------


def test_file_written_in_two_halves_is_recorded_once_with_the_final_content(
    watch: Callable[..., Running], results: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = watch(settle=0.1)
    held: list[str] = []
    real_hold = run.watcher.settler.hold_invalid

    def spy(path: str, key: tuple[int, int]) -> bool:
        out = real_hold(path, key)
        if out:
            held.append(path)
        return out

    monkeypatch.setattr(run.watcher.settler, "hold_invalid", spy)
    text = job("halves", counts={"01": 7})
    path = results / "halves.json"
    with path.open("w") as f:  # first close: half a file
        f.write(text[: len(text) // 2])
    # The half file settled and was read: it does not parse, so it is held, not reported.
    wait_until(lambda: str(path) in held, what="the half file to be held")
    with path.open("a") as f:  # second close: the rest
        f.write(text[len(text) // 2 :])
    wait_until(lambda: outcome(path) == "recorded", what="the whole file")
    run.quiesce()
    run.rescan()
    assert names() == ["halves"]
    with reading() as store:
        assert store is not None
        [entry] = store.entries(experiment_id="exp-watch")
        assert store.ledger.invalid_count() == 0
    assert json.loads(entry.results or "") == {"01": 7}
    assert logs.count("invalid") == 0, logs.text()
    assert logs.count("recorded " + str(path)) == 1


def test_same_job_in_two_files_is_one_entry_and_a_rewrite_is_noticed(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    watch()
    (results / "a.json").write_text(job("same"))
    wait_until(lambda: entry_count() == 1)
    (results / "copy-of-a.json").write_text(job("same"))
    wait_until(lambda: logs.count("copy-of-a.json: 0 new, 1 already known") == 1)
    assert entry_count() == 1
    (results / "a.json").write_text(job("changed", counts={"10": 3}))
    wait_until(lambda: entry_count() == 2, what="the changed file")
    assert names() == ["changed", "same"]


# --- supervision ----------------------------------------------------------------------------


def test_dead_observer_is_restarted_and_nothing_is_missed(
    watch: Callable[..., Running], results: Path, logs: Logs
) -> None:
    run = watch()
    run.quiesce()
    run.watcher.observer.stop()  # the observer's thread dies
    (results / "while-dead.json").write_text(job("while-dead"))
    wait_until(lambda: logs.count("restarting") == 1, what="the restart warning")
    wait_until(lambda: "while-dead" in names(), what="the file written while it was dead")
    (results / "after-restart.json").write_text(job("after-restart"))
    wait_until(lambda: "after-restart" in names(), what="a file seen by the new observer")
    assert run.watcher.observer.alive()


def test_stop_returns_the_stats(watch: Callable[..., Running], results: Path) -> None:
    (results / "one.json").write_text(job("one"))
    run = watch()
    wait_until(lambda: entry_count() == 1)
    run.watcher.request_stop()
    run.thread.join(30)
    assert not run.alive()
    s = run.watcher.stats
    assert (s.created, s.invalid) == (1, 0) and s.files >= 1
    assert "1 new entries" in s.summary()


def test_the_special_files_are_what_they_claim(tmp_path: Path) -> None:
    """The helper above really makes what it says (guards the test, not the library)."""
    made = _specials(tmp_path, "t")
    assert stat.S_ISFIFO(os.stat(made["fifo"]).st_mode)
    assert stat.S_ISSOCK(os.lstat(made["socket"]).st_mode)
    assert stat.S_ISCHR(os.stat(made["zero"]).st_mode)
    with pytest.raises(OSError):
        os.stat(made["loop"])
