"""A lab machine's own store restored from a backup: what was sent since is never sent twice.

The API does not de-duplicate posts. A backup put back over the store brings
back, as pending, every entry posted since the backup was taken. The sync
tells from the mark beside the store (``<store>.sent``) that the store is an
older copy of itself, and looks those entries up before posting any of them.
"""

from __future__ import annotations

from pathlib import Path

from support import assert_exactly_once, backup, cli, make_jobs, put_back, seed_store, states

from logbook.emulator.testing import EmulatorProcess
from logbook.store import Store
from logbook.store.sentmark import mark_path

LOOKUPS = "GET /experiments/{experiment_id}/jobs/{job_hash}"


def test_a_store_restored_from_a_backup_posts_nothing_twice(
    logbook_home: Path, emulator: EmulatorProcess, tmp_path: Path
) -> None:
    db = seed_store(logbook_home, 30)
    first = cli(logbook_home, "sync", "--no-refresh", env=emulator.env())  # 30 sent
    assert first.code == 0, first.err
    nightly = tmp_path / "nightly.db"
    backup(db, nightly)  # the backup knows of those 30 as synced
    with Store(db) as store:  # the lab goes on: 20 more jobs, sent
        store.record_many(make_jobs(20, "exp-after"))
    second = cli(logbook_home, "sync", "--no-refresh", env=emulator.env())
    assert second.code == 0, second.err
    assert emulator.stats()["jobs_created"] == 50

    put_back(nightly, db)  # the disk died; last night's copy comes back
    assert states(db)["synced"] == 30 and states(db)["pending"] == 0
    with Store(db) as store:  # the 20 are recorded again from their result files
        store.record_many(make_jobs(20, "exp-after"))
        store.record_many(make_jobs(5, "exp-new"))  # and 5 new jobs
    lookups = emulator.stats()["requests"].get(LOOKUPS, 0)
    third = cli(logbook_home, "sync", "--no-refresh", env=emulator.env())
    assert third.code == 0, third.err
    assert "restored from a backup" in third.err
    assert_exactly_once(db, emulator)  # 55 jobs, each once, each with the API's id
    assert emulator.stats()["requests"].get(LOOKUPS, 0) - lookups == 25

    # told once: the next run after more jobs looks nothing up
    with Store(db) as store:
        store.record_many(make_jobs(3, "exp-later"))
    fourth = cli(logbook_home, "sync", "--no-refresh", env=emulator.env())
    assert fourth.code == 0 and "restored" not in fourth.err, fourth.err
    assert emulator.stats()["requests"].get(LOOKUPS, 0) - lookups == 25
    assert_exactly_once(db, emulator)


def test_an_ordinary_sync_looks_nothing_up_and_a_damaged_mark_is_no_evidence(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    db = seed_store(logbook_home, 10)
    assert cli(logbook_home, "sync", "--no-refresh", env=emulator.env()).code == 0
    assert mark_path(str(db)).exists()
    for body in (b"", b"{not json", b'{"store_id": "another", "generation": 99}'):
        mark_path(str(db)).write_bytes(body)
        with Store(db) as store:
            store.record_many(make_jobs(2, f"exp-{len(body)}"))
        run = cli(logbook_home, "sync", "--no-refresh", env=emulator.env())
        assert run.code == 0 and "restored" not in run.err, run.err
    assert emulator.stats()["requests"].get(LOOKUPS, 0) == 0
    assert_exactly_once(db, emulator)

