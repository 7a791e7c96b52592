"""``logbook watch`` as a real process on real directories, with real observers.

Each test starts the watcher with its own ``LOGBOOK_HOME``, writes files the way
lab code does, waits (with a deadline, never a fixed sleep) for what a user
would check (``logbook status --json``, ``logbook list --json``, the stderr
log), and stops the process by PID in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logbook.emulator.testing import EmulatorProcess

REPO = Path(__file__).resolve().parents[1]
SETTLE = "0.1"

OBSERVERS = [
    pytest.param([], id="inotify"),
    pytest.param(["--polling"], id="polling"),
]


def job(name: str, experiment: str = "exp-watch", counts: dict[str, int] | None = None) -> str:
    """A job document as lab code would write it."""
    return json.dumps(
        {
            "experiment_id": experiment,
            "name": name,
            "device_id": "basic_simulator",
            "results": json.dumps(counts or {"00": 510, "11": 514}),
            "shots": "[1024]",
            "status": "Done",
            "job_type": "User local job",
            "metrics": {"n": name},
        }
    )


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_via_rename(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def base_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LOGBOOK_HOME"] = str(home)
    env.pop("LOGBOOK_DB", None)
    env.pop("HAIQU_API_KEY", None)
    env.pop("HAIQU_EDGE_URI", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Watch:
    """One ``logbook watch`` process; its stderr goes to a file the test can read."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.err_path = tmp / "watch-0.err"
        self.extra_env: dict[str, str] = {}

    def start(self, *args: str, ready: bool = True, global_args: tuple[str, ...] = ()) -> Watch:
        self.runs += 1
        self.err_path = self.tmp / f"watch-{self.runs}.err"
        env = base_env(self.home) | self.extra_env
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "logbook", *global_args, "watch", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=self.tmp,
            )
        if ready:
            wait_for(lambda: "watching" in self.stderr() or self.proc.poll() is not None,  # type: ignore[union-attr]
                     what="the watcher to start")  # fmt: skip
            assert self.proc.poll() is None, self.stderr()
        return self

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Send ``sig``; return (exit code, seconds it took to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


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
    out = subprocess.run(
        [sys.executable, "-m", "logbook", *args],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


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


def ledger_paths(home: Path) -> list[str]:
    db = home / "logbook.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return sorted(os.path.basename(r[0]) for r in conn.execute("SELECT path FROM files"))
    finally:
        conn.close()


def names(home: Path) -> list[str]:
    return sorted(e["name"] for e in logbook(home, "list", "--json"))


# --- basic behaviour, with both observers ---------------------------------------------------


@pytest.mark.parametrize("observer", OBSERVERS)
def test_catch_up_then_new_files(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    write(results / "before.json", job("before"))
    (results / "sub").mkdir()
    write(results / "sub" / "nested.json", job("nested"))
    watcher.start(str(results), "--settle", SETTLE, *observer)
    wait_for(lambda: entries(home) == 2, what="the files present at start")
    write(results / "after.json", job("after"))
    wait_for(lambda: entries(home) == 3, what="the new file")
    assert names(home) == ["after", "before", "nested"]
    log = watcher.stderr()
    assert "recorded results/before.json: 1 new" in log
    assert "recorded results/after.json: 1 new" in log


@pytest.mark.parametrize("observer", OBSERVERS)
def test_file_written_in_two_halves_is_recorded_once_with_final_content(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    watcher.start(str(results), "--settle", "0.2", *observer)
    text = job("halves", counts={"01": 7})
    path = results / "halves.json"
    with path.open("w") as f:  # first close: half a file
        f.write(text[: len(text) // 2])
    time.sleep(0.4)  # longer than --settle: the watcher sees the half file settle
    with path.open("a") as f:  # second close: the rest
        f.write(text[len(text) // 2 :])
    wait_for(lambda: entries(home) == 1, what="the file")
    [entry] = logbook(home, "list", "--json")
    assert entry["name"] == "halves"
    assert json.loads(entry["results"]) == {"01": 7}
    time.sleep(1.5)  # past the invalid grace: nothing more may happen
    status = logbook(home, "status", "--json")
    assert status["counts"]["pending"] == 1
    assert status["invalid_files"] == 0
    assert "invalid" not in watcher.stderr()
    assert watcher.stderr().count("recorded results/halves.json") == 1


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
    wait_for(lambda: entries(home) == 1, what="the renamed file")
    time.sleep(0.5)
    assert names(home) == ["final"]
    assert ledger_paths(home) == ["final.json"]
    assert logbook(home, "status", "--json")["invalid_files"] == 0
    assert watcher.stderr().count("recorded results/final.json") == 1


@pytest.mark.parametrize("observer", OBSERVERS)
def test_invalid_file_then_valid_file(
    watcher: Watch, home: Path, results: Path, observer: list[str]
) -> None:
    watcher.start(str(results), "--settle", SETTLE, *observer)
    write(results / "broken.json", '{"experiment_id": "x", "results": ')
    write(results / "good.json", job("good"))
    wait_for(lambda: entries(home) == 1, what="the valid file")
    wait_for(
        lambda: logbook(home, "status", "--json")["invalid_files"] == 1,
        what="the invalid file in status",
    )
    log = watcher.stderr()
    assert log.count("invalid results/broken.json: not JSON") == 1, log
    assert watcher.proc is not None and watcher.proc.poll() is None  # still running
    write(results / "later.json", job("later"))
    wait_for(lambda: entries(home) == 2, what="a file after the invalid one")


# --- dedupe, restart, changes -------------------------------------------------------------


def test_restart_records_nothing_twice(watcher: Watch, home: Path, results: Path) -> None:
    for i in range(3):
        write(results / f"r{i}.json", job(f"r{i}"))
    write(results / "bad.json", "not json at all")
    watcher.start(str(results), "--settle", SETTLE)
    wait_for(lambda: entries(home) == 3 and db_count(home, "SELECT count(*) FROM files") == 4)
    assert watcher.stop()[0] == 0
    write(results / "while-down.json", job("while-down"))
    watcher.start(str(results), "--settle", SETTLE)
    wait_for(lambda: entries(home) == 4, what="the file written while down")
    time.sleep(0.5)
    assert entries(home) == 4
    log = watcher.stderr()
    assert "while-down.json: 1 new" in log
    assert "r0.json" not in log and "bad.json" not in log  # invalid reported once, not per run
    assert logbook(home, "status", "--json")["invalid_files"] == 1


def test_same_job_in_two_files_is_one_entry_and_a_changed_file_is_noticed(
    watcher: Watch, home: Path, results: Path
) -> None:
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "a.json", job("same"))
    wait_for(lambda: entries(home) == 1)
    write(results / "copy-of-a.json", job("same"))
    wait_for(lambda: "copy-of-a.json: 0 new, 1 already known" in watcher.stderr())
    assert entries(home) == 1
    write(results / "a.json", job("changed", counts={"10": 3}))  # rewritten later
    wait_for(lambda: entries(home) == 2, what="the changed file")
    assert names(home) == ["changed", "same"]


def test_directory_that_disappears_and_returns(watcher: Watch, home: Path, results: Path) -> None:
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "one.json", job("one"))
    wait_for(lambda: entries(home) == 1)
    for p in results.iterdir():
        p.unlink()
    results.rmdir()
    wait_for(lambda: "has disappeared" in watcher.stderr(), what="the disappearance warning")
    results.mkdir()
    write(results / "two.json", job("two"))
    wait_for(lambda: entries(home) == 2, what="a file in the returned directory")
    assert "is back" in watcher.stderr()
    write(results / "three.json", job("three"))
    wait_for(lambda: entries(home) == 3, what="a new file after the return")


# --- the process: start, stop, errors -------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_0_within_5_s(
    watcher: Watch, home: Path, results: Path, sig: int
) -> None:
    watcher.start(str(results), "--settle", SETTLE)
    write(results / "x.json", job("x"))
    wait_for(lambda: entries(home) == 1)
    code, took = watcher.stop(sig)
    assert code == 0
    assert took < 5.0
    assert "Traceback" not in watcher.stderr()


def test_missing_directory_is_a_clear_error(watcher: Watch, results: Path) -> None:
    watcher.start(str(results / "nope"), ready=False)
    assert watcher.proc is not None
    assert watcher.proc.wait(timeout=20) == 2
    err = watcher.stderr()
    assert "no such directory" in err and "nope" in err
    assert "Traceback" not in err


def test_quiet_prints_no_per_file_lines(watcher: Watch, home: Path, results: Path) -> None:
    write(results / "q.json", job("q"))
    write(results / "bad.json", "[]")
    watcher.start(str(results), "--settle", SETTLE, ready=False, global_args=("-q",))
    wait_for(lambda: entries(home) == 1 and db_count(home, "SELECT count(*) FROM files") == 2)
    assert watcher.stop()[0] == 0
    log = watcher.stderr()
    assert "recorded" not in log
    assert "invalid results/bad.json" in log  # problems are still reported


# --- the burst -----------------------------------------------------------------------------


def test_burst_of_20000_files_while_stopped_loses_none(
    watcher: Watch, home: Path, results: Path
) -> None:
    n = 20_000
    watcher.start(str(results), "--settle", SETTLE)
    assert watcher.proc is not None
    os.kill(watcher.proc.pid, signal.SIGSTOP)
    try:
        for i in range(n):
            write_via_rename(results / f"burst-{i:05d}.json", job(f"b{i}"))
    finally:
        os.kill(watcher.proc.pid, signal.SIGCONT)
    wait_for(lambda: entries(home) >= n, timeout=90, what=f"{n} entries")
    time.sleep(0.5)
    status = logbook(home, "status", "--json")
    assert status["counts"]["pending"] == n
    assert status["invalid_files"] == 0
    assert db_count(home, "SELECT count(*) FROM files") == n
    assert watcher.proc.poll() is None


# --- --sync against the emulator ------------------------------------------------------------


def test_sync_uploads_new_files(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    write(results / "old.json", job("old"))
    watcher.extra_env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    for i in range(5):
        write(results / f"s{i}.json", job(f"s{i}"))
        time.sleep(0.05)
    wait_for(lambda: emulator.stats()["jobs_created"] == 6, timeout=30, what="6 jobs uploaded")
    wait_for(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 6, timeout=30)
    assert emulator.stats()["duplicates"] == 0
    assert sorted(j["name"] for j in emulator.jobs()) == ["old", "s0", "s1", "s2", "s3", "s4"]
    assert "synced" in watcher.stderr()
    assert watcher.stop()[0] == 0


def test_sync_refreshes_unfinished_statuses(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    """Left running, the watcher keeps the server's statuses fresh (--refresh)."""
    watcher.extra_env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync", "--refresh", "1")
    write(results / "r.json", job("r"))
    wait_for(lambda: logbook(home, "status", "--json")["counts"]["synced"] == 1, timeout=30)
    # The emulator moves a job to Done over 1 s; only a refresh can tell us.
    wait_for(
        lambda: logbook(home, "list", "--json")[0]["remote_status"] == "Done",
        timeout=30,
        what="the remote status refreshed to Done",
    )
    assert emulator.stats()["requests"].get("GET /jobs/{job_id}", 0) > 0
    assert watcher.stop()[0] == 0


def test_sync_keeps_recording_while_the_server_fails_then_catches_up(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(error_rate=1.0, error_status=503)
    watcher.extra_env = emulator.env()
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    for i in range(3):
        write(results / f"f{i}.json", job(f"f{i}"))
    wait_for(lambda: entries(home) == 3, what="recording during the outage")
    assert logbook(home, "status", "--json")["counts"]["synced"] == 0
    emulator.clear_faults()
    wait_for(
        lambda: logbook(home, "status", "--json")["counts"]["synced"] == 3,
        timeout=40,
        what="the upload after the outage",
    )
    assert emulator.stats()["duplicates"] == 0
    code, took = watcher.stop()
    assert code == 0 and took < 5.0


def test_sync_with_unreachable_server_still_records(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    watcher.extra_env = {**emulator.env(), "HAIQU_EDGE_URI": "http://127.0.0.1:9"}
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    write(results / "u.json", job("u"))
    wait_for(lambda: entries(home) == 1)
    wait_for(lambda: "cannot reach" in watcher.stderr(), what="the unreachable message")
    write(results / "u2.json", job("u2"))
    wait_for(lambda: entries(home) == 2)
    code, took = watcher.stop()
    assert code == 0 and took < 5.0
    assert watcher.stderr().count("cannot reach") == 1  # said once, not per retry


def test_sync_with_a_refused_key_reports_once_and_keeps_recording(
    watcher: Watch, home: Path, results: Path, emulator: EmulatorProcess
) -> None:
    watcher.extra_env = {**emulator.env(), "HAIQU_API_KEY": "wrong-key"}
    watcher.start(str(results), "--settle", SETTLE, "--sync")
    write(results / "k1.json", job("k1"))
    wait_for(lambda: "refused the API key" in watcher.stderr(), what="the refused-key message")
    write(results / "k2.json", job("k2"))
    wait_for(lambda: entries(home) == 2)
    log = watcher.stderr()
    assert log.count("refused the API key") == 1
    assert "wrong-key" not in log
    assert logbook(home, "status", "--json")["counts"]["pending"] == 2
    assert watcher.stop()[0] == 0


def test_sync_without_endpoint_is_a_clear_error(watcher: Watch, results: Path) -> None:
    watcher.start(str(results), "--sync", ready=False)
    assert watcher.proc is not None
    assert watcher.proc.wait(timeout=20) == 2
    assert "HAIQU_EDGE_URI" in watcher.stderr()


# --- supervision, in process ------------------------------------------------------------------


def test_dead_observer_is_restarted_and_overflow_log_triggers_rescan(
    home: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import threading

    from logbook.config import load_config
    from logbook.watch import Watcher, WatchOptions

    monkeypatch.setenv("LOGBOOK_HOME", str(home))
    lines: list[str] = []
    w = Watcher(load_config(), WatchOptions(dirs=[str(results)], settle=0.05), lines.append)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: any("watching" in ln for ln in lines), what="the watcher to start")
        w.observer.stop()  # the observer thread dies
        wait_for(lambda: any("restarting" in ln for ln in lines), what="the restart warning")
        write(results / "after-restart.json", job("after-restart"))
        wait_for(lambda: entries(home) == 1, what="a file seen by the new observer")
        rescans = w.stats.rescans
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        wait_for(lambda: w.stats.rescans > rescans, what="a rescan after the overflow")
        assert any("overflowed; rescanning" in ln for ln in lines)
    finally:
        w.request_stop()
        t.join(10)
    assert not t.is_alive()
