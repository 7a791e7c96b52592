"""The SQLite store: identity, ordering, state transitions, durability settings, safety."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from logbook.errors import NotFound, StoreError
from logbook.jobs import prepare
from logbook.store import _V1, SCHEMA_VERSION, Outcome, Store

HOST = socket.gethostname()


def job(i: int | str, experiment: str = "exp", **fields: Any) -> dict[str, Any]:
    doc = {"experiment_id": experiment, "name": f"job {i}", "results": f'{{"n": "{i}"}}'}
    return prepare({**doc, **fields})


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


# --- recording ----------------------------------------------------------------


def test_record_and_get(store: Store) -> None:
    entry, created = store.record(job(1), source="test")
    assert created
    got = store.get(entry.id)
    assert got.to_dict() == entry.to_dict()
    assert got.state == "pending" and got.attempts == 0 and got.source == "test"
    assert got.results == '{"n": "1"}'
    assert store.get(str(entry.id)).id == entry.id


def test_same_experiment_and_hash_is_one_entry(store: Store) -> None:
    first, created1 = store.record(job(1, hash="h"))
    again, created2 = store.record(job(2, hash="h"))  # other content, same identity
    assert created1 and not created2
    assert again.id == first.id and again.name == "job 1"  # the first one is kept
    other, created3 = store.record(job(1, experiment="other", hash="h"))
    assert created3 and other.id != first.id
    assert store.counts()["pending"] == 2


def test_record_many_counts_created_and_known(store: Store) -> None:
    created, known = store.record_many([job(i) for i in range(10)], batch=3)
    assert (created, known) == (10, 0)
    created, known = store.record_many([job(i) for i in range(5, 15)], batch=4)
    assert (created, known) == (5, 5)
    assert len(store.list()) == 15


def test_get_missing(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get(999)
    with pytest.raises(NotFound):
        store.get("abc")


def test_list_newest_first_with_filters_and_limit(store: Store) -> None:
    ids = [store.record(job(i, experiment="a" if i % 2 else "b"))[0].id for i in range(7)]
    assert [e.id for e in store.list()] == ids[::-1]
    assert [e.id for e in store.list(limit=3)] == ids[::-1][:3]
    assert [e.id for e in store.list(experiment_id="a")] == [i for i in ids[::-1] if i in ids[1::2]]
    assert store.list(limit=0) == []
    # a page size smaller than the result still streams everything, in order
    got = [e.id for e in store.iter_entries(page=2)]
    assert got == ids[::-1]
    assert [e.id for e in store.iter_entries(newest_first=False, page=3)] == ids
    store.claim(2, lease_seconds=60)
    assert {e.id for e in store.list(state="sending")} == set(ids[:2])
    assert [e.id for e in store.list(state="pending", limit=2)] == ids[::-1][:2]


def test_counts_and_status(store: Store) -> None:
    assert store.counts() == {"pending": 0, "sending": 0, "synced": 0, "rejected": 0}
    st = store.status()
    assert st["oldest_pending"] is None and st["last_sync"] is None
    entries = [store.record(job(i))[0] for i in range(5)]
    claimed = store.claim(3, lease_seconds=60)
    store.settle(
        [
            Outcome(claimed[0].id, "synced", remote_id="r1", remote_status="Done"),
            Outcome(claimed[1].id, "rejected", error="422: bad"),
        ]
    )
    assert store.counts() == {"pending": 2, "sending": 1, "synced": 1, "rejected": 1}
    st = store.status()
    assert st["db"] == store.path
    assert st["oldest_pending"] == entries[2].created_at  # sending counts as not yet sent
    store.set_meta("last_sync", "2025-01-01T00:00:00Z")
    assert store.status()["last_sync"] == "2025-01-01T00:00:00Z"


def test_retry(store: Store) -> None:
    a, b, c = (store.record(job(i))[0] for i in range(3))
    claimed = store.claim(3, lease_seconds=60)
    store.settle([Outcome(e.id, "rejected", error="nope") for e in claimed[:2]])
    store.settle([Outcome(claimed[2].id, "synced", remote_id="r", remote_status="Done")])
    assert store.retry([a.id]) == 1
    assert store.get(a.id).state == "pending"
    assert store.retry([a.id, c.id]) == 0  # not rejected: nothing to do
    assert store.get(c.id).state == "synced"
    with pytest.raises(NotFound):
        store.retry([12345])
    assert store.retry(all_rejected=True) == 1
    assert store.get(b.id).state == "pending" and store.get(b.id).last_error == "nope"
    assert store.counts()["rejected"] == 0


# --- claim / settle ------------------------------------------------------------


def test_claim_and_settle_transitions(store: Store) -> None:
    ids = [store.record(job(i))[0].id for i in range(4)]
    claimed = store.claim(10, lease_seconds=60)
    assert [e.id for e in claimed] == ids
    assert all(e.state == "sending" and not e.maybe_sent for e in claimed)
    assert store.claim(10, lease_seconds=60) == []  # nothing left to take
    store.settle(
        [
            Outcome(ids[0], "synced", remote_id="r0", remote_status="Queued"),
            Outcome(ids[1], "rejected", error="422 name too long"),
            Outcome(ids[2], "pending", error="503", next_attempt_at=time.time() + 3600),
            Outcome(ids[3], "released"),
        ]
    )
    e0, e1, e2, e3 = (store.get(i) for i in ids)
    assert (e0.state, e0.remote_id, e0.remote_status, e0.attempts) == ("synced", "r0", "Queued", 1)
    assert e0.synced_at and e0.last_error is None
    assert (e1.state, e1.last_error, e1.attempts) == ("rejected", "422 name too long", 1)
    assert (e2.state, e2.last_error, e2.attempts) == ("pending", "503", 1)
    assert (e3.state, e3.attempts) == ("pending", 0)
    # e2 backs off: not due now, due later
    assert [e.id for e in store.claim(10, lease_seconds=60)] == [ids[3]]
    later = store.claim(10, lease_seconds=60, now=time.time() + 7200)
    assert [e.id for e in later] == [ids[2]]
    assert [e.id for e in store.unfinished_remote(10)] == [ids[0]]
    store.set_remote_status([(ids[0], "Done")])
    assert store.unfinished_remote(10) == []


def test_settle_only_touches_entries_this_process_holds(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as a, Store(path) as b:
        eid = a.record(job(1))[0].id
        a.claim(1, lease_seconds=60)
        b.owner = f"{HOST}:1"  # another live owner (pid 1 always exists)
        b.settle([Outcome(eid, "synced", remote_id="x", remote_status="Done")])
        assert a.get(eid).state == "sending"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_owner_sending_entry_is_reclaimed_with_maybe_sent(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as crashed, Store(path) as survivor:
        crashed.owner = f"{HOST}:{_dead_pid()}"
        ids = [crashed.record(job(i))[0].id for i in range(3)]
        assert len(crashed.claim(2, lease_seconds=3600)) == 2  # then it "crashed"
        got = survivor.claim(10, lease_seconds=60)
        assert [e.id for e in got] == ids
        flags = {e.id: e.maybe_sent for e in got}
        assert flags == {ids[0]: True, ids[1]: True, ids[2]: False}
        # after a lookup found nothing, the retry keeps the flag until it succeeds
        survivor.settle([Outcome(ids[0], "pending", error="timeout", maybe_sent=False)])
        assert survivor.get(ids[0]).maybe_sent
        survivor.settle([Outcome(ids[1], "synced", remote_id="r", remote_status="Done")])
        assert not survivor.get(ids[1]).maybe_sent


def test_live_owner_lease_is_respected_until_it_expires(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store(path) as busy, Store(path) as other:
            busy.owner = f"{HOST}:{sleeper.pid}"
            eid = busy.record(job(1))[0].id
            now = time.time()
            busy.claim(1, lease_seconds=100, now=now)
            assert other.claim(10, lease_seconds=60, now=now + 50) == []
            assert other.due(10, now=now + 50) == []
            late = other.claim(10, lease_seconds=60, now=now + 101)
            assert [e.id for e in late] == [eid] and late[0].maybe_sent
            # the first owner's late answer no longer counts
            busy.settle([Outcome(eid, "synced", remote_id="x", remote_status="Done")])
            assert other.get(eid).state == "sending" and other.get(eid).remote_id is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_other_host_owner_is_trusted_until_lease_expires(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as remote, Store(path) as local:
        remote.owner = "some-other-host:1"
        remote.record(job(1))
        now = time.time()
        remote.claim(1, lease_seconds=100, now=now)
        assert local.claim(10, lease_seconds=60, now=now + 1) == []
        assert len(local.claim(10, lease_seconds=60, now=now + 200)) == 1


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
    assert store.integrity() == "ok"


def test_corrupt_file_gives_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not an sqlite database, just some text" * 100)
    with pytest.raises(StoreError) as info:
        Store(path)
    msg = str(info.value)
    assert str(path) in msg and ("corrupt" in msg or "not a logbook store" in msg)
    assert path.read_bytes().startswith(b"this is not")  # untouched


def test_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Store(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_store_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(StoreError) as info:
        Store(blocker / "store.db")
    assert "cannot create store" in str(info.value)


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
        with Store(path) as s:  # opens (WAL needs -shm; it may refuse: then a clear error)
            with pytest.raises(StoreError):
                s.record(job(2))
    except StoreError as err:
        assert str(path) in str(err)
    finally:
        path.chmod(0o600)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "newer" in str(info.value) and "upgrade" in str(info.value)


def test_migration_from_v1_keeps_data_and_new_features_work(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(_V1)
    conn.executemany(
        "INSERT INTO entries (experiment_id, hash, name, status, job_type, results, metrics,"
        " state, remote_id, remote_status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            ("old", "h1", "first", "Done", "User local job", '{"0": 1}', '{"fid": 0.9}',
             "pending", None, None, "2024-01-01T00:00:00.000000Z"),
            ("old", "h2", "second", "Done", "Run", "", "{}", "synced", "r2", "Queued",
             "2024-01-02T00:00:00.000000Z"),
            ("old", "h3", "third", "Error", "Run", "", "{}", "rejected", None, None,
             "2024-01-03T00:00:00.000000Z"),
        ],
    )  # fmt: skip
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    with Store(path) as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        e1 = s.find("old", "h1")
        assert e1 is not None and e1.name == "first" and e1.metrics == {"fid": 0.9}
        assert e1.created_at == "2024-01-01T00:00:00.000000Z" and not e1.maybe_sent
        assert s.counts() == {"pending": 1, "sending": 0, "synced": 1, "rejected": 1}
        # v2: claim/settle bookkeeping, meta; v3: the file ledger
        claimed = s.claim(10, lease_seconds=60)
        assert [e.hash for e in claimed] == ["h1"]
        s.settle([Outcome(claimed[0].id, "synced", remote_id="r1", remote_status="Done")])
        assert [e.hash for e in s.unfinished_remote(10)] == ["h2"]
        s.set_meta("last_sync", "2025-01-01T00:00:00Z")
        s.record_file("/x.json", size=1, mtime_ns=1, sha256="0", jobs=[job(9)], reason=None)
        assert s.file_seen("/x.json") == (1, 1, "0", "recorded")
        assert s.retry(all_rejected=True) == 1
        assert s.record(job(10, experiment="old", hash="h1"))[1] is False
    with Store(path) as s:  # opening again migrates nothing and loses nothing
        assert len(s.list()) == 4


def test_record_file_is_atomic_with_its_ledger(store: Store) -> None:
    created, known = store.record_file(
        "/a.jsonl", size=3, mtime_ns=5, sha256="abc", jobs=[job(1), job(2)], reason=None
    )
    assert (created, known) == (2, 0)
    created, known = store.record_file(
        "/a.jsonl", size=4, mtime_ns=6, sha256="abd", jobs=[job(1)], reason=None
    )
    assert (created, known) == (0, 1)
    assert store.file_seen("/a.jsonl") == (4, 6, "abd", "recorded")
    store.record_file("/bad.json", size=1, mtime_ns=1, sha256="x", jobs=[], reason="not JSON")
    assert store.file_counts() == {"recorded": 1, "invalid": 1}
    assert store.status()["invalid_files"] == 1


# --- several processes at once ---------------------------------------------------

_WRITER = r"""
import sys
from logbook.jobs import prepare
from logbook.store import Store
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.stdin.readline()  # start together
s = Store(path)
for i in range(n):
    s.record(prepare({"experiment_id": "conc", "hash": f"{tag}-{i}", "name": tag}))
    if i % 50 == 0:
        s.counts()
s.close()
print("ok")
"""

_READER = r"""
import sys, time
from logbook.store import Store
path = sys.argv[1]
sys.stdin.readline()
s = Store(path)
deadline = time.monotonic() + 3
reads = 0
while time.monotonic() < deadline:
    s.list(limit=20); s.status(); reads += 1
print("reads", reads)
"""


def test_many_processes_open_a_new_store_and_record_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "store.db"  # neither the file nor its directory exist
    writers, per = 6, 200
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

    def spawn(code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(path), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    procs = [spawn(_WRITER, f"w{k}", str(per)) for k in range(writers)]
    procs.append(spawn(_READER))
    time.sleep(0.5)  # let every interpreter start, then release them together
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    assert outs[-1][0].startswith("reads")
    with Store(path) as s:
        assert s.counts()["pending"] == writers * per
        assert len({e.hash for e in s.iter_entries()}) == writers * per
        assert s.integrity() == "ok"
