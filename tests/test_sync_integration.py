"""``logbook sync`` as a real process against the emulator on loopback.

Exactly-once is checked on the server's side: the emulator does not
de-duplicate, so ``duplicates == 0`` and ``jobs_created == N`` together mean
every entry arrived once, and each entry's ``remote_id`` must be the id of the
server's job for its hash.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sync_support import (
    assert_exactly_once,
    entries,
    run_cli,
    seed_store,
    set_row,
    started,
    states,
    sync_until_done,
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
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_faults_end_exactly_once(tmp_path: Path, emulator: EmulatorProcess, fault: str) -> None:
    db = seed_store(tmp_path, 100)
    emulator.set_faults(**FAULTS[fault])
    # --max-time keeps the backoff tail short; the next run picks up the rest
    # (and interrupting a run is one more way to be tested for duplicates).
    sync_until_done(tmp_path, emulator.env(), "--no-refresh", "--max-time", "3")
    assert_exactly_once(db, emulator)
    injected = emulator.stats()["injected"]
    assert sum(injected.values()) > 0, "the fault never fired"


@pytest.mark.parametrize("engine", ["httpx", "wire"])
def test_both_http_engines(tmp_path: Path, emulator: EmulatorProcess, engine: str) -> None:
    db = seed_store(tmp_path, 150)
    env = {**emulator.env(), "LOGBOOK_HTTP_ENGINE": engine}
    emulator.set_faults(drop_rate=0.15, error_rate=0.15, bad_json_rate=0.1)
    sync_until_done(tmp_path, env, "--no-refresh")
    assert_exactly_once(db, emulator)
    assert emulator.stats()["injected"].get("dropped", 0) > 0


def test_kill_9_mid_backlog_then_resync(tmp_path: Path, emulator: EmulatorProcess) -> None:
    n = 1500
    db = seed_store(tmp_path, n)
    emulator.set_faults(latency_ms=20)
    with started(tmp_path, "sync", "--concurrency", "8", env=emulator.env()) as proc:
        deadline = time.monotonic() + 30
        while True:
            created = emulator.stats()["jobs_created"]
            if created >= n * 0.3:
                break
            assert proc.poll() is None, "sync finished before it could be killed"
            assert time.monotonic() < deadline, "sync made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    created = emulator.stats()["jobs_created"]
    assert n * 0.1 <= created <= n * 0.9, created
    left = states(db)
    assert left["sending"] > 0 or left["pending"] > 0  # the kill left work behind
    emulator.clear_faults()
    sync_until_done(tmp_path, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    # what the killed run left 'sending' was looked up before being posted again
    assert emulator.stats()["requests"]["GET /experiments/{experiment_id}/jobs/{job_hash}"] > 0


def test_ctrl_c_mid_backlog_leaves_nothing_sending(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    n = 600
    db = seed_store(tmp_path, n)
    emulator.set_faults(latency_ms=50)
    with started(tmp_path, "sync", "--concurrency", "8", env=emulator.env()) as proc:
        deadline = time.monotonic() + 30
        while emulator.stats()["jobs_created"] < n * 0.2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    left = states(db)
    assert left["sending"] == 0, left  # released or marked maybe_sent, none stuck
    assert 0 < left["synced"] < n
    emulator.clear_faults()
    sync_until_done(tmp_path, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_two_syncs_at_once(tmp_path: Path, emulator: EmulatorProcess) -> None:
    n = 600
    db = seed_store(tmp_path, n)
    emulator.set_faults(latency_ms=20, drop_rate=0.05)
    args = ("sync", "--json", "--no-refresh", "--concurrency", "16")
    with (
        started(tmp_path, *args, env=emulator.env()) as a,
        started(tmp_path, *args, env=emulator.env()) as b,
    ):
        out_a, err_a = a.communicate(timeout=60)
        out_b, err_b = b.communicate(timeout=60)
    assert a.returncode in (0, 1), err_a
    assert b.returncode in (0, 1), err_b
    emulator.clear_faults()
    sync_until_done(tmp_path, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)
    # both really sent, and neither sent what the other held
    synced_a, synced_b = json.loads(out_a)["synced"], json.loads(out_b)["synced"]
    assert synced_a > 0 and synced_b > 0, (synced_a, synced_b)
    assert synced_a + synced_b <= n


@pytest.mark.parametrize("how", ["unauthorized", "wrong-key"])
def test_401_exit_3_and_entries_untouched(
    tmp_path: Path, emulator: EmulatorProcess, how: str
) -> None:
    seed_store(tmp_path, 30)
    # give the entries some history (attempts, last_error, a retry time), so that
    # "untouched" means something
    emulator.set_faults(rate_limit_next=30, retry_after=120)
    assert run_cli(tmp_path, "sync", "--json", env=emulator.env()).code == 1
    emulator.clear_faults()
    env = emulator.env()
    if how == "unauthorized":
        emulator.set_faults(unauthorized=True)
    else:
        env["HAIQU_API_KEY"] = "not+the/key="
    before = run_cli(tmp_path, "list", "--json").json()
    run = run_cli(tmp_path, "sync", env=env)
    assert run.code == 3, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "key" in lines[0] and "Traceback" not in run.err, run.err
    after = run_cli(tmp_path, "list", "--json").json()
    assert after == before
    assert {e["state"] for e in after} == {"pending"} and all(e["attempts"] == 1 for e in after)
    assert emulator.stats()["jobs_created"] == 0


def test_unreachable_exit_4_quickly(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 20)
    before = entries(db)
    env = {"HAIQU_API_KEY": "k", "HAIQU_EDGE_URI": f"http://127.0.0.1:{free_port()}"}
    t = time.monotonic()
    run = run_cli(tmp_path, "sync", env=env)
    assert time.monotonic() - t < 5
    assert run.code == 4, run
    assert len(run.err.strip().splitlines()) == 1 and "cannot reach" in run.err
    assert entries(db) == before


def test_emulator_stopped_exit_4(tmp_path: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(tmp_path, 10)
    env = emulator.env()
    emulator.stop()  # the fixture starts it again for the next test
    before = entries(db)
    t = time.monotonic()
    run = run_cli(tmp_path, "sync", "--json", env=env)
    assert run.code == 4 and time.monotonic() - t < 5, run
    assert entries(db) == before


def test_refresh_against_a_stopped_server_exits_4(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Nothing left to send, statuses still unfinished, server gone: exit 4, not 0."""
    db = seed_store(tmp_path, 5)
    env = emulator.env()
    assert run_cli(tmp_path, "sync", "--no-refresh", env=env).code == 0
    assert {e["remote_status"] for e in entries(db)} == {"Submitted"}
    emulator.stop()
    before = entries(db)
    run = run_cli(tmp_path, "sync", env=env)
    assert run.code == 4, run
    assert "cannot reach" in run.err and len(run.err.strip().splitlines()) == 1
    assert entries(db) == before


def test_last_sync_is_recorded_even_with_nothing_to_send(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    run = run_cli(tmp_path, "sync", "--json", env=emulator.env())
    assert run.code == 0 and run.json() == {
        "synced": 0,
        "rejected": 0,
        "pending": 0,
        "refreshed": 0,
    }
    status = run_cli(tmp_path, "status", "--json").json()
    assert status["last_sync"] and status["last_sync"].endswith("Z")


def test_dry_run_lists_what_a_sync_then_sends(tmp_path: Path, emulator: EmulatorProcess) -> None:
    """Entries waiting out a retry delay are still sent by a sync the user runs."""
    db = seed_store(tmp_path, 6)
    env = emulator.env()
    emulator.set_faults(error_rate=1.0, error_status=500)
    assert run_cli(tmp_path, "sync", "--max-time", "2", env=env).code == 1
    assert all(e["attempts"] >= 1 and e["state"] == "pending" for e in entries(db))
    dry = run_cli(tmp_path, "sync", "--dry-run", "--json", env=env).json()
    emulator.clear_faults()
    run = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=env).json()
    assert dry["would_send"] == 6 == run["synced"]
    assert_exactly_once(db, emulator)


def test_one_rejected_the_rest_synced_then_retry(tmp_path: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(tmp_path, 10)
    bad = entries(db)[3]
    # Local validation refuses a bad status, so craft one in the store.
    set_row(db, bad["id"], status="Finished-ish")
    run = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=emulator.env())
    assert run.code == 1, run
    assert run.json() == {"synced": 9, "rejected": 1, "pending": 0, "refreshed": 0}
    by_id = {e["id"]: e for e in entries(db)}
    assert by_id[bad["id"]]["state"] == "rejected"
    assert "422" in by_id[bad["id"]]["last_error"] and "status" in by_id[bad["id"]]["last_error"]
    assert all(e["state"] == "synced" for i, e in by_id.items() if i != bad["id"])
    # a rejected entry from an earlier run is not sent again and does not count
    again = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=emulator.env())
    assert again.code == 0 and again.json()["rejected"] == 0
    assert emulator.stats()["requests"]["POST /jobs"] == 10
    retry = run_cli(tmp_path, "retry", bad["id"])
    assert retry.code == 0, retry
    assert run_cli(tmp_path, "show", bad["id"], "--json").json()["state"] == "pending"


def test_json_report_dry_run_limit_and_refresh(tmp_path: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(tmp_path, 12)
    env = emulator.env()
    dry = run_cli(tmp_path, "sync", "--dry-run", env=env)
    assert dry.code == 0 and "12" in dry.out
    assert emulator.stats()["requests"]["POST /jobs"] == 0
    assert states(db)["pending"] == 12

    limited = run_cli(tmp_path, "sync", "--json", "--limit", "5", "--no-refresh", env=env)
    assert limited.code == 1
    assert limited.json() == {"synced": 5, "rejected": 0, "pending": 7, "refreshed": 0}
    assert emulator.stats()["jobs_created"] == 5

    rest = run_cli(tmp_path, "sync", "--json", env=env)
    assert rest.code == 0, rest
    report = rest.json()
    assert set(report) == {"synced", "rejected", "pending", "refreshed"}
    assert report["synced"] == 7 and report["pending"] == 0 and report["rejected"] == 0
    assert_exactly_once(db, emulator)
    status = run_cli(tmp_path, "status", "--json").json()
    assert status["last_sync"] and status["counts"]["synced"] == 12

    time.sleep(1.2)  # the emulator moves jobs to Done after 1 s
    gets = emulator.stats()["requests"]["GET /jobs/{job_id}"]
    skipped = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=env)
    assert skipped.json() == {"synced": 0, "rejected": 0, "pending": 0, "refreshed": 0}
    assert emulator.stats()["requests"]["GET /jobs/{job_id}"] == gets
    refreshed = run_cli(tmp_path, "sync", "--json", env=env)
    assert refreshed.code == 0
    assert refreshed.json()["refreshed"] == 12
    assert {e["remote_status"] for e in entries(db)} == {"Done"}
    # nothing unfinished is left to refresh
    assert run_cli(tmp_path, "sync", "--json", env=env).json()["refreshed"] == 0


@pytest.mark.parametrize("fmt", ["seconds", "date"])
def test_retry_after_is_honoured(tmp_path: Path, emulator: EmulatorProcess, fmt: str) -> None:
    db = seed_store(tmp_path, 2)
    emulator.set_faults(rate_limit_next=2, retry_after=2, retry_after_format=fmt)
    t = time.monotonic()
    run = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=emulator.env())
    elapsed = time.monotonic() - t
    assert run.code == 0, run
    # an HTTP date has whole seconds, so "2 s from now" may be a little over 1 s
    assert elapsed >= (1.9 if fmt == "seconds" else 0.9), elapsed
    assert emulator.stats()["requests"]["POST /jobs"] == 4  # no retry before it was due
    assert_exactly_once(db, emulator)


def test_auth_header(tmp_path: Path, emulator: EmulatorProcess) -> None:
    db = seed_store(tmp_path, 5)
    run = run_cli(tmp_path, "sync", "--auth", "header", "--json", env=emulator.env())
    assert run.code == 0, run
    assert_exactly_once(db, emulator)


def test_request_deadline_against_a_trickling_server(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    db = seed_store(tmp_path, 3)
    write_config(tmp_path, ["request_timeout = 1.0"])
    emulator.set_faults(trickle_seconds=4.0, routes=["*"])
    t = time.monotonic()
    run = run_cli(tmp_path, "sync", "--json", "--max-time", "2.5", env=emulator.env())
    assert time.monotonic() - t < 8, "the sync hung on a trickling response"
    assert run.code == 1, run
    assert run.json()["pending"] == 3
    for e in entries(db):
        assert e["state"] == "pending" and e["remote_id"] is None
    with sqlite3.connect(db) as conn:  # each one may have reached the server
        assert conn.execute("SELECT min(maybe_sent) FROM entries").fetchone()[0] == 1
    assert emulator.stats()["jobs_created"] == 3  # stored, but no answer arrived in time
    emulator.clear_faults()
    sync_until_done(tmp_path, emulator.env(), "--no-refresh")
    assert_exactly_once(db, emulator)


def test_deadline_on_post_only_reconciles_within_the_run(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    db = seed_store(tmp_path, 3)
    write_config(tmp_path, ["request_timeout = 0.5"])
    emulator.set_faults(trickle_seconds=3.0)  # POST only: lookups answer at once
    t = time.monotonic()
    run = run_cli(tmp_path, "sync", "--json", "--no-refresh", env=emulator.env())
    assert time.monotonic() - t < 10
    assert run.code == 0, run
    assert_exactly_once(db, emulator)


@pytest.mark.parametrize("missing", ["HAIQU_EDGE_URI", "HAIQU_API_KEY"])
def test_no_endpoint_or_key_exit_2(tmp_path: Path, missing: str) -> None:
    seed_store(tmp_path, 1)
    env = {"HAIQU_API_KEY": "k", "HAIQU_EDGE_URI": "http://127.0.0.1:9"}
    del env[missing]
    run = run_cli(tmp_path, "sync", env=env)
    assert run.code == 2, run
    assert missing in run.err and len(run.err.strip().splitlines()) == 1
