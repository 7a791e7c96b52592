"""What a user sees while a long run goes on: a bar on a terminal, stats lines when piped.

Real ``logbook`` processes against the emulator on loopback; the terminal is a
real pseudo-terminal.  The emulator's latency makes each run last seconds, so
the lines exist on any machine (a slower one prints more of them); no test
asserts a time.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import threading
from pathlib import Path

from support import (
    assert_no_traceback,
    base_env,
    cli,
    cli_cmd,
    seed_store,
    states,
    wait_until,
)

from logbook.emulator.testing import EmulatorProcess

N = 300
QUIET_N = 80  # a second or two of sending: several --stats 0.2 intervals, none printed
#: ``2026-11-30T02:00:44.251Z logbook: sending 26548/100000 (26.5%), 2702.8/s, ETA 0:27, ...``
STATS = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z logbook: (sending|refreshing) (\d+)/(\d+)"
    r" \(\d+\.\d%\), \d+\.\d/s, ETA (\?|[\d:]+), elapsed [\d:]+(, retries \d+, throttled \d+)?"
    r"(, paused (\d+ s: (Retry-After|back-off|server overloaded), )?\d+ s in all)?$"
)


def _slow(emulator: EmulatorProcess) -> dict[str, str]:
    emulator.set_faults(latency_ms=20)
    return emulator.env()


def test_a_piped_sync_prints_stats_lines_with_counts_rate_and_eta(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    seed_store(logbook_home, N)
    env = _slow(emulator)
    res = cli(logbook_home, "--stats", "0.2", "sync", "--concurrency", "2", env=env)
    assert res.code == 0, res.err
    lines = [ln for ln in res.err.splitlines() if " logbook: sending " in ln]
    assert lines, res.err
    for line in lines:
        match = STATS.match(line)
        assert match, line
        assert int(match[3]) == N and 0 <= int(match[2]) <= N
    done = [int(STATS.match(ln)[2]) for ln in lines]  # type: ignore[index]
    assert done == sorted(done)  # the count only grows
    assert res.out.startswith(f"synced {N}, rejected 0, 0 still pending")
    assert_no_traceback(res.err)


def test_piped_stats_show_throttling_and_the_refresh_phase(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """Why a run is slow (429s) shows without -v, and the refresh phase has its own lines."""
    n = 150
    seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=20, rate_limit_next=6, retry_after=0)
    first = cli(logbook_home, "--stats", "0.2", "sync", "--no-refresh", "--concurrency", "2",
                env=emulator.env())  # fmt: skip
    assert first.code == 0, first.err
    sending = [STATS.match(ln) for ln in first.err.splitlines() if " logbook: sending " in ln]
    assert sending and all(sending), first.err
    throttled = [int(m[5].rsplit("throttled ", 1)[1]) for m in sending if m and m[5]]
    assert throttled and max(throttled) > 0, first.err  # the 429s, counted as they came
    emulator.set_faults(latency_ms=20)  # the jobs are still Submitted: the next run refreshes
    second = cli(logbook_home, "--stats", "0.2", "sync", "--concurrency", "2", env=emulator.env())
    assert second.code == 0, second.err
    refreshing = [ln for ln in second.err.splitlines() if " logbook: refreshing " in ln]
    assert refreshing, second.err
    for line in refreshing:
        match = STATS.match(line)
        assert match and int(match[3]) == n, line
    assert f"refreshed {n}" in second.out
    assert_no_traceback(first.err + second.err)


def test_piped_stats_say_when_and_why_the_run_pauses(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """A server that refuses every request for a while (a real limit): the run pauses for its
    Retry-After, and the stats line says so ("paused 1 s: Retry-After, 2 s in all")."""
    n = 40
    seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=20, rate_limit_next=12, retry_after=1)
    res = cli(logbook_home, "--stats", "0.1", "sync", "--no-refresh", "--concurrency", "2",
              env=emulator.env())  # fmt: skip
    assert res.code == 0, res.err
    lines = [ln for ln in res.err.splitlines() if " logbook: sending " in ln]
    assert lines and all(STATS.match(ln) for ln in lines), res.err
    paused = [ln for ln in lines if ", paused 1 s: Retry-After, " in ln]
    assert paused, res.err
    after = lines[lines.index(paused[0]) :]
    assert all(", paused " in ln for ln in after), after  # how long it paused, from then on
    assert res.out.startswith(f"synced {n}, rejected 0, 0 still pending")


def _result_files(d: Path, n: int) -> Path:
    d.mkdir()
    for i in range(n):
        (d / f"r{i:04d}.json").write_text(
            json.dumps({"experiment_id": "e", "hash": f"h{i}", "results": {"00": i}})
        )
    return d


def _stats_lines(err: str, phase: str, n: int) -> list[str]:
    pattern = re.compile(STATS.pattern.replace("(sending|refreshing)", f"({phase})"))
    lines = [ln for ln in err.splitlines() if f" logbook: {phase} " in ln]
    assert lines, err
    for line in lines:
        match = pattern.match(line)
        assert match and int(match[3]) == n and int(match[2]) <= n, line
    return lines


def test_a_piped_import_of_many_files_prints_stats_lines(
    logbook_home: Path, tmp_path: Path
) -> None:
    n = 3000
    res = cli(logbook_home, "--stats", "0.05", "import", _result_files(tmp_path / "results", n))
    assert res.code == 0, res.err
    _stats_lines(res.err, "importing", n)
    assert_no_traceback(res.err)


def test_a_watchers_catch_up_prints_stats_lines(logbook_home: Path, tmp_path: Path) -> None:
    n = 3000
    results = _result_files(tmp_path / "results", n)
    log = tmp_path / "watch.log"  # a file, not a pipe: a line per file would fill a pipe
    with log.open("w") as err:
        proc = subprocess.Popen(
            cli_cmd("--stats", "0.05", "watch", results), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, env=base_env(logbook_home),
        )  # fmt: skip
        try:

            def all_in() -> bool:
                assert proc.poll() is None, "the watcher stopped"
                db = logbook_home / "logbook.db"
                return db.exists() and states(db)["pending"] == n

            wait_until(all_in, 120, f"{n} files recorded")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    _stats_lines(text, "catching up", n)
    assert_no_traceback(text)


def test_quiet_and_json_print_no_progress(logbook_home: Path, emulator: EmulatorProcess) -> None:
    seed_store(logbook_home, QUIET_N)
    env = _slow(emulator)
    quiet = cli(logbook_home, "-q", "--stats", "0.2", "sync", "--concurrency", "2", env=env)
    assert quiet.code == 0, quiet.err
    assert " sending " not in quiet.err and "synced" not in quiet.err
    seed_store(logbook_home, QUIET_N, experiment="exp-more")
    as_json = cli(logbook_home, "--stats", "0.2", "sync", "--json", "--concurrency", "2", env=env)
    assert as_json.code == 0, as_json.err
    assert " sending " not in as_json.err
    assert json.loads(as_json.out)["synced"] == QUIET_N


def test_a_sync_on_a_terminal_shows_a_bar(logbook_home: Path, emulator: EmulatorProcess) -> None:
    seed_store(logbook_home, N)
    env = _slow(emulator)
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a full pty would block the bar's writes
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        cli_cmd("sync", "--concurrency", "2"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=slave, env=base_env(logbook_home, env),
    )  # fmt: skip
    os.close(slave)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    reader.join(timeout=30)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    assert "sending" in screen and "jobs/s" in screen, screen
    assert f"{N}/{N}" in screen, screen  # the bar ends where the phase ended
    assert "\r" in screen  # redrawn in place, not a line per tick
    assert " logbook: sending " not in screen  # no stats lines on a terminal
    assert "Traceback" not in screen
