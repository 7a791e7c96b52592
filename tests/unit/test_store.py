"""The SQLite store: identity, ordering, state transitions, durability settings, safety.

Claims and leases are in test_leases.py, the watcher's ledger in test_ledger.py,
migrations from older stores and foreign files in test_schema.py.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from support import prepared_job as job  # noqa: E402

from logbook.errors import NotALogbookStore, NotFound, StoreError
from logbook.store import SCHEMA_VERSION, Status, Store
from logbook.store.connect import check_ours
from logbook.store.leases import Outcome
from logbook.store.schema import APPLICATION_ID, ENTRY_KEYS

# --- recording ----------------------------------------------------------------


def test_record_and_get(store: Store) -> None:
    entry, created = store.record(job(1), source="test")
    assert created
    got = store.get(entry.id)
    assert got.to_dict() == entry.to_dict()
    assert got.state == "pending" and got.attempts == 0 and got.source == "test"
    assert got.results == '{"n": "1"}'
    assert store.get(str(entry.id)).id == entry.id
    assert tuple(got.to_dict()) == ENTRY_KEYS and got.to_dict()["id"] == str(entry.id)


def test_same_experiment_and_hash_is_one_entry(store: Store) -> None:
    first, created1 = store.record(job(1, hash="h"))
    again, created2 = store.record(job(2, hash="h"))  # other content, same identity
    assert created1 and not created2
    assert again.id == first.id and again.name == "job 1"  # the first one is kept
    other, created3 = store.record(job(1, experiment="other", hash="h"))
    assert created3 and other.id != first.id
    assert store.counts()["pending"] == 2


def test_a_repeated_record_returns_the_entry_of_its_own_experiment(store: Store) -> None:
    """The look-up after ``ON CONFLICT DO NOTHING`` keys on the experiment too: the same hash
    in two experiments is two entries, and repeating the second gives the second back."""
    a, _ = store.record(job(1, experiment="exp-a", hash="shared"))
    b, created_b = store.record(job(2, experiment="exp-b", hash="shared"))
    assert created_b and b.id != a.id
    again, created = store.record(job(3, experiment="exp-b", hash="shared"))
    assert not created
    assert (again.id, again.experiment_id, again.name) == (b.id, "exp-b", "job 2")
    assert store.find("exp-b", "shared") == store.get(b.id)
    assert store.find("exp-a", "shared") == store.get(a.id)
    assert store.find("exp-c", "shared") is None


def test_record_many_counts_created_and_known(store: Store) -> None:
    created, known = store.record_many([job(i) for i in range(10)], batch=3)
    assert (created, known) == (10, 0)
    created, known = store.record_many([job(i) for i in range(5, 15)], batch=4)
    assert (created, known) == (5, 5)
    assert len(list(store.entries())) == 15


def test_record_keeps_metrics_and_source(store: Store) -> None:
    entry, _ = store.record(job(1, metrics={"fid": 0.9, "note": "ünïcode"}), source="cli")
    got = store.get(entry.id)
    assert got.metrics == {"fid": 0.9, "note": "ünïcode"} and got.source == "cli"
    assert store.find("exp", entry.hash) == got
    assert store.find("exp", "no-such-hash") is None


def test_get_missing(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get(999)
    with pytest.raises(NotFound):
        store.get("abc")


@pytest.mark.parametrize("text", ["²", "1e3", " 1", "-1", "1" * 19, str(10**20)])
def test_ids_the_user_types_are_ascii_digits(store: Store, text: str) -> None:
    store.record(job(1))
    with pytest.raises(NotFound):
        store.get(text)
    with pytest.raises(NotFound):
        store.retry([text])


def test_list_newest_first_with_filters_and_limit(store: Store, owner: str) -> None:
    ids = [store.record(job(i, experiment="a" if i % 2 else "b"))[0].id for i in range(7)]
    assert [e.id for e in store.entries()] == ids[::-1]
    assert [e.id for e in store.entries(limit=3)] == ids[::-1][:3]
    assert [e.id for e in store.entries(experiment_id="a")] == [
        i for i in ids[::-1] if i in ids[1::2]
    ]
    assert list(store.entries(limit=0)) == []
    # a page size smaller than the result still streams everything, in order
    got = [e.id for e in store.entries(page=2)]
    assert got == ids[::-1]
    assert [e.id for e in store.entries(newest_first=False, page=3)] == ids
    assert [e.id for e in store.entries(newest_first=False, page=3, limit=4)] == ids[:4]
    store.leases.claim(owner, 2, lease_seconds=60)
    assert {e.id for e in store.entries(state="sending")} == set(ids[:2])
    assert [e.id for e in store.entries(state="pending", limit=2)] == ids[::-1][:2]


def test_counts_and_status(store: Store, owner: str) -> None:
    assert store.counts() == {"pending": 0, "sending": 0, "synced": 0, "rejected": 0}
    st = store.status()
    assert isinstance(st, Status)
    assert st.oldest_pending is None and st.last_sync is None and st.invalid_files == 0
    entries = [store.record(job(i))[0] for i in range(5)]
    claimed = store.leases.claim(owner, 3, lease_seconds=60).entries
    store.leases.settle(
        owner,
        [
            Outcome(claimed[0].id, "synced", remote_id="r1", remote_status="Done"),
            Outcome(claimed[1].id, "rejected", error="422: bad"),
        ],
    )
    assert store.counts() == {"pending": 2, "sending": 1, "synced": 1, "rejected": 1}
    st = store.status()
    assert st.db == store.path
    assert st.oldest_pending == entries[2].created_at  # sending counts as not yet sent
    store.set_meta("last_sync", "2025-01-01T00:00:00Z")
    assert store.status().last_sync == "2025-01-01T00:00:00Z"
    assert store.get_meta("last_sync") == "2025-01-01T00:00:00Z"
    store.set_meta("last_sync", "2025-01-02T00:00:00Z")  # replaced, not added
    assert store.get_meta("last_sync") == "2025-01-02T00:00:00Z"
    assert store.get_meta("nothing") is None
    d = store.status().to_dict()
    # the contract's keys first, in its order; more may follow
    assert list(d)[:4] == ["db", "counts", "oldest_pending", "last_sync"]
    assert list(d)[4:] == [
        "invalid_files",
        "unconfirmed",
        "oldest_unconfirmed",
        "missing",
        "last_bundle_export",
        "last_receipt_applied",
    ]
    assert d["counts"] == store.counts() and d["last_sync"] == "2025-01-02T00:00:00Z"


def test_runs_history_sets_last_sync(store: Store) -> None:
    assert store.runs() == []
    for k in range(3):
        store.record_run({
            "ended_at": f"2026-01-0{k + 1}T00:00:00Z", "outcome": "ok", "synced": k,
            "rejected": 0, "pending": 0, "refreshed": 0, "elapsed": 1.5,
        })  # fmt: skip
    runs = store.runs(limit=2)
    assert [r["ended_at"] for r in runs] == ["2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"]
    assert runs[0]["synced"] == 2 and runs[0]["elapsed"] == 1.5
    assert store.status().last_sync == "2026-01-03T00:00:00Z"


def test_retry(store: Store, owner: str) -> None:
    a, b, c = (store.record(job(i))[0] for i in range(3))
    claimed = store.leases.claim(owner, 3, lease_seconds=60).entries
    store.leases.settle(owner, [Outcome(e.id, "rejected", error="nope") for e in claimed[:2]])
    store.leases.settle(
        owner, [Outcome(claimed[2].id, "synced", remote_id="r", remote_status="Done")]
    )
    assert store.retry([a.id]) == 1
    assert store.get(a.id).state == "pending"
    assert store.retry([a.id, c.id]) == 0  # not rejected: nothing to do
    assert store.get(c.id).state == "synced"
    with pytest.raises(NotFound):
        store.retry([12345])
    assert store.retry(all_rejected=True) == 1
    assert store.get(b.id).state == "pending" and store.get(b.id).last_error == "nope"
    assert store.counts()["rejected"] == 0
    assert store.retry([str(b.id)]) == 0  # ids as the user typed them


def test_retry_of_a_missing_id_changes_nothing(store: Store, owner: str) -> None:
    a = store.record(job(1))[0]
    store.leases.claim(owner, 1, lease_seconds=60)
    store.leases.settle(owner, [Outcome(a.id, "rejected", error="nope")])
    with pytest.raises(NotFound):
        store.retry([a.id, 12345])  # one transaction: the first is not retried either
    assert store.get(a.id).state == "rejected"


def test_entry_post_body_is_the_job(store: Store) -> None:
    j = job(1, metrics={"a": 1})
    entry = store.record(j)[0]
    assert store.get(entry.id).post_body() == j


def test_write_rolls_back_on_error(store: Store) -> None:
    store.record(job(1))
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            conn.execute("DELETE FROM entries")
            raise RuntimeError("boom")
    assert store.counts()["pending"] == 1
    assert not store.conn.in_transaction


# --- the file and its settings ------------------------------------------------------


def test_new_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "store.db"
    old = os.umask(0o022)
    try:
        Store(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_connection_is_wal_with_full_sync(store: Store) -> None:
    assert store.journal_mode() == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.schema_version() == SCHEMA_VERSION == 5
    assert store.scalar("PRAGMA application_id") == APPLICATION_ID
    assert store.integrity() == "ok"


def test_corrupt_file_gives_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    content = b"this is not an sqlite database, just some text" * 100
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            Store(path, readonly=readonly)
        msg = str(info.value)
        assert str(path) in msg and ("corrupt" in msg or "not a logbook store" in msg)
        assert path.read_bytes() == content  # untouched


def test_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Store(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(NotFound):
        Store(tmp_path / "nope.db", readonly=True)
    assert not (tmp_path / "nope.db").exists()


def test_store_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(StoreError) as info:
        Store(blocker / "store.db")
    assert "cannot create the store" in str(info.value)
    assert str(blocker / "store.db") in str(info.value)
    assert blocker.read_text() == "x"


def test_a_directory_or_fifo_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        Store(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError) as info:
            Store(ro / "store.db")
        assert str(ro / "store.db") in str(info.value)
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_store_file_can_still_be_read(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.record(job(1))
    path.chmod(0o400)
    try:
        with Store(path, readonly=True) as s:
            assert s.counts()["pending"] == 1
        try:
            with Store(path) as s:  # WAL needs -shm; it may refuse: then a clear error
                with pytest.raises(StoreError):
                    s.record(job(2))
        except StoreError as err:
            assert str(path) in str(err)
    finally:
        path.chmod(0o600)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_store_in_a_read_only_directory_is_readable(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    with Store(d / "s.db") as s:
        s.record(job(1))
    d.chmod(0o500)
    try:
        with Store(d / "s.db", readonly=True) as s:
            assert [e.name for e in s.entries()] == ["job 1"]
    finally:
        d.chmod(0o700)


def test_readonly_store_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        eid = s.record(job(1))[0].id
    with Store(path, readonly=True) as ro:
        assert ro.get(eid).name == "job 1" and ro.counts()["pending"] == 1
        with pytest.raises(StoreError, match="read-only"):
            ro.record(job(2))
        with pytest.raises(StoreError):
            ro.set_meta("k", "v")
    with Store(path) as s:
        assert s.counts()["pending"] == 1 and s.get_meta("k") is None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            Store(path, readonly=readonly)
        assert "newer" in str(info.value) and "upgrade" in str(info.value)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE entries (x)")  # even with a table of that name
    conn.commit()
    conn.close()
    with pytest.raises(NotALogbookStore, match="not a logbook store"):
        Store(path)
    assert NotALogbookStore.exit_code == 2


class _SetUpMeanwhile:
    """A connection through which another process sets the store up right after our first read."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.path, self.reads = conn, path, 0

    def execute(self, sql: str) -> sqlite3.Cursor:
        cursor = self.conn.execute(sql)
        if sql.startswith("PRAGMA"):
            self.reads += 1
            if self.reads == 1:  # the application id is read: now the other process commits
                Store(self.path).close()
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def test_a_store_set_up_by_another_process_while_checked_is_ours(tmp_path: Path) -> None:
    """Many processes open a new store at once: one sets it up while another checks the file.
    The check sees one state (empty or whole), so it never takes our store for a foreign one."""
    path = tmp_path / "store.db"
    path.touch()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()  # the writer commits beside our read
    checked = _SetUpMeanwhile(conn, path)
    check_ours(checked, str(path))  # type: ignore[arg-type]
    assert checked.reads >= 2 and not conn.in_transaction
    conn.close()
    assert Store(path).counts()  # and the store is whole


def test_reopening_a_store_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.record_many([job(i) for i in range(5)])
        s.set_meta("last_sync", "x")
    with Store(path) as s:
        assert s.counts()["pending"] == 5 and s.get_meta("last_sync") == "x"
        assert s.schema_version() == SCHEMA_VERSION and s.integrity() == "ok"
