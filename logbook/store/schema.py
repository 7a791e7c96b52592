"""The store's tables, declared once, and the migrations that bring older stores up to date.

``Entry`` is a job (``jobs.Job``, whose fields are declared there) plus its
local bookkeeping, declared here with each column's SQL.  The ``entries``
table, the SELECT list, the insert and the row factory are all built from
these two declarations, so a new field is one line.

A new store is created at the latest version in one step (``create``).  An
older one is brought up by ``MIGRATIONS[version:]``; those are history and
stay as they were written.  ``tests/fixtures/old_stores`` holds a store of
every earlier version, and a test checks each migrates to the same tables a
new store gets.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..jobs import JOB, JOB_FIELDS, Job
from ..vocab import STATES

#: ``PRAGMA application_id`` of a logbook store ("LogB"): another program's
#: SQLite file is never changed by logbook.
APPLICATION_ID = 0x4C6F6742
__all__ = ["APPLICATION_ID", "COLUMNS", "ENTRY_KEYS", "Entry", "STATES", "SCHEMA_VERSION"]


def _col(sql: str, default: Any = None, *, public: bool = True) -> Any:
    return field(default=default, metadata={"sql": sql, "public": public})


@dataclass(kw_only=True)
class Entry(Job):
    """One job in the logbook, as stored locally: the job's fields plus these."""

    id: int = _col("INTEGER PRIMARY KEY", 0)
    state: str = _col("TEXT NOT NULL DEFAULT 'pending'", "pending")
    attempts: int = _col("INTEGER NOT NULL DEFAULT 0", 0)
    last_error: str | None = _col("TEXT")
    remote_id: str | None = _col("TEXT")
    remote_status: str | None = _col("TEXT")
    created_at: str = _col("TEXT NOT NULL", "")
    synced_at: str | None = _col("TEXT")
    source: str | None = _col("TEXT")
    #: The server may hold this job already: look it up before posting it again.
    maybe_sent: bool = _col("INTEGER NOT NULL DEFAULT 0", False, public=False)
    next_attempt_at: float | None = _col("REAL", public=False)
    lease_owner: str | None = _col("TEXT", public=False)
    lease_until: float | None = _col("REAL", public=False)
    refreshed_at: str | None = _col("TEXT", public=False)
    #: Through a relay: the job's id at the relay's upstream (``info.upstream_id``).
    upstream_id: str | None = _col("TEXT", public=False)
    #: The relay (its base URL) that accepted the entry; None when the API itself did.
    #: Synced through a relay and no ``upstream_id`` yet: not confirmed.
    via: str | None = _col("TEXT", public=False)
    #: Direct to the API: when a refresh found the API no longer has the job (404).
    missing_at: str | None = _col("TEXT", public=False)

    @property
    def api_id(self) -> str | None:
        """The job's id at the API, once logbook knows it (through a relay: its upstream id)."""
        if self.state != "synced":
            return None
        return self.remote_id if self.via is None else self.upstream_id

    @property
    def confirmed(self) -> bool:
        """The API has the job and logbook knows it: synced, and not waiting on a relay."""
        return self.state == "synced" and (self.via is None or self.upstream_id is not None)

    def to_dict(self) -> dict[str, Any]:
        """The entry as ``list --json`` and ``show --json`` print it (``id`` as a string)."""
        d = {k: getattr(self, k) for k in ENTRY_KEYS}
        d["id"] = str(self.id)
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        return cls(**{name: convert(row[name]) for name, convert in _READERS})


_JOB_SQL = {
    "id": "TEXT NOT NULL",
    "short": "TEXT NOT NULL DEFAULT ''",
    "text": "TEXT NOT NULL DEFAULT ''",
    "json": "TEXT NOT NULL DEFAULT ''",
    "enum": "TEXT NOT NULL",
    "object": "TEXT NOT NULL DEFAULT '{}'",
}
_BOOKKEEPING = [f for f in fields(Entry) if "sql" in f.metadata]

#: Every column of ``entries``, in table order, with its SQL.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "INTEGER PRIMARY KEY"),
    *((f.name, _JOB_SQL[f.kind]) for f in JOB),
    *((f.name, f.metadata["sql"]) for f in _BOOKKEEPING if f.name != "id"),
)
#: The keys ``list --json`` / ``show --json`` print, in order: the contract's.
ENTRY_KEYS: tuple[str, ...] = (
    "id",
    *JOB_FIELDS,
    *(f.name for f in _BOOKKEEPING if f.metadata["public"] and f.name != "id"),
)
SELECT = f"SELECT {', '.join(name for name, _ in COLUMNS)} FROM entries"
#: The columns a new entry is inserted with (the rest take their defaults).
INSERT_COLUMNS: tuple[str, ...] = (*JOB_FIELDS, "created_at", "source")
_INSERT_LIST = ", ".join(INSERT_COLUMNS)
INSERT = (
    f"INSERT INTO entries ({_INSERT_LIST}) VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"
    " ON CONFLICT(experiment_id, hash) DO NOTHING"
)


def _text(value: Any) -> Any:
    return "" if value is None else value


_READERS: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
    (name, {"metrics": lambda v: json.loads(v) if v else {}, "maybe_sent": bool}.get(
        name, _text if name in JOB_FIELDS else (lambda v: v)))
    for name, _ in COLUMNS
)  # fmt: skip

# json.dumps() with options builds a new encoder on every call; bulk import calls it per row.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


#: Where ``metrics`` (an object, stored as JSON text) falls among the job fields, by name.
_METRICS = JOB_FIELDS.index("metrics")


def row(job: Mapping[str, Any], created_at: str, source: str | None) -> tuple[Any, ...]:
    """The inserted values of a prepared job: pure, so import's worker processes build rows too."""
    values = [job[name] for name in JOB_FIELDS]
    values[_METRICS] = _compact_json(values[_METRICS] or {})
    return (*values, created_at, source)


# --- tables (the latest version; a new store is made from these) ----------------

FILES = """CREATE TABLE files (
    path TEXT NOT NULL,
    path_bytes BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL DEFAULT 0,
    ctime_ns INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    recorded INTEGER NOT NULL DEFAULT 0,
    known INTEGER NOT NULL DEFAULT 0,
    seen_at TEXT NOT NULL,
    read_ns INTEGER NOT NULL DEFAULT 0
)"""
RUNS = """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    ended_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    synced INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    refreshed INTEGER NOT NULL,
    elapsed REAL NOT NULL
)"""
RELAY_KEYS = """CREATE TABLE relay_keys (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)"""
#: How many entries are in each state, kept by triggers: ``status`` and a metrics
#: scrape read four rows instead of counting a million.
ENTRY_COUNTS = (
    "CREATE TABLE entry_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "CREATE TRIGGER entry_counts_insert AFTER INSERT ON entries BEGIN"
    " UPDATE entry_counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER entry_counts_delete AFTER DELETE ON entries BEGIN"
    " UPDATE entry_counts SET n = n - 1 WHERE state = old.state; END",
    "CREATE TRIGGER entry_counts_update AFTER UPDATE OF state ON entries"
    " WHEN old.state IS NOT new.state BEGIN"
    " UPDATE entry_counts SET n = n - 1 WHERE state = old.state;"
    " UPDATE entry_counts SET n = n + 1 WHERE state = new.state; END",
)
INDEXES = (
    "CREATE INDEX entries_state ON entries (state, id)",
    "CREATE INDEX entries_experiment ON entries (experiment_id, id)",
    "CREATE INDEX entries_remote ON entries (remote_status, id) WHERE state = 'synced'",
    "CREATE INDEX files_outcome ON files (outcome)",
    "CREATE INDEX entries_source ON entries (source, state)",
    "CREATE INDEX entries_unconfirmed ON entries (synced_at)"
    " WHERE state = 'synced' AND via IS NOT NULL AND upstream_id IS NULL",
    "CREATE INDEX entries_missing ON entries (missing_at) WHERE missing_at IS NOT NULL",
)

#: Queries for unconfirmed entries name their partial index: without statistics (a store
#: never gathers them) SQLite prefers ``entries_state`` and walks every synced row (0.6 s
#: on a million) to find the few a relay has not confirmed.
BY_UNCONFIRMED = "INDEXED BY entries_unconfirmed"


def create(conn: sqlite3.Connection) -> None:
    """A new store's tables, at the latest version."""
    cols = ",\n    ".join(f"{name} {sql}" for name, sql in COLUMNS)
    conn.execute(f"CREATE TABLE entries (\n    {cols},\n    UNIQUE (experiment_id, hash)\n)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for stmt in (FILES, RUNS, RELAY_KEYS, *ENTRY_COUNTS, *INDEXES):
        conn.execute(stmt)
    _count_entries(conn)
    _new_store_id(conn)


def _count_entries(conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT INTO entry_counts (state, n) VALUES (?, (SELECT count(*) FROM entries"
        " WHERE state = ?))",
        [(state, state) for state in STATES],
    )


def _new_store_id(conn: sqlite3.Connection) -> None:
    """A random id made once per store: bundles and receipts name the store by it."""
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))"
    )


# --- migrations (history: never edited once released) -----------------------------


def _v2(conn: sqlite3.Connection) -> None:
    """Sync bookkeeping: leases, retry times, the 'may have reached the server' flag."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    entries = db.table("entries")
    have = {c.name for c in entries.columns}
    for name, typ, default in (
        ("next_attempt_at", float, None),
        ("lease_owner", str, None),
        ("lease_until", float, None),
        ("maybe_sent", int, 0),  # NOT NULL: max(NULL, 1) is NULL in SQLite
        ("refreshed_at", str, None),
    ):
        if name not in have:
            entries.add_column(name, typ, not_null_default=default)
    conn.execute(
        "CREATE INDEX IF NOT EXISTS entries_remote ON entries (remote_status, id)"
        " WHERE state = 'synced'"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")


def _v3(conn: sqlite3.Connection) -> None:
    """The watcher's ledger of files seen, so a restart records nothing twice."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS files (
            path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            sha256 TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT,
            recorded INTEGER NOT NULL DEFAULT 0, known INTEGER NOT NULL DEFAULT 0,
            seen_at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS files_outcome ON files (outcome)")


def _v4(conn: sqlite3.Connection) -> None:
    """Ledger paths as bytes (a name need not be UTF-8); inode and ctime to see every change;
    the history of sync runs; a relay's keys and its jobs' upstream ids."""
    conn.execute("ALTER TABLE files RENAME TO files_v3")
    conn.execute("DROP INDEX IF EXISTS files_outcome")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS files (
            path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            ino INTEGER NOT NULL DEFAULT 0, ctime_ns INTEGER NOT NULL DEFAULT 0,
            sha256 TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT,
            recorded INTEGER NOT NULL DEFAULT 0, known INTEGER NOT NULL DEFAULT 0,
            seen_at TEXT NOT NULL, read_ns INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute(
        "INSERT INTO files (path, size, mtime_ns, sha256, outcome, reason, recorded, known,"
        " seen_at) SELECT CAST(path AS BLOB), size, mtime_ns, sha256, outcome, reason,"
        " recorded, known, seen_at FROM files_v3"
    )
    conn.execute("DROP TABLE files_v3")
    conn.execute("CREATE INDEX IF NOT EXISTS files_outcome ON files (outcome)")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS runs (
            id INTEGER PRIMARY KEY, ended_at TEXT NOT NULL, outcome TEXT NOT NULL,
            synced INTEGER NOT NULL, rejected INTEGER NOT NULL, pending INTEGER NOT NULL,
            refreshed INTEGER NOT NULL, elapsed REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE IF NOT EXISTS relay_keys (
            name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
            revoked_at TEXT
        )"""
    )
    conn.execute("ALTER TABLE entries ADD COLUMN upstream_id TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS entries_source ON entries (source, state)")


def _v5(conn: sqlite3.Connection) -> None:
    """End-to-end confirmation (the relay an entry went through; jobs the API no longer
    has); the ledger's path as text with its bytes beside it; counts by state kept by
    triggers; the store's id for bundles."""
    conn.execute("ALTER TABLE entries ADD COLUMN via TEXT")
    conn.execute("ALTER TABLE entries ADD COLUMN missing_at TEXT")
    # Entries a relay accepted before this version (its ids are relay-N): the relay's
    # address was not kept, so the next sync asks where it syncs now (by look-up).
    conn.execute("UPDATE entries SET via = '' WHERE remote_id LIKE 'relay-%'")
    _v5_files(conn)
    _v5_counts(conn)
    conn.execute(
        "CREATE INDEX entries_unconfirmed ON entries (synced_at)"
        " WHERE state = 'synced' AND via IS NOT NULL AND upstream_id IS NULL"
    )
    conn.execute(
        "CREATE INDEX entries_missing ON entries (missing_at) WHERE missing_at IS NOT NULL"
    )
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))"
    )


def _v5_files(conn: sqlite3.Connection) -> None:
    """The ledger's path as text (what a person reads), its bytes beside it (the key)."""
    conn.execute("ALTER TABLE files RENAME TO files_v4")
    conn.execute("DROP INDEX IF EXISTS files_outcome")
    conn.execute(
        """CREATE TABLE files (
            path TEXT NOT NULL, path_bytes BLOB PRIMARY KEY, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL DEFAULT 0,
            ctime_ns INTEGER NOT NULL DEFAULT 0, sha256 TEXT NOT NULL, outcome TEXT NOT NULL,
            reason TEXT, recorded INTEGER NOT NULL DEFAULT 0, known INTEGER NOT NULL DEFAULT 0,
            seen_at TEXT NOT NULL, read_ns INTEGER NOT NULL DEFAULT 0
        )"""
    )
    rows = conn.execute(
        "SELECT path, size, mtime_ns, ino, ctime_ns, sha256, outcome, reason, recorded, known,"
        " seen_at, read_ns FROM files_v4"
    ).fetchall()
    conn.executemany(
        "INSERT INTO files (path, path_bytes, size, mtime_ns, ino, ctime_ns, sha256, outcome,"
        " reason, recorded, known, seen_at, read_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (bytes(r[0]).decode("utf-8", "backslashreplace"), bytes(r[0]), *tuple(r)[1:])
            for r in rows
        ],
    )
    conn.execute("DROP TABLE files_v4")
    conn.execute("CREATE INDEX files_outcome ON files (outcome)")


def _v5_counts(conn: sqlite3.Connection) -> None:
    """Counts by state, kept by triggers from now on."""
    conn.execute("CREATE TABLE entry_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute(
        "CREATE TRIGGER entry_counts_insert AFTER INSERT ON entries BEGIN"
        " UPDATE entry_counts SET n = n + 1 WHERE state = new.state; END"
    )
    conn.execute(
        "CREATE TRIGGER entry_counts_delete AFTER DELETE ON entries BEGIN"
        " UPDATE entry_counts SET n = n - 1 WHERE state = old.state; END"
    )
    conn.execute(
        "CREATE TRIGGER entry_counts_update AFTER UPDATE OF state ON entries"
        " WHEN old.state IS NOT new.state BEGIN"
        " UPDATE entry_counts SET n = n - 1 WHERE state = old.state;"
        " UPDATE entry_counts SET n = n + 1 WHERE state = new.state; END"
    )
    for state in ("pending", "sending", "synced", "rejected"):
        conn.execute(
            "INSERT INTO entry_counts (state, n) VALUES (?, (SELECT count(*) FROM entries"
            " WHERE state = ?))",
            (state, state),
        )


def _v1(conn: sqlite3.Connection) -> None:  # pragma: no cover - a v0 store never existed
    raise sqlite3.DatabaseError("a logbook store without a schema version")


#: ``MIGRATIONS[v]`` brings a store of version ``v`` to ``v + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5)
SCHEMA_VERSION = len(MIGRATIONS)
