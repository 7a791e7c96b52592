"""``logbook sync`` as a real process against the emulator on loopback.

Exactly-once is checked on the server's side: the emulator does not
de-duplicate, so ``duplicates == 0`` and ``jobs_created == N`` together mean
every entry arrived once, and each entry's ``remote_id`` must be the id of the
server's job for its hash.

Every process a test starts is stopped by its PID on the way out
(``support.started``/``support.cli``, or a ``finally``); every wait is on a
condition (``support.wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import adversary
import pytest
from adversary import Adversary, closed_port
from support import (
    assert_exactly_once,
    assert_no_key,
    assert_no_traceback,
    assert_one_line_error,
    cli,
    entries,
    seed_store,
    set_row,
    started,
    states,
    sync_until_done,
    wait_until,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess

FAULTS: dict[str, dict[str, Any]] = {
    "500s-30pct": {"error_rate": 0.3, "error_status": 500},
    "503s-30pct": {"error_rate": 0.3, "error_status": 503},
    "429-burst-seconds": {"rate_limit_next": 40, "retry_after": 1},
    "429-burst-date": {"rate_limit_next": 40, "retry_after": 1, "retry_after_format": "date"},
    "429-rate": {"rate_limit_rate": 0.2, "retry_after": 0},
    "store-then-drop-20pct": {"drop_rate": 0.2},
    "bad-json-20pct": {"bad_json_rate": 0.2},
    "drop-everywhere": {"drop_rate": 0.2, "routes": ["*"]},
    # a lookup answered with another job must never settle an entry
    "wrong-job-on-lookups": {"drop_rate": 0.3, "wrong_job_rate": 0.5, "routes": ["*"]},
    "echo-500-30pct": {"echo_rate": 0.3},
}
LOOKUPS = "GET /experiments/{experiment_id}/jobs/{job_hash}"
#: The global option that keeps the periodic stats line off stderr.
QUIET_STATS = ("--stats", "0")


def created(emulator: EmulatorProcess) -> int:
    return int(emulator.stats()["jobs_created"])


def posts(emulator: EmulatorProcess) -> int:
    return int(emulator.stats()["requests"]["POST /jobs"])


def maybe_sent_flags(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT maybe_sent FROM entries ORDER BY id")]


def status_json(home: Path) -> dict[str, Any]:
    run = cli(home, "status", "--json")
    assert run.code == 0, run
    result: dict[str, Any] = run.json()
    return result


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[str, str]:
    """Wait for ``proc`` (it is killed by ``started`` if this fails)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pid {proc.pid} did not finish in {timeout} s") from None


# --- faults: every entry once --------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_faults_end_exactly_once(logbook_home: Path, emulator: EmulatorProcess, fault: str) -> None:
    db = seed_store(logbook_home, 100)
    emulator.set_faults(**FAULTS[fault])
    # --max-time keeps the backoff tail short; the next run picks up the rest
    # (and interrupting a run is one more way to be tested for duplicates).
    sync_until_done(logbook_home, emulator.env(), "--no-refresh", "--max-time", "3")
    assert_exactly_once(db, emulator)
    injected = emulator.stats()["injected"]
    assert sum(injected.values()) > 0, "the fault never fired"
    if "wrong_job_rate" in FAULTS[fault]:
        assert injected.get("wrong_job", 0) > 0, injected
    assert states(db)["sending"] == 0


def test_drops_errors_and_bad_json_together(logbook_home: Path, emulator: EmulatorProcess) -> None:
    """Was run once per HTTP engine; there is one engine now."""
    db = seed_store(logbook_home, 150)
    emulator.set_faults(drop_rate=0.15, error_rate=0.15, bad_json_rate=0.1)
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    assert emulator.stats()["injected"].get("dropped", 0) > 0


# --- killed, interrupted, paused, concurrent --------------------------------------------------


@contextmanager
def _sync_under_way(
    home: Path,
    emulator: EmulatorProcess,
    jobs_upstream: float,
    *sync_args: str,
    latency_ms: int,
) -> Iterator[subprocess.Popen[str]]:
    """A running ``logbook sync SYNC_ARGS`` (default ``--concurrency 8``), handed over once
    the server holds ``jobs_upstream`` jobs and the sync is still going (to be killed,
    interrupted or locked out)."""
    emulator.set_faults(latency_ms=latency_ms)
    args = sync_args or ("--concurrency", "8")
    with started(home, *QUIET_STATS, "sync", *args, env=emulator.env()) as proc:

        def far_enough() -> bool:
            assert proc.poll() is None, "sync finished before it could be stopped"
            return created(emulator) >= jobs_upstream

        wait_until(far_enough, what=f"{jobs_upstream:.0f} jobs on the server")
        yield proc


def test_kill_9_mid_backlog_then_resync(logbook_home: Path, emulator: EmulatorProcess) -> None:
    n = 1500
    db = seed_store(logbook_home, n)
    with _sync_under_way(logbook_home, emulator, n * 0.3, latency_ms=20) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    done = created(emulator)
    assert n * 0.1 <= done <= n * 0.9, done
    left = states(db)
    assert left["sending"] > 0 or left["pending"] > 0  # the kill left work behind
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    # what the killed run left 'sending' was looked up before being posted again
    assert emulator.stats()["requests"][LOOKUPS] > 0


def test_ctrl_c_mid_backlog_leaves_nothing_sending(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    n = 600
    db = seed_store(logbook_home, n)
    with _sync_under_way(logbook_home, emulator, n * 0.2, latency_ms=50) as proc:
        proc.send_signal(signal.SIGINT)
        _, err = finish(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert_no_traceback(err)
    left = states(db)
    assert left["sending"] == 0, left  # released or marked maybe_sent, none stuck
    assert 0 < left["synced"] < n
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_slow_sync_cleanly(
    logbook_home: Path, emulator: EmulatorProcess, signum: signal.Signals
) -> None:
    n = 200
    db = seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=300)
    args = (*QUIET_STATS, "sync", "--concurrency", "8")
    with started(logbook_home, *args, env=emulator.env()) as proc:

        def under_way() -> bool:
            assert proc.poll() is None, "sync finished before the signal"
            return created(emulator) >= 8

        wait_until(under_way, what="the first requests answered")
        proc.send_signal(signum)
        out, err = finish(proc)
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    assert_no_traceback(out, err)
    assert "Task exception was never retrieved" not in err
    summary = [line for line in err.splitlines() if "interrupted" in line]
    assert summary, err
    # The user stopped it: no "error", and what was done (SIGTERM is named: someone else).
    said = "interrupted" if signum == signal.SIGINT else "interrupted by SIGTERM"
    assert summary[-1].startswith(f"logbook: {said}: synced"), err
    status = status_json(logbook_home)
    assert status["counts"]["sending"] == 0, status
    assert status["last_sync"] is not None, status
    assert 0 < status["counts"]["synced"] < n, status
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_two_syncs_at_once(logbook_home: Path, emulator: EmulatorProcess) -> None:
    n = 600
    db = seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=20, drop_rate=0.05)
    args = ("sync", "--json", "--no-refresh", "--concurrency", "16")
    with (
        started(logbook_home, *args, env=emulator.env()) as a,
        started(logbook_home, *args, env=emulator.env()) as b,
    ):
        out_a, err_a = finish(a)
        out_b, err_b = finish(b)
    assert a.returncode in (0, 1), err_a
    assert b.returncode in (0, 1), err_b
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    # both really sent, and neither sent what the other held
    synced_a, synced_b = json.loads(out_a)["synced"], json.loads(out_b)["synced"]
    assert synced_a > 0 and synced_b > 0, (synced_a, synced_b)
    assert synced_a + synced_b <= n


def _write_lock_free(db: Path) -> bool:
    """True when nobody holds the store's write lock (tried without waiting)."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def _stop_outside_a_write(proc: subprocess.Popen[str], db: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no write transaction on the store.

    Stopped inside one, it would keep the store locked and the next sync would
    wait for it: that is not what this test is about.
    """

    def stopped_cleanly() -> bool:
        assert proc.poll() is None, "the sync ended before it could be paused"
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: _process_state(proc.pid) in ("T", "t"), what="the sync to stop")
        if _write_lock_free(db):
            return True
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: _write_lock_free(db), what="the sync to end its transaction")
        return False

    wait_until(stopped_cleanly, what="a pause outside a store transaction")


def test_a_paused_sync_never_has_its_entries_posted_by_another(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """The issue's repro: a sync paused (SIGSTOP) past its lease, a second sync
    meanwhile, then the first resumes.  The second must leave the first's
    claimed entries alone (it may resume and post them), and nothing arrives twice."""
    n = 30
    db = seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=200)
    env = {**emulator.env(), "LOGBOOK_LEASE_SECONDS": "1"}
    # ``started`` kills the first sync by its PID on the way out (SIGKILL ends a stopped one too)
    with started(
        logbook_home, *QUIET_STATS, "sync", "--concurrency", "1", "--json", "--no-refresh",
        env=env,
    ) as first:  # fmt: skip
        wait_until(lambda: created(emulator) >= 1, what="the first job on the server")
        _stop_outside_a_write(first, db)

        def leases_expired() -> bool:
            with sqlite3.connect(db) as conn:
                held, latest = conn.execute(
                    "SELECT count(*), max(lease_until) FROM entries WHERE state = 'sending'"
                ).fetchone()
            return held > 0 and latest < time.time()

        wait_until(leases_expired, what="the paused sync's leases to run out")
        claimed = states(db)["sending"]
        posts_before = posts(emulator)

        second = cli(logbook_home, *QUIET_STATS, "sync", "--json", "--no-refresh", env=env)
        assert second.code in (0, 1), second
        assert_no_traceback(second.err)
        assert second.json()["synced"] == 0, second.out
        assert posts(emulator) == posts_before, "the second sync posted the paused one's entries"
        assert states(db)["sending"] == claimed  # still the paused sync's

        os.kill(first.pid, signal.SIGCONT)
        out, err = finish(first)
        assert first.returncode == 0, (first.returncode, out, err)
        assert_no_traceback(err)
        assert json.loads(out)["synced"] == n
    assert emulator.stats()["duplicates"] == 0, emulator.stats()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    assert states(db) == {"pending": 0, "sending": 0, "synced": n, "rejected": 0}


def test_a_killed_sync_not_yet_reaped_does_not_hold_its_entries(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    n = 200
    db = seed_store(logbook_home, n)
    emulator.set_faults(latency_ms=300)
    env = emulator.env()
    with started(logbook_home, *QUIET_STATS, "sync", "--concurrency", "2", env=env) as proc:
        wait_until(lambda: created(emulator) >= 2, what="the first jobs on the server")
        os.kill(proc.pid, signal.SIGKILL)
        # not reaped yet (as under a parent that never waits, e.g. PID 1 in a container)
        wait_until(lambda: _process_state(proc.pid) == "Z", what="the killed sync to be a zombie")
        assert states(db)["sending"] > 0
        emulator.clear_faults()
        run = cli(logbook_home, *QUIET_STATS, "sync", "--json", "--no-refresh", env=env)
        assert run.code in (0, 1), run
        assert states(db)["sending"] == 0, states(db)
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # the other process holding the store, not a test's wait
conn.execute("COMMIT")
print("released", flush=True)
"""


@contextmanager
def write_locked(db: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the store's write lock for ``seconds``; stopped by PID at the end."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db), str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None
        line = locker.stdout.readline()
        assert line.strip() == "locked", (line, locker.stderr.read() if locker.stderr else "")
        yield locker
    finally:
        if locker.poll() is None:
            locker.kill()
        locker.communicate()


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_store_write_locked_by_another_process(
    logbook_home: Path, emulator: EmulatorProcess, when: str
) -> None:
    n = 400
    db = seed_store(logbook_home, n)
    env = emulator.env()
    args = ("--max-time", "20", "--concurrency", "4", "--no-refresh")
    if when == "before":
        with write_locked(db, 3.0) as locker:
            run = cli(logbook_home, *QUIET_STATS, "sync", *args, env=env)
            code, err = run.code, run.err
            assert locker.wait(timeout=30) == 0
    else:
        with _sync_under_way(logbook_home, emulator, 20, *args, latency_ms=50) as proc:
            with write_locked(db, 3.0) as locker:
                assert locker.wait(timeout=30) == 0
            _, err = finish(proc)
            code = proc.returncode
    assert code in (0, 1), (code, err)
    assert_no_traceback(err)
    assert "Task exception was never retrieved" not in err, err
    assert "never retrieved" not in err and "Exception ignored" not in err, err
    assert states(db)["sending"] == 0, states(db)
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_a_lock_that_outlasts_max_time_is_never_a_false_nothing_left(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """The probe's repro: the lock held well past ``--max-time``; it printed pending 0, exit 0."""
    n = 400
    db = seed_store(logbook_home, n)
    args = ("--max-time", "2", "--concurrency", "4", "--no-refresh")
    with _sync_under_way(logbook_home, emulator, 20, *args, latency_ms=50) as proc:
        with write_locked(db, 6.0) as locker:
            assert locker.wait(timeout=30) == 0
        out, err = finish(proc)
    assert proc.returncode == 1, (proc.returncode, err)  # some pending: not "nothing left"
    assert_no_traceback(err)
    assert "never retrieved" not in err, err
    left = states(db)
    assert left["sending"] == 0, left
    assert left["pending"] > 0 and left["synced"] < n, left
    emulator.clear_faults()
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


# --- runs that stop: auth, unreachable, redirect ----------------------------------------------


@pytest.mark.parametrize("how", ["unauthorized", "wrong-key"])
def test_401_exit_3_and_entries_untouched(
    logbook_home: Path, emulator: EmulatorProcess, how: str
) -> None:
    home = logbook_home
    seed_store(home, 30)
    # give the entries some history (attempts, last_error, a retry time), so that
    # "untouched" means something
    emulator.set_faults(rate_limit_next=30, retry_after=120)
    assert cli(home, "sync", "--json", env=emulator.env()).code == 1
    emulator.clear_faults()
    env = emulator.env()
    if how == "unauthorized":
        emulator.set_faults(unauthorized=True)
    else:
        env["HAIQU_API_KEY"] = "not+the/key="
    before = cli(home, "list", "--limit", "0", "--json").json()
    run = cli(home, *QUIET_STATS, "sync", env=env)
    assert run.code == 3, run
    assert_one_line_error(run.err)
    assert "key" in run.err and "no entry was changed" in run.err, run.err
    after = cli(home, "list", "--limit", "0", "--json").json()
    assert after == before
    assert len(after) == 30
    assert {e["state"] for e in after} == {"pending"} and all(e["attempts"] == 1 for e in after)
    assert emulator.stats()["jobs_created"] == 0


def test_unreachable_exit_4(logbook_home: Path) -> None:
    db = seed_store(logbook_home, 20)
    before = entries(db)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"HAIQU_API_KEY": "test-key-0123456789", "HAIQU_EDGE_URI": endpoint}
    run = cli(logbook_home, *QUIET_STATS, "sync", env=env)
    assert run.code == 4, run
    assert_one_line_error(run.err)
    assert f"cannot connect to {endpoint}" in run.err and "no entry was changed" in run.err
    assert run.err.count("cannot connect") == 1 and run.err.count("127.0.0.1") == 1  # said once
    assert "HAIQU_EDGE_URI" in run.err  # and what to check next
    assert entries(db) == before


def test_emulator_stopped_exit_4(logbook_home: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(logbook_home, 10)
    env = emulator.env()
    emulator.stop()  # the fixture starts it again for the next test
    before = entries(db)
    run = cli(logbook_home, "sync", "--json", env=env)
    assert run.code == 4, run
    assert entries(db) == before


def test_refresh_against_a_stopped_server_exits_4(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """Nothing left to send, statuses still unfinished, server gone: exit 4, not 0."""
    db = seed_store(logbook_home, 5)
    env = emulator.env()
    assert cli(logbook_home, "sync", "--no-refresh", env=env).code == 0
    assert {e["remote_status"] for e in entries(db)} == {"Submitted"}
    emulator.stop()
    before = entries(db)
    run = cli(logbook_home, *QUIET_STATS, "sync", env=env)
    assert run.code == 4, run
    assert f"cannot connect to {env['HAIQU_EDGE_URI']}" in run.err
    assert_one_line_error(run.err)
    assert entries(db) == before


def test_a_redirecting_endpoint_exit_2_and_nothing_is_sent_elsewhere(
    logbook_home: Path, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = logbook_home
    db = seed_store(home, 10)
    before = entries(db)
    key = emulator.key
    with Adversary(mode="ok") as elsewhere, Adversary(mode="redirect_307") as adv:
        # the redirect points at a server we watch, the key in its query
        target = elsewhere.url("/jobs?HAIQU_API_KEY=" + quote(key, safe=""))
        monkeypatch.setattr(adversary, "REDIRECT_LOCATION", target)
        env = {"HAIQU_API_KEY": key, "HAIQU_EDGE_URI": adv.url("")}
        run = cli(home, *QUIET_STATS, "sync", env=env)
        assert run.code == 2, run
        assert_one_line_error(run.err)
        line = run.err.strip()
        assert "redirects to" in line and "HAIQU_EDGE_URI" in line, line
        assert f"redirects to {elsewhere.url('')};" in line and "?" not in line, line
        for text, where in ((run.out, "stdout"), (run.err, "stderr")):
            assert_no_key(text, key, where)
        assert 1 <= adv.count("POST") <= 10
        assert adv.count("GET") == 0
        assert elsewhere.count() == 0, "a POST followed the redirect"
        assert elsewhere.connections == 0
    after = entries(db)
    assert after == before
    assert all(e["state"] == "pending" and e["attempts"] == 0 for e in after)
    assert emulator.stats()["requests"]["POST /jobs"] == 0


# --- reports, dry runs, retries, refresh ---------------------------------------------------


def test_last_sync_is_recorded_even_with_nothing_to_send(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    run = cli(logbook_home, "sync", "--json", env=emulator.env())
    assert run.code == 0 and run.json() == {
        "synced": 0,
        "rejected": 0,
        "pending": 0,
        "refreshed": 0,
    }
    status = status_json(logbook_home)
    assert status["last_sync"] and status["last_sync"].endswith("Z")


def test_dry_run_lists_what_a_sync_then_sends(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """Entries waiting out a retry delay are still sent by a sync the user runs."""
    home = logbook_home
    db = seed_store(home, 6)
    env = emulator.env()
    emulator.set_faults(error_rate=1.0, error_status=500)
    assert cli(home, "sync", "--max-time", "2", env=env).code == 1
    assert all(e["attempts"] >= 1 and e["state"] == "pending" for e in entries(db))
    dry = cli(home, "sync", "--dry-run", "--json", env=env).json()
    emulator.clear_faults()
    run = cli(home, "sync", "--json", "--no-refresh", env=env).json()
    assert dry["would_send"] == 6 == run["synced"]
    assert_exactly_once(db, emulator)


def test_dry_run_without_an_endpoint_names_the_default_and_sends_nothing(
    logbook_home: Path,
) -> None:
    """There is no "no endpoint" error any more: the default is the SDK's."""
    seed_store(logbook_home, 2)
    run = cli(logbook_home, "sync", "--dry-run", env={"HAIQU_API_KEY": "k"})
    assert run.code == 0, run
    assert "2 entries would be sent to https://api.haiqu.ai" in run.out


def test_no_key_exit_2(logbook_home: Path) -> None:
    seed_store(logbook_home, 1)
    run = cli(logbook_home, "sync", env={"HAIQU_EDGE_URI": f"http://127.0.0.1:{closed_port()}"})
    assert run.code == 2, run
    assert "HAIQU_API_KEY" in run.err
    assert_one_line_error(run.err)


def test_one_rejected_the_rest_synced_then_retry(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    home = logbook_home
    db = seed_store(home, 10)
    bad = entries(db)[3]
    # Local validation refuses a bad status, so craft one in the store.
    set_row(db, bad["id"], status="Finished-ish")
    run = cli(home, "sync", "--json", "--no-refresh", env=emulator.env())
    assert run.code == 1, run
    assert run.json() == {"synced": 9, "rejected": 1, "pending": 0, "refreshed": 0}
    by_id = {e["id"]: e for e in entries(db)}
    assert by_id[bad["id"]]["state"] == "rejected"
    assert "422" in by_id[bad["id"]]["last_error"] and "status" in by_id[bad["id"]]["last_error"]
    assert all(e["state"] == "synced" for i, e in by_id.items() if i != bad["id"])
    # a rejected entry from an earlier run is not sent again and does not count
    again = cli(home, "sync", "--json", "--no-refresh", env=emulator.env())
    assert again.code == 0 and again.json()["rejected"] == 0
    assert emulator.stats()["requests"]["POST /jobs"] == 10
    retry = cli(home, "retry", bad["id"])
    assert retry.code == 0, retry
    assert cli(home, "show", bad["id"], "--json").json()["state"] == "pending"


def test_json_report_dry_run_limit_and_refresh(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    home = logbook_home
    db = seed_store(home, 12)
    env = emulator.env()
    dry = cli(home, "sync", "--dry-run", env=env)
    assert dry.code == 0 and "12" in dry.out
    assert emulator.stats()["requests"]["POST /jobs"] == 0
    assert states(db)["pending"] == 12

    limited = cli(home, "sync", "--json", "--limit", "5", "--no-refresh", env=env)
    assert limited.code == 1
    assert limited.json() == {"synced": 5, "rejected": 0, "pending": 7, "refreshed": 0}
    assert emulator.stats()["jobs_created"] == 5

    rest = cli(home, "sync", "--json", env=env)
    assert rest.code == 0, rest
    report = rest.json()
    assert set(report) == {"synced", "rejected", "pending", "refreshed"}
    assert report["synced"] == 7 and report["pending"] == 0 and report["rejected"] == 0
    # the refresh looks at entries synced before the run: the 5 of the limited run
    assert report["refreshed"] == 5
    assert_exactly_once(db, emulator)
    status = status_json(home)
    assert status["last_sync"] and status["counts"]["synced"] == 12

    # the emulator moves jobs to Done after a while: wait for the server, not a clock
    wait_until(
        lambda: all(j["status"] == "Done" for j in emulator.jobs()), what="the jobs to be Done"
    )
    gets = emulator.stats()["requests"]["GET /jobs/{job_id}"]
    skipped = cli(home, "sync", "--json", "--no-refresh", env=env)
    assert skipped.json() == {"synced": 0, "rejected": 0, "pending": 0, "refreshed": 0}
    assert emulator.stats()["requests"]["GET /jobs/{job_id}"] == gets
    # (the 5 refreshed by the last run may already be Done locally: how many are left
    # unfinished depends on the clock, so count them rather than assume 12)
    unfinished = [e for e in entries(db) if e["remote_status"] != "Done"]
    assert len(unfinished) >= 7  # those synced by the last run were not refreshed by it
    refreshed = cli(home, "sync", "--json", env=env)
    assert refreshed.code == 0
    assert refreshed.json()["refreshed"] == len(unfinished)
    assert {e["remote_status"] for e in entries(db)} == {"Done"}
    # nothing unfinished is left to refresh
    assert cli(home, "sync", "--json", env=env).json()["refreshed"] == 0


def _retry_times(db: Path) -> list[tuple[float, str | None]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT next_attempt_at, synced_at FROM entries ORDER BY id"))


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    ("fmt", "clock_offset"),
    [("seconds", 0), ("date", 0), ("date", 86400), ("date", -86400)],
    ids=["seconds", "date", "date-server-clock-a-day-ahead", "date-server-clock-a-day-behind"],
)
def test_retry_after_is_honoured(
    logbook_home: Path, emulator: EmulatorProcess, fmt: str, clock_offset: int
) -> None:
    """No retry before it is due, and not much later either, whatever the server's clock
    says (a date is read against the answer's own Date).  No wall-clock figure: the
    stored retry time is compared with the stored time of the success."""
    db = seed_store(logbook_home, 2)
    emulator.set_faults(
        rate_limit_next=2, retry_after=2, retry_after_format=fmt, clock_offset=clock_offset
    )
    sent_after = time.time()  # every 429 is answered after this
    run = cli(logbook_home, "sync", "--json", "--no-refresh", env=emulator.env())
    assert run.code == 0, run  # a day ahead, the 300 s cap would have ended the run
    assert emulator.stats()["requests"]["POST /jobs"] == 4  # no retry before it was due
    assert_exactly_once(db, emulator)
    for next_attempt_at, synced_at in _retry_times(db):
        assert next_attempt_at is not None and synced_at is not None
        # the server's 2 s (an HTTP date has whole seconds), not 0 because its clock is behind
        assert next_attempt_at >= sent_after + 1, next_attempt_at - sent_after
        assert _epoch(synced_at) >= next_attempt_at, (synced_at, next_attempt_at)


@pytest.mark.parametrize("fmt", ["seconds", "date"])
def test_a_long_retry_after_is_kept_for_the_next_run(
    logbook_home: Path, emulator: EmulatorProcess, fmt: str
) -> None:
    """A Retry-After beyond the run's retry window ends the run; the entries keep it."""
    db = seed_store(logbook_home, 2)
    emulator.set_faults(rate_limit_next=2, retry_after=60, retry_after_format=fmt)
    sent_after = time.time()  # every 429 is answered after this
    run = cli(logbook_home, "sync", "--json", "--no-refresh", env=emulator.env())
    assert run.code == 1, run
    assert run.json()["pending"] == 2
    assert emulator.stats()["requests"]["POST /jobs"] == 2  # not retried within the run
    for next_attempt_at, synced_at in _retry_times(db):
        assert synced_at is None
        # at least the server's 60 s (an HTTP date has whole seconds)
        assert next_attempt_at >= sent_after + 58, next_attempt_at - sent_after
    # a sync the user asks for sends them now anyway
    sync_until_done(logbook_home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_auth_header(logbook_home: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(logbook_home, 5)
    run = cli(logbook_home, "sync", "--auth", "header", "--json", env=emulator.env())
    assert run.code == 0, run
    assert_exactly_once(db, emulator)


def test_request_deadline_against_a_trickling_server(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    home = logbook_home
    db = seed_store(home, 3)
    write_config(home, ["request_timeout = 1.0"])
    emulator.set_faults(trickle_seconds=4.0, routes=["*"])
    # cli() fails the test if the sync hangs on the trickling response
    run = cli(home, "sync", "--json", "--max-time", "2.5", env=emulator.env())
    assert run.code == 1, run
    assert run.json()["pending"] == 3
    for e in entries(db):
        assert e["state"] == "pending" and e["remote_id"] is None
    assert min(maybe_sent_flags(db)) == 1  # each one may have reached the server
    assert emulator.stats()["jobs_created"] == 3  # stored, but no answer arrived in time
    emulator.clear_faults()
    sync_until_done(home, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_deadline_on_post_only_reconciles_within_the_run(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    db = seed_store(logbook_home, 3)
    write_config(logbook_home, ["request_timeout = 0.5"])
    emulator.set_faults(trickle_seconds=3.0)  # POST only: lookups answer at once
    run = cli(logbook_home, "sync", "--json", "--no-refresh", env=emulator.env())
    assert run.code == 0, run
    assert_exactly_once(db, emulator)


def test_vv_logs_each_request_with_its_route_status_and_time_never_the_key(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """As rclone's -vv: what went over the wire, one line a request; and nothing without it."""
    seed_store(logbook_home, 3)
    emulator.set_faults(fail_next=1, fail_status=503)
    run = cli(logbook_home, "-vv", "--stats", "0", "sync", env=emulator.env())
    assert run.code == 0, run.err
    assert_no_key(run.out + run.err, emulator.key, "sync -vv")
    wire = [line for line in run.err.splitlines() if " -> " in line and " ms" in line]
    posts = [line for line in wire if f"POST {emulator.url}/jobs -> " in line]
    assert len(posts) == 4, run.err  # three jobs, one of them twice (the 503)
    assert sum("-> 503 in " in line for line in posts) == 1
    assert sum("-> 200 in " in line for line in posts) == 3
    assert any(f"GET {emulator.url}/experiments/" in line for line in wire), run.err  # look-up
    assert all(line.split(" logbook: ", 1)[0].endswith("Z") for line in wire)  # timestamped
    quiet = cli(logbook_home, "-v", "--stats", "0", "sync", env=emulator.env())
    assert quiet.code == 0 and " -> 200 in " not in quiet.err
