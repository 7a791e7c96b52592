"""The relay's store backend: concurrent POSTs share commits (group commit), answered after them."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from logbook.relay import ID_PREFIX, StoreBackend
from logbook.store.worker import StoreWorker


def test_concurrent_posts_share_commits_and_each_is_answered_once_stored(tmp_path: Path) -> None:
    db_path = tmp_path / "relay.db"
    n = 300

    async def main() -> tuple[list[dict[str, object]], int, int]:
        db = StoreWorker(str(db_path))
        commits: list[int] = []
        backend = StoreBackend(db, on_commit=lambda: commits.append(1))
        try:
            bodies = [{"experiment_id": "gc", "hash": f"h{i % (n - 20)}"} for i in range(n)]
            jobs = await asyncio.gather(*(backend.create(b, "lab-a") for b in bodies))
            await backend.drain()
        finally:
            db.close()
        return jobs, backend.commits, len(commits)

    jobs, commits, notified = asyncio.run(main())
    assert 1 <= commits < n // 10, commits  # many POSTs per transaction, not one each
    assert notified == commits
    # every answer names a stored job; a repeated (experiment, hash) gets the same one
    by_hash: dict[str, set[str]] = {}
    for job in jobs:
        by_hash.setdefault(str(job["hash"]), set()).add(str(job["id"]))
    assert all(len(ids) == 1 for ids in by_hash.values())
    conn = sqlite3.connect(db_path)
    try:
        stored = conn.execute("SELECT id, hash, source FROM entries").fetchall()
    finally:
        conn.close()
    assert len(stored) == n - 20
    assert {f"{ID_PREFIX}{i}" for i, _, _ in stored} == {next(iter(v)) for v in by_hash.values()}
    assert {s for _, _, s in stored} == {"relay:lab-a"}


# --- what a relay holds: conflicts, retries, re-offers, a start on a restored store --------


def _job(**fields: object) -> dict[str, object]:
    from logbook.jobs import prepare

    return prepare({"experiment_id": "e", "hash": "h", "results": '{"0": 1}', **fields})


def test_one_identity_with_other_content_is_a_conflict_never_linked(tmp_path: Path) -> None:
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        first = s.relay.record_batch([_job()], ["relay:a"])[0]
        same, other = s.relay.record_batch(
            [_job(), _job(results='{"1": 9}')], ["relay:a", "relay:b"]
        )
        assert first.created and not first.conflict
        assert same.entry.id == first.entry.id and not same.created and not same.conflict
        assert other.conflict and other.entry.id == first.entry.id
        assert s.get(first.entry.id).results == '{"0": 1}'  # the held job is untouched
        # the same hash in another experiment is another job, not a conflict
        elsewhere = s.relay.record_batch([_job(experiment_id="e2")], ["relay:a"])[0]
        assert elsewhere.created and elsewhere.entry.id != first.entry.id


def test_a_rejected_job_posted_again_goes_back_to_be_forwarded(tmp_path: Path) -> None:
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        held = s.relay.record_batch([_job()], ["relay:a"])[0].entry
        with s.write() as conn:
            conn.execute(
                "UPDATE entries SET state = 'rejected', last_error = 'HTTP 422' WHERE id = ?",
                (held.id,),
            )
        again = s.relay.record_batch([_job()], ["relay:a"])[0]
        assert again.entry.state == "pending" and not again.created
        assert s.counts()["rejected"] == 0


def test_a_reoffer_and_a_start_mark_jobs_to_be_looked_up_upstream_first(tmp_path: Path) -> None:
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        fresh, offered = s.relay.record_batch(
            [_job(hash="h1"), _job(hash="h2")], ["relay:a", "relay:a"], [False, True]
        )
        assert not s.get(fresh.entry.id).maybe_sent and s.get(offered.entry.id).maybe_sent
        assert s.relay.mark_started() == 1  # the one not yet marked
        assert s.get(fresh.entry.id).maybe_sent
        assert s.relay.mark_started() == 0


def test_the_relay_serves_only_the_apis_statuses(tmp_path: Path) -> None:
    from logbook.relay import job_view
    from logbook.store import Store
    from logbook.vocab import STATUSES

    with Store(tmp_path / "relay.db") as s:
        e = s.relay.record_batch([_job()], ["relay:a"])[0].entry
        with s.write() as conn:
            conn.execute(
                "UPDATE entries SET state = 'synced', remote_id = 'api-1',"
                " remote_status = 'Unknown (Weird)' WHERE id = ?",
                (e.id,),
            )
        view = job_view(s.get(e.id))
        assert view["status"] in STATUSES and view["info"]["upstream_status"] in STATUSES
        assert view["info"]["upstream_status_raw"] == "Unknown (Weird)"
        assert view["info"]["upstream_id"] == "api-1"
