"""Correcting entries as a user does, in real processes: ``rm``, ``retry`` (and ``--missing``),
and what ``show`` says about where a job is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from support import Run, assert_one_line_error, base_env, entries, set_row, states

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
    set_row(db_path, b, maybe_sent=1, attempts=1)
    for entry_id, words in ((a, "being sent"), (b, "may have reached the server")):
        res = run_cli("rm", entry_id)
        assert res.code == 1 and words in res.err, res.err
        assert_one_line_error(res.err)
    assert len(entries(db_path)) == 2


def test_rm_removes_a_pending_entry_only_flagged_to_be_looked_up_first(
    run_cli: RunCli, db_path: Path
) -> None:
    """An entry imported from a bundle (or in a store restored from a backup) is flagged to be
    looked up before its first post, but this store never sent it: it is pending, removable."""
    a = _record(run_cli, 1)
    set_row(db_path, a, maybe_sent=1, attempts=0)
    res = run_cli("rm", a)
    assert res.code == 0, res.err
    assert entries(db_path) == []


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


def test_show_tells_the_two_statuses_apart_and_names_the_api_id(
    run_cli: RunCli, db_path: Path
) -> None:
    a = _record(run_cli, 1)
    text = run_cli("show", a).out
    assert "recorded status:  Done" in text and "server status:" in text
    assert "\nstatus:" not in text and "remote_status:" not in text
    assert "API id:           - (the API does not have it yet)" in text
    # Straight to the API: the server's id is the API's.
    set_row(db_path, a, state="synced", remote_id="api-1", remote_status="Submitted",
            synced_at="2026-01-01T00:00:00Z")  # fmt: skip
    text = run_cli("show", a).out
    assert "server status:    Submitted" in text and "server id:        api-1" in text
    assert "API id:           api-1 (the server id: synced straight to the API)" in text
    shown = _json(run_cli("show", a, "--json"))
    assert list(shown)[-2:] == ["upstream_id", "confirmed"]
    assert shown["upstream_id"] is None and shown["confirmed"] is True
    # Through a relay: unconfirmed until the API's id comes back, and it says so.
    relay = "http://gateway.lab:8700"
    set_row(db_path, a, remote_id="relay-1", via=relay)
    text = run_cli("show", a).out
    assert f"relay:            {relay}" in text
    assert f"API id:           not confirmed yet (accepted by the relay at {relay};" in text
    assert _json(run_cli("show", a, "--json"))["confirmed"] is False
    set_row(db_path, a, upstream_id="api-77")
    assert "API id:           api-77\n" in run_cli("show", a).out
    shown = _json(run_cli("show", a, "--json"))
    assert shown["upstream_id"] == "api-77" and shown["confirmed"] is True
    listed = _json_list(run_cli("list", "--json"))
    assert "upstream_id" not in listed[0] and "confirmed" not in listed[0]  # the contract's keys


def _json_list(run: Run) -> list[dict[str, object]]:
    assert run.code == 0, run.err
    data: list[dict[str, object]] = json.loads(run.out)
    return data


def test_record_takes_the_experiment_from_config_toml(run_cli: RunCli, logbook_home: Path) -> None:
    from support import write_config

    missing = run_cli("record", "--results", "{}")
    assert missing.code == 2 and "--experiment" in missing.err and "config.toml" in missing.err
    assert_one_line_error(missing.err)
    write_config(logbook_home, ['experiment = "bell-lab"'])
    made = run_cli("record", "--results", "{}", "--json")
    assert made.code == 0, made.err
    assert made.json()["experiment_id"] == "bell-lab"
    given = run_cli("record", "-e", "other", "--results", "{}", "--json")
    assert given.json()["experiment_id"] == "other"  # the option wins
    logged = subprocess.run(
        [sys.executable, "-c", "import logbook; print(logbook.log({'00': 3}).experiment_id)"],
        env=base_env(logbook_home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert logged.stdout.strip() == "bell-lab", logged.stderr


def test_status_says_what_a_killed_sync_left_sending_will_become(
    run_cli: RunCli, logbook_home: Path
) -> None:
    for i in range(3):
        _record(run_cli, i)
    claim = (  # a sync (another process) that claimed two entries, then died (kill -9)
        "import sys; from logbook.store import Store; from logbook.store.leases import new_owner\n"
        "with Store(sys.argv[1]) as s: s.leases.claim(new_owner(), 2, lease_seconds=3600)"
    )
    subprocess.run([sys.executable, "-c", claim, str(logbook_home / "logbook.db")], check=True,
                   env=base_env(logbook_home), timeout=60)  # fmt: skip
    text = run_cli("status").out
    assert "2 sending" in text
    assert "left sending:   2 left 'sending' by a sync that is gone" in text
    assert "the next `logbook sync` looks each up on the server" in text


def test_doctor_names_where_the_key_came_from(run_cli: RunCli, logbook_home: Path) -> None:
    from support import write_config

    write_config(logbook_home, [f'api_key = "{"k" * 20}"'])
    (logbook_home / "config.toml").chmod(0o600)
    res = run_cli("doctor", "--json")
    key = next(c for c in json.loads(res.out) if c["check"] == "key")
    assert key["message"].endswith(f"(from api_key in {logbook_home / 'config.toml'})")
    res = run_cli("doctor", "--json", env={"HAIQU_API_KEY": "e" * 20})
    key = next(c for c in json.loads(res.out) if c["check"] == "key")
    assert key["message"].endswith("(from the environment, HAIQU_API_KEY)")
