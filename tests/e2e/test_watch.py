"""``logbook watch`` as a real process on real directories, with real observers.

Each test starts the watcher with its own ``LOGBOOK_HOME``, writes files the
way lab code does, waits (``wait_until``, never a fixed sleep) for what a user
would check (the store, the ledger, the watcher's log lines on stderr), and
stops the process by its PID.  The loop's finer points (settling, odd files,
a dead observer) are driven in-process in ``tests/unit/test_watcher.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    CLI_TIMEOUT,
    assert_no_key,
    assert_no_traceback,
    base_env,
    cli,
    cli_cmd,
    wait_until,
)

from logbook.emulator.testing import EmulatorProcess

SETTLE = "0.1"

OBSERVERS = [
    pytest.param([], id="inotify"),
    pytest.param(["--polling"], id="polling"),
]


def job(name: str, experiment: str = "exp-watch", counts: dict[str, int] | None = None) -> str:
    """A job document as lab code would write it."""
    return json.dumps({
        "experiment_id": experiment, "name": name, "device_id": "basic_simulator",
        "results": json.dumps(counts or {"00": 510, "11": 514}), "shots": "[1024]",
        "status": "Done", "job_type": "User local job", "metrics": {"n": name},
    })  # fmt: skip


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_via_rename(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def age(path: Path, seconds: float = 3600.0) -> None:
    """Make ``path`` look written ``seconds`` ago (then a rescan trusts its ledger row)."""
    st = path.stat()
    ns = st.st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(ns, ns))


class Watch:
    """One ``logbook watch`` process; its stderr goes to a file the test reads while it runs."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.err_path = tmp / "watch-0.err"
        self.env: dict[str, str] = {}

    def start(self, *args: str, ready: bool = True, global_args: tuple[str, ...] = ()) -> Watch:
        self.runs += 1
        self.err_path = self.tmp / f"watch-{self.runs}.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cli_cmd(*global_args, "watch", *args), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, env=base_env(self.home, self.env),
                cwd=self.tmp,
            )  # fmt: skip
        if ready:
            wait_until(lambda: "watching" in self.stderr() or not self.running(),
                       what="the watcher to start")  # fmt: skip
            assert self.running(), self.stderr()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self, text: str) -> list[str]:
        return [ln for ln in self.stderr().splitlines() if text in ln]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the process and wait for it; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=CLI_TIMEOUT)

    def stopped_line(self) -> str:
        [line] = self.lines("stopped: ")
        return line

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture
def home(logbook_home: Path) -> Path:
    return logbook_home


@pytest.fixture
def results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    return d


@pytest.fixture
def watcher(home: Path, tmp_path: Path) -> Iterator[Watch]:
    w = Watch(home, tmp_path)
    try:
        yield w
    finally:
        w.kill()


def logbook(home: Path, *args: str) -> Any:
    run = cli(home, *args)
    assert run.code == 0, run.err
    return run.json()


def db_count(home: Path, sql: str = "SELECT count(*) FROM entries") -> int:
    """Read the store read-only (cheap enough to poll); 0 before it exists."""
    db = home / "logbook.db"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0  # schema not created yet


def entries(home: Path) -> int:
    return db_count(home)


def files_recorded(home: Path) -> int:
    return db_count(home, "SELECT count(*) FROM files")


def ledger_paths(home: Path) -> list[str]:
    db = home / "logbook.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return sorted(
            os.path.basename(os.fsdecode(bytes(r[0])))
            for r in conn.execute("SELECT path_bytes FROM files")
        )
    finally:
        conn.close()


def names(home: Path) -> list[str]:
    return sorted(e["name"] for e in logbook(home, "list", "--json", "--limit", "0"))


def stats(line: str) -> dict[str, int]:
    """The numbers of the watcher's "stopped: ..." line."""
    found = re.findall(
        r"(\d+) (files read|new entries|already known|invalid|rescans|overflows)", line
    )
    return {what: int(n) for n, what in found}


# --- basic behaviour, with both observers ---------------------------------------------------


@pytest.mark.parametrize("observer", OBSERVERS)
def test_catch_up_then_new_files(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    write(results / "before.json", job("before"))
    (results / "sub").mkdir()
    write(results / "sub" / "nested.json", job("nested"))
    watcher.start(str(results), "--settle", SETTLE, *observer)
    wait_until(lambda: entries(home) == 2, what="the files present at start")
    write(results / "after.json", job("after"))
    wait_until(lambda: entries(home) == 3, what="the new file")
    assert names(home) == ["after", "before", "nested"]
    wait_until(lambda: watcher.lines("recorded results/after.json: 1 new"), what="the log line")
    assert len(watcher.lines("recorded results/before.json: 1 new")) == 1
    assert len(watcher.lines("recorded results/sub/nested.json: 1 new")) == 1
    line = watcher.lines("recorded results/before.json")[0]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z logbook: recorded ", line), line


@pytest.mark.parametrize("observer", OBSERVERS)
def test_temp_then_rename_recorded_once_and_scratch_names_ignored(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    watcher.start(str(results), "--settle", SETTLE, *observer)
    for name in ("scratch.tmp", "upload.json.part", ".hidden.json", "backup.json~", "notes.txt"):
        write(results / name, job(name))
    (results / ".cache").mkdir()
    write(results / ".cache" / "inside-hidden-dir.json", job("hidden-dir"))
    write_via_rename(results / "final.json", job("final"))
    wait_until(lambda: entries(home) == 1, what="the renamed file")
    # A file written after every scratch file: once it is in, they were all seen and passed over.
    write_via_rename(results / "zz-last.json", job("zz-last"))
    wait_until(lambda: entries(home) == 2, what="the last file")
    assert watcher.stop() == 0
    assert names(home) == ["final", "zz-last"]
    assert ledger_paths(home) == ["final.json", "zz-last.json"]
    assert logbook(home, "status", "--json")["invalid_files"] == 0
    assert len(watcher.lines("recorded results/final.json")) == 1
    assert stats(watcher.stopped_line())["new entries"] == 2


@pytest.mark.parametrize("observer", OBSERVERS)
def test_invalid_file_then_valid_file(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    watcher.start(str(results), "--settle", SETTLE, *observer)
    write(results / "broken.json", '{"experiment_id": "x", "results": ')
    write(results / "good.json", job("good"))
    wait_until(lambda: entries(home) == 1, what="the valid file")
    wait_until(
        lambda: logbook(home, "status", "--json")["invalid_files"] == 1,
        what="the invalid file in status",
    )
    wait_until(lambda: watcher.lines("invalid results/broken.json: not JSON"), what="the warning")
    assert len(watcher.lines("warning: invalid results/broken.json: not JSON")) == 1
    assert watcher.running()
    write(results / "later.json", job("later"))
    wait_until(lambda: entries(home) == 2, what="a file after the invalid one")
    assert len(watcher.lines("results/broken.json")) == 1  # said once


@pytest.mark.parametrize("observer", OBSERVERS)
def test_names_that_are_not_utf8_never_stop_the_watcher(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    """The probe's repro: ``bad\\xff.json`` made ``watch`` exit 1 at start-up and at a rescan."""
    raw = os.fsencode(results)
    with open(raw + b"/early\xff.json", "w") as fh:  # there before the start
        fh.write(job("early"))
    watcher.start(
        str(results), "--settle", SETTLE, "--rescan", "1", *observer, global_args=("-vv",)
    )
    with open(raw + b"/bad\xff.json", "w") as fh:  # arrives while it runs
        fh.write(job("bad-ff"))
    write(results / "good.json", job("good"))
    wait_until(lambda: entries(home) == 3, what="all three files")
    assert sorted(names(home)) == ["bad-ff", "early", "good"]
    rescans = len(watcher.lines("rescan "))
    wait_until(lambda: len(watcher.lines("rescan ")) >= rescans + 2, what="two more rescans")
    write(results / "later.json", job("later"))
    wait_until(lambda: entries(home) == 4, what="a file after the odd names")
    assert watcher.running(), watcher.stderr()
    assert len(watcher.lines("recorded results/bad\\xff.json: 1 new")) == 1  # once, escaped
    assert "\udcff" not in watcher.stderr() and "Traceback" not in watcher.stderr()
    assert watcher.stop() == 0


# --- restart, and a directory that goes away ------------------------------------------------


def test_restart_records_nothing_twice(watcher: Watch, home: Path, results: Path) -> None:
    for i in range(3):
        write(results / f"r{i}.json", job(f"r{i}"))
    write(results / "bad.json", "not json at all")
    for p in results.iterdir():
        age(p)
    watcher.start(str(results), "--settle", SETTLE)
    wait_until(lambda: entries(home) == 3 and files_recorded(home) == 4)
    assert watcher.stop() == 0
    assert stats(watcher.stopped_line())["files read"] == 4
    write(results / "while-down.json", job("while-down"))
    watcher.start(str(results), "--settle", SETTLE)
    wait_until(lambda: entries(home) == 4, what="the file written while down")
    assert watcher.stop() == 0
    assert entries(home) == 4
    log = watcher.stderr()
    assert len(watcher.lines("while-down.json: 1 new")) == 1
    assert "r0.json" not in log and "bad.json" not in log  # invalid reported once, not per run
    # Only the new file was read: the others are in the ledger as they are on disk.
    s = stats(watcher.stopped_line())
    assert (s["files read"], s["new entries"], s["already known"], s["invalid"]) == (1, 1, 0, 0)
    assert logbook(home, "status", "--json")["invalid_files"] == 1


def test_restart_with_fresh_files_reports_nothing_again(
    watcher: Watch, home: Path, results: Path
) -> None:
    """Files written just before: racily clean, so their bytes are hashed again, not read."""
    for i in range(3):
        write(results / f"r{i}.json", job(f"r{i}"))
    write(results / "bad.json", "not json at all")
    watcher.start(str(results), "--settle", SETTLE)
    wait_until(lambda: entries(home) == 3 and files_recorded(home) == 4)
    assert watcher.stop() == 0
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "while-up.json", job("while-up"))
    wait_until(lambda: entries(home) == 4)
    assert watcher.stop() == 0
    log = watcher.stderr()
    assert "r0.json" not in log and "bad.json" not in log, log
    assert entries(home) == 4 and files_recorded(home) == 5
    assert stats(watcher.stopped_line())["files read"] == 1  # the new one alone


def test_a_recorded_file_is_never_read_again_whatever_the_options(
    watcher: Watch, home: Path, results: Path
) -> None:
    """Recorded by a watcher given -e, right after they were written (racily clean); a
    restart without -e reads none of them (it marked them all invalid), and a file that
    changes after that is invalid only for want of -e, and says so."""
    watcher.start(str(results), "-e", "bell", "--settle", SETTLE)
    docs = [json.dumps({"name": f"n{i}", "results": "{}"}) for i in range(3)]  # no experiment
    for i, doc in enumerate(docs):
        write(results / f"r{i}.json", doc)
    wait_until(lambda: entries(home) == 3 and files_recorded(home) == 3)
    assert watcher.stop() == 0
    watcher.start(str(results), "--settle", SETTLE)  # no -e now
    write(results / "marker.json", job("marker"))
    wait_until(lambda: entries(home) == 4, what="the marker file")
    assert watcher.stop() == 0
    assert "r0.json" not in watcher.stderr(), watcher.stderr()
    assert stats(watcher.stopped_line())["files read"] == 1  # the marker alone
    assert logbook(home, "status", "--json")["invalid_files"] == 0
    # Changed since (a rewrite), and read by a watcher without -e: invalid because of that.
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "r1.json", docs[1] + "\n")
    wait_until(lambda: watcher.lines("invalid results/r1.json"), what="r1.json read again")
    assert watcher.stop() == 0
    [line] = watcher.lines("invalid results/r1.json")
    assert "(give --experiment); it was recorded before, by a run given --experiment" in line
    assert entries(home) == 4  # its entry is kept
    # Given -e again, the file that lacked only that is read and recorded.
    watcher.start(str(results), "-e", "bell", "--settle", SETTLE)
    wait_until(lambda: watcher.lines("recorded results/r1.json"), what="r1.json recorded with -e")
    assert watcher.stop() == 0
    assert logbook(home, "status", "--json")["invalid_files"] == 0


def test_files_imported_through_a_symlink_are_not_read_again_by_a_watcher(
    watcher: Watch, home: Path, results: Path, tmp_path: Path
) -> None:
    """One ledger key per file, whichever way it was reached: the directory's real path."""
    for i in range(3):
        write(results / f"r{i}.json", job(f"r{i}"))
    link = tmp_path / "link"
    link.symlink_to(results)
    assert cli(home, "import", str(link)).code == 0
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "marker.json", job("marker"))
    wait_until(lambda: entries(home) == 4, what="the marker file")
    assert watcher.stop() == 0
    assert stats(watcher.stopped_line())["files read"] == 1, watcher.stderr()
    assert files_recorded(home) == 4


def test_the_restart_after_a_sync_run_reads_nothing_again(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    watcher.env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    for i in range(8):
        write(results / f"s{i}.json", job(f"s{i}"))
    wait_until(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 8)
    assert watcher.stop() == 0
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    write(results / "marker.json", job("marker"))
    wait_until(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 9)
    assert watcher.stop() == 0
    s = stats(watcher.stopped_line())
    assert (s["files read"], s["already known"]) == (1, 0), watcher.stopped_line()
    assert emulator.stats()["duplicates"] == 0


def test_directory_that_disappears_and_returns(watcher: Watch, home: Path, results: Path) -> None:
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "one.json", job("one"))
    wait_until(lambda: entries(home) == 1)
    for p in results.iterdir():
        p.unlink()
    results.rmdir()
    wait_until(lambda: "has disappeared" in watcher.stderr(), what="the disappearance warning")
    results.mkdir()
    write(results / "two.json", job("two"))
    wait_until(lambda: entries(home) == 2, what="a file in the returned directory")
    assert "is back" in watcher.stderr()
    write(results / "three.json", job("three"))
    wait_until(lambda: entries(home) == 3, what="a new file after the return")
    assert watcher.running()


# --- the process: start, stop, errors -------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_0_and_one_stopped_line(
    watcher: Watch, home: Path, results: Path, sig: int
) -> None:
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "x.json", job("x"))
    wait_until(lambda: entries(home) == 1)
    assert watcher.stop(sig) == 0
    assert_no_traceback(watcher.stderr())
    assert stats(watcher.stopped_line())["new entries"] == 1


def test_missing_directory_is_a_clear_error(watcher: Watch, results: Path) -> None:
    watcher.start(str(results / "nope"), ready=False)
    assert watcher.proc is not None
    assert watcher.proc.wait(timeout=CLI_TIMEOUT) == 2
    err = watcher.stderr()
    assert "no such directory" in err and "nope" in err
    assert_no_traceback(err)
    assert len(err.strip().splitlines()) == 1


def test_quiet_prints_no_per_file_lines(watcher: Watch, home: Path, results: Path) -> None:
    write(results / "q.json", job("q"))
    write(results / "bad.json", "[]")
    watcher.start(str(results), "--settle", SETTLE, ready=False, global_args=("-q",))
    wait_until(lambda: entries(home) == 1 and files_recorded(home) == 2)
    assert watcher.stop() == 0
    # -q is "only errors": an invalid file is a warning, so it shows in `status` (and doctor).
    assert watcher.stderr() == ""
    assert logbook(home, "status", "--json")["invalid_files"] == 1


def test_json_log_lines(watcher: Watch, home: Path, results: Path) -> None:
    write(results / "j.json", job("j"))
    watcher.start(str(results), "--settle", SETTLE, "--log-format", "json", ready=False)
    wait_until(lambda: entries(home) == 1)
    wait_until(lambda: "recorded" in watcher.stderr())
    assert watcher.stop() == 0
    lines = [json.loads(ln) for ln in watcher.stderr().splitlines()]
    assert {ln["level"] for ln in lines} == {"info"}
    assert any(ln["message"] == "recorded results/j.json: 1 new" for ln in lines)
    assert lines[-1]["message"].startswith("stopped: ")


# --- the burst: the kernel's event queue overflows ------------------------------------------


def _max_queued_events() -> int:
    """The kernel's inotify queue length (16384 by default)."""
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return 16_384


def test_burst_while_stopped_overflows_the_queue_and_loses_nothing(
    watcher: Watch, home: Path, results: Path
) -> None:
    """SIGSTOP the watcher, write far more than max_queued_events (16384) events, SIGCONT.

    The kernel drops events (IN_Q_OVERFLOW); watchdog calls ``on_queue_overflow``,
    the watcher rescans, and every file is recorded once.
    """
    # Each tmp-then-rename file is at least 4 events: n files overflow the queue by a third.
    n = _max_queued_events() // 3 + 1_000
    watcher.start(str(results), "--settle", SETTLE)
    assert watcher.proc is not None
    os.kill(watcher.proc.pid, signal.SIGSTOP)
    try:
        for i in range(n):
            write_via_rename(results / f"burst-{i:05d}.json", job(f"b{i}"))
    finally:
        os.kill(watcher.proc.pid, signal.SIGCONT)
    wait_until(lambda: entries(home) >= n and files_recorded(home) >= n, timeout=180,
               what=f"{n} entries")  # fmt: skip
    wait_until(lambda: watcher.lines("overflowed"), what="the overflow warning")
    assert watcher.running()
    assert watcher.stop() == 0
    assert entries(home) == n and files_recorded(home) == n
    status = logbook(home, "status", "--json")
    assert status["counts"]["pending"] == n
    assert status["invalid_files"] == 0
    recorded = watcher.lines(": 1 new")
    assert len(recorded) == n and len(set(recorded)) == n  # each file said once
    s = stats(watcher.stopped_line())
    assert s["new entries"] == n and s["overflows"] >= 1 and s["invalid"] == 0
    assert_no_traceback(watcher.stderr())


# --- --sync against the emulator ------------------------------------------------------------


def test_sync_uploads_new_files(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    write(results / "old.json", job("old"))
    watcher.env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    for i in range(5):
        write(results / f"s{i}.json", job(f"s{i}"))
    wait_until(lambda: emulator.stats()["jobs_created"] == 6, what="6 jobs uploaded")
    wait_until(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 6)
    assert emulator.stats()["duplicates"] == 0
    assert sorted(j["name"] for j in emulator.jobs()) == ["old", "s0", "s1", "s2", "s3", "s4"]
    assert "synced" in watcher.stderr()
    assert watcher.stop() == 0
    assert_no_key(watcher.stderr(), emulator.key, "the watcher's log")


def test_sync_refreshes_unfinished_statuses(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    """Left running, the watcher keeps the server's statuses fresh (--refresh)."""
    watcher.env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync", "--refresh", "1")
    write(results / "r.json", job("r"))
    wait_until(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 1)
    # The emulator moves a job to Done over 1 s; only a refresh can tell us.
    wait_until(
        lambda: logbook(home, "list", "--json")[0]["remote_status"] == "Done",
        what="the remote status refreshed to Done",
    )
    assert emulator.stats()["requests"].get("GET /jobs/{job_id}", 0) > 0
    assert watcher.stop() == 0


def test_sync_keeps_recording_while_the_server_fails_then_catches_up(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(error_rate=1.0, error_status=503)
    watcher.env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    for i in range(3):
        write(results / f"f{i}.json", job(f"f{i}"))
    wait_until(lambda: entries(home) == 3, what="recording during the outage")
    assert logbook(home, "status", "--json")["counts"]["synced"] == 0
    emulator.clear_faults()
    wait_until(
        lambda: logbook(home, "status", "--json")["counts"]["synced"] == 3,
        timeout=90, what="the upload after the outage",
    )  # fmt: skip
    assert emulator.stats()["duplicates"] == 0
    assert watcher.stop() == 0


def test_sync_with_unreachable_server_still_records(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    watcher.env = {**emulator.env(), "HAIQU_EDGE_URI": "http://127.0.0.1:9"}
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    write(results / "u.json", job("u"))
    wait_until(lambda: entries(home) == 1)
    wait_until(lambda: "cannot connect" in watcher.stderr(), what="the unreachable message")
    write(results / "u2.json", job("u2"))
    wait_until(lambda: entries(home) == 2)
    assert watcher.stop() == 0
    assert watcher.stderr().count("cannot connect") == 1  # said once, not per retry


def test_sync_with_a_refused_key_reports_once_and_keeps_recording(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    watcher.env = {**emulator.env(), "HAIQU_API_KEY": "wrong-key-0123456789"}
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    write(results / "k1.json", job("k1"))
    wait_until(lambda: "refused the API key" in watcher.stderr(), what="the refused-key message")
    write(results / "k2.json", job("k2"))
    wait_until(lambda: entries(home) == 2)
    assert watcher.stop() == 0
    log = watcher.stderr()
    assert log.count("refused the API key") == 1
    assert_no_key(log, "wrong-key-0123456789", "the watcher's log")
    assert logbook(home, "status", "--json")["counts"]["pending"] == 2


def test_sync_without_a_key_is_a_clear_error(watcher: Watch, results: Path) -> None:
    watcher.start(str(results), "--sync", ready=False)
    assert watcher.proc is not None
    assert watcher.proc.wait(timeout=CLI_TIMEOUT) == 2
    err = watcher.stderr()
    assert "HAIQU_API_KEY" in err and len(err.strip().splitlines()) == 1
    assert_no_traceback(err)
