"""Stores of every earlier schema version open with today's code and lose nothing;
a newer store and another program's SQLite file are refused and left byte-identical.

The fixtures (tests/fixtures/old_stores, see its README) were written by the
logbook of commit ef10a79.  Each test works on a copy: opening a fixture with
``Store`` would migrate it in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logbook.errors import NotALogbookStore, StoreError
from logbook.jobs import prepare
from logbook.store import SCHEMA_VERSION, Store
from logbook.store.leases import Outcome, end_owner, new_owner
from logbook.store.ledger import FileRead, FileState
from logbook.store.schema import APPLICATION_ID

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "old_stores"
VERSIONS = (1, 2, 3, 4)
#: The columns an entry of every earlier version had, compared one by one.
OLD_ENTRY_COLUMNS = (
    "id", "experiment_id", "hash", "circuit_hash", "name", "device_id", "shots", "status",
    "job_type", "results", "metrics", "state", "attempts", "last_error", "remote_id",
    "remote_status", "created_at", "synced_at", "source",
)  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_rows(path: Path, sql: str) -> list[dict[str, Any]]:
    """Rows read with plain sqlite3, read-only, so nothing is changed by the reading."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def pragma(path: Path, name: str) -> Any:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def columns(path: Path, table: str) -> list[tuple[Any, ...]]:
    """(name, type, notnull, default, pk) of each column, in table order."""
    conn = sqlite3.connect(path)
    try:
        return [tuple(r)[1:] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def indexes(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('index', 'trigger')"
            " AND sql IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    norm = {n: " ".join(s.replace("IF NOT EXISTS ", "").split()) for n, s in rows}
    return norm


@pytest.fixture
def fixtures_untouched() -> Iterator[None]:
    before = {v: sha256(FIXTURES / f"v{v}.db") for v in VERSIONS}
    yield
    assert {v: sha256(FIXTURES / f"v{v}.db") for v in VERSIONS} == before
    assert sorted(p.name for p in FIXTURES.iterdir()) == [
        "README.md",
        *(f"v{v}.db" for v in VERSIONS),
    ]


@pytest.fixture
def new_store(tmp_path: Path) -> Path:
    path = tmp_path / "new" / "logbook.db"
    Store(path).close()
    return path


def copy_of(version: int, tmp_path: Path) -> Path:
    dest = tmp_path / f"v{version}" / "logbook.db"
    dest.parent.mkdir()
    shutil.copyfile(FIXTURES / f"v{version}.db", dest)
    return dest


# --- every earlier version ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_old_store_migrates_and_keeps_every_entry(
    version: int, tmp_path: Path, fixtures_untouched: None
) -> None:
    path = copy_of(version, tmp_path)
    assert pragma(path, "user_version") == version
    assert pragma(path, "application_id") == (APPLICATION_ID if version >= 4 else 0)
    before = raw_rows(path, "SELECT * FROM entries ORDER BY id")
    assert len(before) == 5 and {r["experiment_id"] for r in before} == {f"exp-v{version}"}
    meta_before = raw_rows(path, "SELECT * FROM meta") if version >= 2 else []

    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 5
        assert s.scalar("PRAGMA application_id") == APPLICATION_ID
        assert s.integrity() == "ok"
        after = {e.id: e for e in s.entries(newest_first=False)}
        assert sorted(after) == [r["id"] for r in before]
        for old in before:
            e = after[old["id"]]
            for col in OLD_ENTRY_COLUMNS:
                want = json.loads(old[col]) if col == "metrics" else old[col]
                assert getattr(e, col) == want, (version, old["id"], col)
            assert s.find(old["experiment_id"], old["hash"]) == e
        states = [r["state"] for r in before]
        assert s.counts() == {
            st: states.count(st) for st in ("pending", "sending", "synced", "rejected")
        }
        if version >= 2:
            assert meta_before == [{"key": "last_sync", "value": "2026-11-20T10:00:00.000000Z"}]
            assert s.get_meta("last_sync") == "2026-11-20T10:00:00.000000Z"
            assert s.status().last_sync == "2026-11-20T10:00:00.000000Z"
            # the v2 bookkeeping columns keep their values too
            for old in before:
                e = after[old["id"]]
                assert (e.lease_owner, e.lease_until, e.maybe_sent) == (
                    old["lease_owner"], old["lease_until"], bool(old["maybe_sent"])
                )  # fmt: skip
        else:
            assert s.get_meta("last_sync") is None
            # the v2 columns a v1 store gets: nothing claimed, nothing maybe sent
            assert all(not e.maybe_sent and e.lease_owner is None for e in after.values())

    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert pragma(path, "journal_mode") == "wal"
    with Store(path) as s:  # opening again migrates nothing and loses nothing
        assert len(list(s.entries())) == 5


def test_v3_ledger_rows_are_readable(tmp_path: Path, fixtures_untouched: None) -> None:
    path = copy_of(3, tmp_path)
    raw = raw_rows(path, "SELECT * FROM files ORDER BY path")
    assert [r["path"] for r in raw] == ["/lab/results/a.json", "/lab/results/b.json"]
    with Store(path) as s:
        a = s.ledger.seen("/lab/results/a.json")
        assert a is not None
        assert (a.state.size, a.state.mtime_ns) == (raw[0]["size"], raw[0]["mtime_ns"])
        assert (a.sha256, a.outcome, a.reason) == ("0", "recorded", None)
        # no inode or ctime was recorded then: the file is read again once (never trusted)
        assert not a.unchanged(FileState(a.state.size, a.state.mtime_ns, 0, 0))
        b = s.ledger.seen("/lab/results/b.json")
        assert b is not None and (b.outcome, b.reason) == ("invalid", "not JSON")
        assert s.ledger.counts() == {"recorded": 1, "invalid": 1}
        assert s.ledger.invalid() == [("/lab/results/b.json", "not JSON")]
        assert s.status().invalid_files == 1
        # v5: the path as text (Datasette shows it), its bytes beside it (the key)
        assert s.scalar("SELECT count(*) FROM files WHERE typeof(path) = 'text'") == 2
        assert s.scalar("SELECT count(*) FROM files WHERE typeof(path_bytes) = 'blob'") == 2


def test_v4_ledger_paths_become_text_with_their_bytes_beside(
    tmp_path: Path, fixtures_untouched: None
) -> None:
    path = copy_of(4, tmp_path)
    with Store(path) as s:
        rows = s.read("SELECT path, path_bytes FROM files ORDER BY path_bytes")
        assert [(r["path"], bytes(r["path_bytes"])) for r in rows] == [
            ("/lab/results/a.json", b"/lab/results/a.json"),
            ("/lab/results/caf\\xe9.json", b"/lab/results/caf\xe9.json"),
        ]
        assert s.ledger.seen(os.fsdecode(b"/lab/results/caf\xe9.json")) is not None
        assert s.ledger.invalid() == [("/lab/results/caf\\xe9.json", "not JSON")]


def test_v4_relay_entries_are_unconfirmed_and_counts_are_kept_by_triggers(
    tmp_path: Path, fixtures_untouched: None
) -> None:
    path = copy_of(4, tmp_path)
    with Store(path) as s:
        relayed = s.get(2)
        assert relayed.remote_id == "relay-7" and relayed.via == "" and not relayed.confirmed
        assert s.get(1).confirmed and s.get(1).via is None
        assert s.counts() == {"pending": 1, "sending": 1, "synced": 2, "rejected": 1}
        s.retry(all_rejected=True)
        assert s.counts() == {"pending": 2, "sending": 1, "synced": 2, "rejected": 0}
        assert len(s.get_meta("store_id") or "") == 32


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "table", ["entries", "files", "runs", "meta", "relay_keys", "entry_counts"]
)
def test_migrated_tables_equal_a_new_stores(
    version: int, table: str, tmp_path: Path, new_store: Path, fixtures_untouched: None
) -> None:
    path = copy_of(version, tmp_path)
    Store(path).close()
    migrated, fresh = columns(path, table), columns(new_store, table)
    assert fresh, table
    assert sorted(c[0] for c in migrated) == sorted(c[0] for c in fresh)
    # name, type, NOT NULL, default and primary key of each column alike (the order of
    # the columns added by ALTER TABLE may differ; every query names its columns)
    assert sorted(migrated, key=str) == sorted(fresh, key=str)


@pytest.mark.parametrize("version", VERSIONS)
def test_migrated_tables_and_indexes_equal_a_new_stores(
    version: int, tmp_path: Path, new_store: Path, fixtures_untouched: None
) -> None:
    path = copy_of(version, tmp_path)
    Store(path).close()
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    assert [r["name"] for r in raw_rows(path, tables)] == [
        r["name"] for r in raw_rows(new_store, tables)
    ]
    assert indexes(path) == indexes(new_store)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_read_only_open_upgrades_an_old_store_once(
    version: int, tmp_path: Path, fixtures_untouched: None
) -> None:
    # `logbook status` on a store of an older logbook, where it may write: upgraded once
    path = copy_of(version, tmp_path)
    before = raw_rows(path, "SELECT id, hash, state FROM entries ORDER BY id")
    with Store(path, readonly=True) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert [(e.id, e.hash, e.state) for e in s.entries(newest_first=False)] == [
            (r["id"], r["hash"], r["state"]) for r in before
        ]
        with pytest.raises(StoreError, match="read-only"):
            s.set_meta("k", "v")
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID


def test_an_empty_file_opened_read_only_is_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with Store(path, readonly=True) as s:
        assert s.status().counts == {"pending": 0, "sending": 0, "synced": 0, "rejected": 0}
        assert list(s.entries()) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_migrated_store_works(version: int, tmp_path: Path, fixtures_untouched: None) -> None:
    path = copy_of(version, tmp_path)
    owner = new_owner()
    try:
        with Store(path) as s:
            exp = f"exp-v{version}"
            pending = [e.id for e in s.entries(state="pending", newest_first=False)]
            sending = [e.id for e in s.entries(state="sending")]
            # v2 and v3 hold one entry "sending" under a host that no longer exists and
            # whose lease ran out long ago: it is taken again, looked up before posting
            claimed = s.leases.claim(owner, 10, lease_seconds=60)
            assert sorted(e.id for e in claimed.entries) == sorted(pending + sending)
            assert {e.id for e in claimed.entries if e.maybe_sent} == set(sending)
            s.leases.settle(
                owner,
                [Outcome(e.id, "synced", remote_id=f"r{e.id}", remote_status="Queued")
                 for e in claimed.entries],
            )  # fmt: skip
            asked = s.leases.unfinished_remote(10) + s.leases.unconfirmed(10)
            assert [e.remote_status for e in asked] == ["Queued"] * (1 + len(claimed.entries))
            s.set_meta("last_sync", "2027-01-01T00:00:00Z")
            assert s.get_meta("last_sync") == "2027-01-01T00:00:00Z"
            j = prepare({"experiment_id": "new", "name": "n"})
            created, known = s.ledger.record(
                [FileRead("/x.json", FileState(1, 1, 1, 1), "0", jobs=[j])]
            )[0]
            assert (created, known) == (1, 0)
            assert s.ledger.seen("/x.json") is not None
            assert s.retry(all_rejected=True) == 1
            old = next(s.entries(experiment_id=exp, limit=1))
            again = prepare({"experiment_id": exp, "hash": old.hash, "name": "other"})
            assert s.record(again)[1] is False
            s.record_run({
                "ended_at": "2027-01-01T00:00:01Z", "outcome": "ok", "synced": 1, "rejected": 0,
                "pending": 0, "refreshed": 0, "elapsed": 0.1,
            })  # fmt: skip
            assert s.runs()[0]["synced"] == 1
        with Store(path) as s:
            assert len(list(s.entries())) == 6
    finally:
        end_owner(owner)


# --- refused files ---------------------------------------------------------------------


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_a_newer_store_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    content = path.read_bytes()
    assert side_files(path) == []
    with pytest.raises(StoreError) as info:
        Store(path)
    msg = str(info.value)
    assert "newer" in msg and "upgrade" in msg and str(path) in msg
    assert path.read_bytes() == content and side_files(path) == []
    with pytest.raises(StoreError) as info:
        Store(path, readonly=True)
    assert "newer" in str(info.value) and "upgrade" in str(info.value)
    assert path.read_bytes() == content
    assert pragma(path, "user_version") == 99


def foreign_db(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.execute("CREATE TABLE foo (a TEXT, b INTEGER)")
    conn.executemany("INSERT INTO foo VALUES (?, ?)", [("x", 1), ("y", 2)])
    conn.commit()
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "read-only"])
def test_another_programs_sqlite_file_is_refused_and_left_unchanged(
    tmp_path: Path, readonly: bool
) -> None:
    # `logbook status --db other.sqlite` used to switch such a file to WAL
    path = tmp_path / "other.sqlite"
    content = foreign_db(path)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(NotALogbookStore) as info:
        Store(path, readonly=readonly)
    assert "not a logbook store" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime
    assert side_files(path) == []  # no -wal, -shm or -journal left behind
    assert pragma(path, "journal_mode") == "delete"
    assert raw_rows(path, "SELECT * FROM foo") == [{"a": "x", "b": 1}, {"a": "y", "b": 2}]


@pytest.mark.parametrize(
    ("user_version", "rows"),
    [(0, 0), (7, 0), (1, 1)],  # 1: an old logbook store's version, but not its columns
)
def test_a_foreign_file_with_an_entries_table_is_left_unchanged(
    tmp_path: Path, user_version: int, rows: int
) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE entries (x)")
    conn.executemany("INSERT INTO entries VALUES (?)", [(i,) for i in range(rows)])
    conn.execute(f"PRAGMA user_version={user_version}")
    conn.commit()
    conn.close()
    content = path.read_bytes()
    with pytest.raises(NotALogbookStore):
        Store(path)
    assert path.read_bytes() == content and pragma(path, "journal_mode") == "delete"


def test_new_store_is_created_at_the_latest_version_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    # an empty file (made by `touch`) is a new store too
    empty = tmp_path / "empty.db"
    empty.touch()
    with Store(empty) as s:
        assert s.schema_version() == SCHEMA_VERSION and s.counts()["pending"] == 0
    assert os.stat(empty).st_size > 0
