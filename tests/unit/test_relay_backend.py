"""The relay's store backend: concurrent POSTs share commits (group commit), answered after them."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from logbook.relay import COMMIT_BATCH, ID_PREFIX, StoreBackend
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


def test_every_job_and_a_start_mark_jobs_to_be_looked_up_upstream_first(tmp_path: Path) -> None:
    """Every job the relay takes is looked up upstream before its first post (its lab may
    have sent it to the API by another way meanwhile); a start marks the pending jobs of a
    store written before that rule.
    """
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        fresh, offered = s.relay.record_batch(
            [_job(hash="h1"), _job(hash="h2")], ["relay:a", "relay:a"], [False, True]
        )
        assert s.get(fresh.entry.id).maybe_sent and s.get(offered.entry.id).maybe_sent
        with s.write() as conn:  # as an older relay left it
            conn.execute("UPDATE entries SET maybe_sent = 0 WHERE id = ?", (fresh.entry.id,))
        assert s.relay.mark_started() == 2  # both wait to be forwarded
        assert s.get(fresh.entry.id).maybe_sent


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


def _stored(db_path: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT id, experiment_id, hash FROM entries ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_same_hash_in_two_experiments_is_two_jobs(tmp_path: Path) -> None:
    """The relay de-duplicates by (experiment_id, hash): a POST of experiment B, first or
    repeated, alone or in a batch with A's, never gets experiment A's job back."""
    db_path = tmp_path / "relay.db"

    async def main() -> dict[str, list[dict[str, object]]]:
        db = StoreWorker(str(db_path))
        backend = StoreBackend(db, on_commit=lambda: None)
        try:
            a = await backend.create({"experiment_id": "exp-a", "hash": "h1"}, "lab")
            b = await backend.create({"experiment_id": "exp-b", "hash": "h1"}, "lab")
            b_again = await backend.create({"experiment_id": "exp-b", "hash": "h1"}, "lab")
            # one commit for all of these: new and repeated, both experiments, both hashes
            mixed = await asyncio.gather(*(
                backend.create({"experiment_id": exp, "hash": h}, "lab")
                for h in ("h2", "h1") for exp in ("exp-a", "exp-b", "exp-b", "exp-a")
            ))  # fmt: skip
            found = [await backend.find(exp, "h1") for exp in ("exp-a", "exp-b", "exp-c")]
        finally:
            db.close()
        return {"one_by_one": [a, b, b_again], "mixed": list(mixed), "found": found}

    got = asyncio.run(main())
    a, b, b_again = got["one_by_one"]
    assert a["id"] != b["id"]
    assert (b_again["id"], b_again["experiment_id"]) == (b["id"], "exp-b")
    for job, (h, exp) in zip(
        got["mixed"], [(h, e) for h in ("h2", "h1") for e in ("exp-a", "exp-b", "exp-b", "exp-a")],
        strict=True,
    ):  # fmt: skip
        assert (job["experiment_id"], job["hash"]) == (exp, h), job
    ids = {(j["experiment_id"], j["hash"]): j["id"] for j in got["mixed"]}
    assert ids[("exp-a", "h1")] == a["id"] and ids[("exp-b", "h1")] == b["id"]
    assert len(set(ids.values())) == 4  # two hashes in two experiments: four jobs
    found_a, found_b, found_c = got["found"]
    assert found_a is not None and found_a["id"] == a["id"]
    assert found_b is not None and found_b["id"] == b["id"]
    assert found_c is None
    assert sorted((e, h) for _, e, h in _stored(db_path)) == [
        ("exp-a", "h1"), ("exp-a", "h2"), ("exp-b", "h1"), ("exp-b", "h2"),
    ]  # fmt: skip


def test_more_posts_at_once_than_one_commit_holds_are_all_answered_and_stored(
    tmp_path: Path,
) -> None:
    """1,200 POSTs queued before the writer runs: more than ``COMMIT_BATCH``, so the writer
    commits several batches, and every request is answered with its own stored job."""
    db_path = tmp_path / "relay.db"
    n = 1200
    assert n > 2 * COMMIT_BATCH

    async def main() -> tuple[list[dict[str, object]], int]:
        db = StoreWorker(str(db_path))
        backend = StoreBackend(db, on_commit=lambda: None)
        try:
            jobs = await asyncio.wait_for(
                asyncio.gather(*(
                    backend.create({"experiment_id": "flood", "hash": f"h{i}"}, "lab")
                    for i in range(n)
                )),
                timeout=60,
            )  # fmt: skip
            await backend.drain()
        finally:
            db.close()
        return list(jobs), backend.commits

    jobs, commits = asyncio.run(main())
    assert [j["hash"] for j in jobs] == [f"h{i}" for i in range(n)]  # each its own answer
    assert len({j["id"] for j in jobs}) == n
    assert commits >= -(-n // COMMIT_BATCH)  # no commit held more than one batch
    stored = _stored(db_path)
    assert len(stored) == n
    assert {f"{ID_PREFIX}{i}" for i, _, _ in stored} == {j["id"] for j in jobs}


def test_a_store_that_cannot_be_read_is_never_a_job_the_relay_lacks(tmp_path: Path) -> None:
    """A 404 for ``GET /jobs/{id}`` tells a lab its relay lost the job (it offers it again):
    a store that fails to answer (busy past patience, an I/O error) must be an error (503),
    not "no such job"; an id it does not hold is.
    """
    import pytest

    from logbook.errors import StoreError

    async def main() -> None:
        db = StoreWorker(str(tmp_path / "relay.db"))
        backend = StoreBackend(db, on_commit=lambda: None)
        try:
            held = await backend.create({"experiment_id": "e", "hash": "h"}, "lab-a")
            assert (await backend.get(str(held["id"])))["id"] == held["id"]  # type: ignore[index]
            assert await backend.get(f"{ID_PREFIX}99") is None  # not held: a clean 404

            def broken(entry_id: object) -> object:
                raise StoreError("store relay.db: disk I/O error")

            db.store.get = broken  # type: ignore[method-assign]
            with pytest.raises(StoreError):
                await backend.get(str(held["id"]))
        finally:
            db.close()

    asyncio.run(main())


def test_a_circuit_hash_only_one_post_carries_is_the_same_job(tmp_path: Path) -> None:
    """The Haiqu SDK posts a Result with its circuit's hash; the Result's file, read by
    ``logbook import``, has none: one job.  Two circuit hashes that differ are a conflict.
    """
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        sdk = s.relay.record_batch([_job(circuit_hash="c-1")], ["relay:sdk"])[0]
        held = s.relay.record_batch([_job(), _job(circuit_hash="c-2")], ["relay:a"] * 2)
        assert [h.conflict for h in held] == [False, True]
        assert held[0].entry.id == sdk.entry.id
        bare = s.relay.record_batch([_job(hash="h2")], ["relay:a"])[0]
        again = s.relay.record_batch([_job(hash="h2", circuit_hash="c-1")], ["relay:sdk"])[0]
        assert not again.conflict and again.entry.id == bare.entry.id


def test_a_name_is_a_label_not_content(tmp_path: Path) -> None:
    """The Haiqu SDK names a Result "Local job <uuid> - ...", logbook's reader after its
    circuits: one job, however it is named (its results are what a conflict is about)."""
    from logbook.store import Store

    with Store(tmp_path / "relay.db") as s:
        first = s.relay.record_batch([_job(name="Local job 1234 - run")], ["relay:sdk"])[0]
        again = s.relay.record_batch([_job(name="bell +2 on ibm_kyiv")], ["relay:lab"])[0]
        assert not again.conflict and again.entry.id == first.entry.id
        other = s.relay.record_batch([_job(name="x", results='{"1": 2}')], ["relay:lab"])[0]
        assert other.conflict
