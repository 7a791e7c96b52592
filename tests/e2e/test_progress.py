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
import subprocess
import threading
from pathlib import Path

from support import assert_no_traceback, base_env, cli, cli_cmd, seed_store

from logbook.emulator.testing import EmulatorProcess

N = 300
QUIET_N = 80  # a second or two of sending: several --stats 0.2 intervals, none printed
#: ``2026-11-30T02:00:44.251Z logbook: sending 26548/100000 (26.5%), 2702.8/s, ETA 0:27, ...``
STATS = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z logbook: (sending|refreshing) (\d+)/(\d+)"
    r" \(\d+\.\d%\), \d+\.\d/s, ETA (\?|[\d:]+), elapsed [\d:]+(, retries \d+, throttled \d+)?$"
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
