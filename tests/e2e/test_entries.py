"""Correcting entries as a user does, in real processes: ``rm``, ``retry`` (and ``--missing``),
and what ``show`` says about where a job is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support import Run, assert_one_line_error, entries, set_row, states

from logbook.emulator.testing import EmulatorProcess

RunCli = Callable[..., Run]


def _record(run_cli: RunCli, i: int, experiment: str = "bell") -> str:
    res = run_cli("record", "-e", experiment, "--name", f"b{i}", "--results", f'{{"00": {i}}}')
    assert res.code == 0, res.err
    return res.out.strip()


def test_rm_removes_pending_and_rejected_entries_and_record_makes_it_again(
    run_cli: RunCli, db_path: Path
) -> None:
    a, b, c = (_record(run_cli, i) for i in range(3))
    set_row(db_path, b, state="rejected", last_error="HTTP 422: name too long")
    res = run_cli("rm", a, b)
    assert res.code == 0, res.err
    assert res.out.strip() == "2 entries removed"
    assert [e["id"] for e in entries(db_path)] == [c]
    assert states(db_path) == {"pending": 1, "sending": 0, "synced": 0, "rejected": 0}
    # rm then record is how an entry is corrected: the same job can be recorded anew.
    again = _record(run_cli, 0)
    assert again not in (a, b, c)
    assert run_cli("rm", again, "--json").json() == {"removed": 1}


def test_rm_refuses_a_synced_entry_with_the_reason_and_removes_nothing(
    run_cli: RunCli, db_path: Path
) -> None:
    a, b = _record(run_cli, 1), _record(run_cli, 2)
    set_row(db_path, b, state="synced", remote_id="job-77", remote_status="Done")
    before = entries(db_path)
    res = run_cli("rm", a, b)
    assert res.code == 1, res.err
    assert_one_line_error(res.err)
    assert f"entry {b} is synced" in res.err and "job-77" in res.err
    assert "nothing removed" in res.err
    assert entries(db_path) == before  # not even the pending one


def test_rm_refuses_an_entry_being_sent_or_maybe_delivered(run_cli: RunCli, db_path: Path) -> None:
    a, b = _record(run_cli, 1), _record(run_cli, 2)
    set_row(db_path, a, state="sending", lease_owner="host:1:2:t", lease_until=9e18)
    set_row(db_path, b, maybe_sent=1)
    for entry_id, words in ((a, "being sent"), (b, "may have reached the server")):
        res = run_cli("rm", entry_id)
        assert res.code == 1 and words in res.err, res.err
        assert_one_line_error(res.err)
    assert len(entries(db_path)) == 2


def test_rm_of_an_unknown_id_removes_nothing(run_cli: RunCli, db_path: Path) -> None:
    a = _record(run_cli, 1)
    res = run_cli("rm", a, "4242")
    assert res.code == 1 and "no entry with id 4242" in res.err
    assert_one_line_error(res.err)
    assert [e["id"] for e in entries(db_path)] == [a]
    assert run_cli("rm").code == 2  # an id is required


def test_retry_says_why_a_synced_entry_is_left_as_it_is(run_cli: RunCli, db_path: Path) -> None:
    a, b = _record(run_cli, 1), _record(run_cli, 2)
    set_row(db_path, a, state="synced", remote_id="job-9", remote_status="Done")
    res = run_cli("retry", a, b)
    assert res.code == 0, res.err
    assert res.out.strip() == "0 entries back to pending"
    assert f"entry {a} is synced (the server's job job-9): nothing to retry" in res.err
    assert f"entry {b} is already pending" in res.err
    data = run_cli("retry", a, "--json").json()
    assert data["retried"] == 0 and data["unchanged"][0]["id"] == a
    assert "synced" in data["unchanged"][0]["reason"]


def test_retry_missing_sends_again_what_the_api_lost_looking_it_up_first(
    run_cli: RunCli, db_path: Path, emulator: EmulatorProcess
) -> None:
    env = emulator.env()
    ids = [_record(run_cli, i) for i in range(3)]
    assert run_cli("sync", env=env).code == 0
    remote = {e["id"]: e["remote_id"] for e in entries(db_path)}
    # The API lost the first job (a person deleted it) and still has the second; a refresh
    # marked both missing; the third is as it was.
    emulator.reset()
    for job in ids[1:2]:
        set_row(db_path, job, missing_at="2026-01-01T00:00:00Z")
    set_row(db_path, ids[0], missing_at="2026-01-01T00:00:00Z")
    assert run_cli("status", "--json").json()["missing"] == 2
    res = run_cli("retry", "--missing")
    assert res.code == 0 and res.out.strip() == "2 entries back to pending", res.err
    back = {e["id"]: e for e in entries(db_path)}
    for job in ids[:2]:
        assert back[job]["state"] == "pending" and back[job]["remote_id"] is None
    assert back[ids[2]]["state"] == "synced" and back[ids[2]]["remote_id"] == remote[ids[2]]
    assert run_cli("status", "--json").json()["missing"] == 0
    assert run_cli("sync", "--no-refresh", env=env).code == 0
    stats = emulator.stats()
    assert stats["jobs_created"] == 2 and stats["duplicates"] == 0, stats
    # Each was looked up before it was posted again (the API may have had it back).
    assert stats["requests"].get("GET /experiments/{experiment_id}/jobs/{job_hash}", 0) >= 2, stats
    assert {e["state"] for e in entries(db_path)} == {"synced"}


def test_retry_missing_takes_back_a_job_the_api_has_again_without_posting(
    run_cli: RunCli, db_path: Path, emulator: EmulatorProcess
) -> None:
    env = emulator.env()
    a = _record(run_cli, 1)
    assert run_cli("sync", env=env).code == 0
    set_row(db_path, a, missing_at="2026-01-01T00:00:00Z")
    assert run_cli("retry", "--missing").code == 0
    assert run_cli("sync", "--no-refresh", env=env).code == 0
    assert emulator.stats()["jobs_created"] == 1  # found by its look-up, not posted twice
    assert entries(db_path)[0]["state"] == "synced"


def test_retry_and_rm_on_a_store_that_does_not_exist_create_nothing(
    run_cli: RunCli, db_path: Path, tmp_path: Path
) -> None:
    assert run_cli("retry", "--all").out.strip() == "0 entries back to pending"
    assert run_cli("rm", "1").code == 1
    assert not db_path.exists()
    typo = tmp_path / "typo" / "x.db"
    for command in (["retry", "--missing"], ["rm", "1"]):
        res = run_cli("--db", typo, *command)
        assert res.code == 1 and "no store at" in res.err, res.err
    assert not typo.parent.exists()


def _json(run: Run) -> dict[str, object]:
    assert run.code == 0, run.err
    data: dict[str, object] = json.loads(run.out)
    return data
