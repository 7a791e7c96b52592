"""The local store: the only module that touches SQLite.

Rules this module keeps (see FINDINGS.md):

- WAL with ``synchronous=FULL`` on every connection: "recorded" survives a
  power loss, not just a crash.
- Every write transaction starts with ``BEGIN IMMEDIATE`` and stays short;
  none is ever held across an HTTP call.
- Migrations run under ``BEGIN IMMEDIATE`` around ``PRAGMA user_version``, so
  several processes opening a new store at once take turns.
- The file is created with mode 0600 (it holds lab results).

Entries go ``pending`` -> ``sending`` (claimed by one sync, with a lease) ->
``synced`` | ``rejected`` | back to ``pending``.  A ``sending`` entry whose
owner died, or whose lease ran out, may have reached the server: it is
reclaimed with ``maybe_sent`` set, so the sync looks it up before posting.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import NotFound, StoreBusy, StoreError
from .vocab import UNFINISHED

STATES: tuple[str, ...] = ("pending", "sending", "synced", "rejected")
UNFINISHED_REMOTE: tuple[str, ...] = tuple(sorted(UNFINISHED))
BUSY_TIMEOUT_S = 30.0

#: Columns that ``list --json`` / ``show --json`` print, in order.
ENTRY_KEYS: tuple[str, ...] = (
    "id", "experiment_id", "hash", "circuit_hash", "name", "device_id", "shots", "status",
    "job_type", "results", "metrics", "state", "attempts", "last_error", "remote_id",
    "remote_status", "created_at", "synced_at", "source",
)  # fmt: skip
_SELECT = (
    "SELECT id, experiment_id, hash, circuit_hash, name, device_id, shots, status, job_type,"
    " results, metrics, state, attempts, last_error, remote_id, remote_status, created_at,"
    " synced_at, source, maybe_sent, next_attempt_at FROM entries"
)
_ROW_COLUMNS = (
    "experiment_id, hash, circuit_hash, name, device_id, shots, status, job_type, results,"
    " metrics, created_at, source"
)
_INSERT = (
    f"INSERT INTO entries ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(experiment_id, hash) DO NOTHING"
)
_INSERT_FROM_CHUNK = (
    f"INSERT INTO main.entries ({_ROW_COLUMNS}) SELECT {_ROW_COLUMNS} FROM {{alias}}.rows"
    " ORDER BY seq ON CONFLICT(experiment_id, hash) DO NOTHING"
)
#: SQLite attaches at most 10 databases to a connection.
MAX_ROW_FILES = 8


def write_rows_file(path: str, rows: Sequence[tuple[Any, ...]]) -> tuple[str, int]:
    """Write ``Store.row`` rows to a new scratch SQLite file; returns ``(path, len(rows))``.

    Import's worker processes hand their rows to the store this way: no journal
    and no fsync (the file is thrown away), and ``record_file(row_files=...)``
    copies it in with one ``INSERT ... SELECT`` instead of a Python call per row.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"CREATE TABLE rows (seq INTEGER PRIMARY KEY, {_ROW_COLUMNS})")
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO rows ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path, len(rows)


# json.dumps() with options builds a new encoder on every call; bulk import calls it per row.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def now_iso() -> str:
    """The current time as ISO 8601 UTC with an explicit Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Entry:
    """One job in the logbook, as stored locally."""

    id: int
    experiment_id: str
    hash: str
    circuit_hash: str = ""
    name: str = ""
    device_id: str = ""
    shots: str = ""
    status: str = "Done"
    job_type: str = "User local job"
    results: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    remote_id: str | None = None
    remote_status: str | None = None
    created_at: str = ""
    synced_at: str | None = None
    source: str | None = None
    maybe_sent: bool = False
    next_attempt_at: float | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        (id_, exp, h, ch, name, dev, shots, status, jt, results, metrics, state, attempts,
         last_error, remote_id, remote_status, created_at, synced_at, source, maybe_sent,
         next_at) = row  # fmt: skip
        return cls(
            id_,
            exp,
            h,
            ch or "",
            name or "",
            dev or "",
            shots or "",
            status,
            jt,
            results or "",
            json.loads(metrics) if metrics else {},
            state,
            attempts,
            last_error,
            remote_id,
            remote_status,
            created_at,
            synced_at,
            source,
            bool(maybe_sent),
            next_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as ``show --json`` prints it (``id`` as a string)."""
        d = {k: getattr(self, k) for k in ENTRY_KEYS}
        d["id"] = str(self.id)
        return d

    def job_body(self) -> dict[str, Any]:
        """The ``POST /jobs`` body for this entry."""
        return {
            "experiment_id": self.experiment_id,
            "hash": self.hash,
            "circuit_hash": self.circuit_hash,
            "results": self.results,
            "device_id": self.device_id,
            "shots": self.shots,
            "name": self.name,
            "status": self.status,
            "job_type": self.job_type,
            "metrics": self.metrics,
        }


@dataclass
class Outcome:
    """How one send ended; ``Store.settle`` writes a batch of these at once."""

    entry_id: int
    state: str  # synced | pending | rejected | released
    remote_id: str | None = None
    remote_status: str | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    maybe_sent: bool = False


# --- schema -----------------------------------------------------------------

_V1 = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    circuit_hash TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    device_id TEXT NOT NULL DEFAULT '',
    shots TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    job_type TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '',
    metrics TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    remote_id TEXT,
    remote_status TEXT,
    created_at TEXT NOT NULL,
    synced_at TEXT,
    source TEXT,
    UNIQUE (experiment_id, hash)
);
CREATE INDEX IF NOT EXISTS entries_state ON entries (state, id);
CREATE INDEX IF NOT EXISTS entries_experiment ON entries (experiment_id, id);
"""


def _migrate_v2(conn: sqlite3.Connection) -> None:
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


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """The watcher's ledger of files seen, so a restart records nothing twice."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS files (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            recorded INTEGER NOT NULL DEFAULT 0,
            known INTEGER NOT NULL DEFAULT 0,
            seen_at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS files_outcome ON files (outcome)")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    for stmt in _V1.split(";"):
        if stmt.strip():
            conn.execute(stmt)


MIGRATIONS = (_migrate_v1, _migrate_v2, _migrate_v3)
SCHEMA_VERSION = len(MIGRATIONS)


# --- the store ----------------------------------------------------------------


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    """False only when the owner is a process on this host that no longer exists."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's sync: trust its lease
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _translate(err: sqlite3.Error, path: str) -> StoreError:
    msg = str(err)
    if "locked" in msg or "busy" in msg:
        return StoreBusy(f"store {path} is busy (another process held it too long): {msg}")
    if isinstance(err, sqlite3.DatabaseError) and (
        "not a database" in msg or "malformed" in msg or "corrupt" in msg
    ):
        return StoreError(f"store {path} is not a logbook store or is corrupt ({msg})")
    if "readonly" in msg or "read-only" in msg:
        return StoreError(f"store {path} is read-only ({msg})")
    if "unable to open" in msg:
        return StoreError(f"cannot open store {path}: check the directory exists and is writable")
    return StoreError(f"store {path}: {msg}")


class Store:
    """A logbook store in one SQLite file.  One instance per thread."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = str(path)
        if not create and not os.path.exists(self.path):
            raise NotFound(f"no store at {self.path}")
        self.owner = _owner_id()
        self._last_pending = 0
        self.conn = self._connect(create)

    # connection and migrations

    def _connect(self, create: bool) -> sqlite3.Connection:
        p = Path(self.path)
        if p.is_dir():
            raise StoreError(f"store {self.path} is a directory: give the path of a store file")
        try:
            if create and not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        except OSError as err:
            raise StoreError(f"cannot create store {self.path}: {err.strerror}") from None
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as err:
            raise _translate(err, self.path) from None
        try:
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                self._retry_busy(lambda: self._migrate(conn))
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}, newer than this"
                    f" logbook understands ({SCHEMA_VERSION}): upgrade logbook"
                )
        except sqlite3.Error as err:
            conn.close()
            raise _translate(err, self.path) from None
        except StoreError:
            conn.close()
            raise
        return conn

    @staticmethod
    def _retry_busy(fn: Any) -> Any:
        # Some lock waits (journal_mode changes, schema changes on a fresh file) return
        # SQLITE_BUSY without calling the busy handler: retry them ourselves.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that takes the write lock up front."""
        conn = self.conn
        try:
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as err:
            raise _translate(err, self.path) from None
        try:
            yield conn
        except BaseException as err:
            conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise _translate(err, self.path) from None
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                conn.execute("ROLLBACK")
                raise _translate(err, self.path) from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise _translate(err, self.path) from None

    # recording

    @staticmethod
    def row(job: Mapping[str, Any], created_at: str, source: str | None) -> tuple[Any, ...]:
        """The stored row of a prepared job: pure, so import's worker processes build rows too."""
        return (
            job["experiment_id"], job["hash"], job.get("circuit_hash") or "",
            job.get("name") or "", job.get("device_id") or "", job.get("shots") or "",
            job["status"], job["job_type"], job.get("results") or "",
            _compact_json(job.get("metrics") or {}), created_at, source,
        )  # fmt: skip

    def record(self, job: Mapping[str, Any], *, source: str | None = None) -> tuple[Entry, bool]:
        """Store one prepared job; returns ``(entry, created)``.

        Recording the same ``(experiment_id, hash)`` again returns the existing
        entry and ``created=False``.
        """
        created_at = now_iso()
        with self._write() as conn:
            cur = conn.execute(_INSERT, self.row(job, created_at, source))
            if cur.rowcount == 1:
                new_id = cur.lastrowid
            else:
                new_id = None
                row = conn.execute(
                    _SELECT + " WHERE experiment_id = ? AND hash = ?",
                    (job["experiment_id"], job["hash"]),
                ).fetchone()
        if new_id is None:
            return Entry.from_row(row), False
        entry = Entry(
            id=int(new_id), experiment_id=job["experiment_id"], hash=job["hash"],
            circuit_hash=job.get("circuit_hash") or "", name=job.get("name") or "",
            device_id=job.get("device_id") or "", shots=job.get("shots") or "",
            status=job["status"], job_type=job["job_type"], results=job.get("results") or "",
            metrics=dict(job.get("metrics") or {}), created_at=created_at, source=source,
        )  # fmt: skip
        return entry, True

    def record_many(
        self, jobs: Iterable[Mapping[str, Any]], *, source: str | None = None, batch: int = 5000
    ) -> tuple[int, int]:
        """Store many prepared jobs, one transaction per batch; returns ``(created, known)``."""
        created = known = 0
        rows: list[tuple[Any, ...]] = []
        for job in jobs:
            rows.append(self.row(job, now_iso(), source))
            if len(rows) >= batch:
                c = self._insert_rows(rows)
                created, known = created + c, known + len(rows) - c
                rows = []
        if rows:
            c = self._insert_rows(rows)
            created, known = created + c, known + len(rows) - c
        return created, known

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT, rows)
            return conn.total_changes - before

    # reading

    def get(self, entry_id: int | str) -> Entry:
        try:
            key = int(entry_id)
        except (TypeError, ValueError):
            raise NotFound(f"no entry with id {entry_id!r}") from None
        rows = self._read(_SELECT + " WHERE id = ?", (key,))
        if not rows:
            raise NotFound(f"no entry with id {entry_id}")
        return Entry.from_row(rows[0])

    def find(self, experiment_id: str, hash_: str) -> Entry | None:
        rows = self._read(_SELECT + " WHERE experiment_id = ? AND hash = ?", (experiment_id, hash_))
        return Entry.from_row(rows[0]) if rows else None

    def list(
        self,
        *,
        state: str | None = None,
        experiment_id: str | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Entries newest first."""
        return list(self.iter_entries(state=state, experiment_id=experiment_id, limit=limit))

    def iter_entries(
        self,
        *,
        state: str | None = None,
        experiment_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        page: int = 1000,
    ) -> Iterator[Entry]:
        """Stream entries in pages, so memory stays flat on a large store."""
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if experiment_id:
            where.append("experiment_id = ?")
            params.append(experiment_id)
        cursor_id: int | None = None
        left = limit
        while left is None or left > 0:
            conds = list(where)
            p: list[Any] = list(params)
            if cursor_id is not None:
                conds.append("id < ?" if newest_first else "id > ?")
                p.append(cursor_id)
            sql = _SELECT + (" WHERE " + " AND ".join(conds) if conds else "")
            n = page if left is None else min(page, left)
            sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT {n}"
            rows = self._read(sql, p)
            for row in rows:
                yield Entry.from_row(row)
            if len(rows) < n:
                return
            cursor_id = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state in STATES:
            counts[state] = self._read("SELECT count(*) FROM entries WHERE state = ?", (state,))[0][
                0
            ]
        return counts

    def oldest_pending(self) -> str | None:
        # The first pending and the first sending entry by id, through the (state, id)
        # index: min(created_at) over every pending row took 180 ms on a million.
        # Entries are stamped when inserted, so id order is time order.
        rows = self._read(
            "SELECT min(created_at) FROM ("
            " SELECT (SELECT created_at FROM entries WHERE state = 'pending' ORDER BY id LIMIT 1)"
            " AS created_at UNION ALL"
            " SELECT (SELECT created_at FROM entries WHERE state = 'sending' ORDER BY id LIMIT 1))"
        )
        return rows[0][0] if rows else None

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def status(self) -> dict[str, Any]:
        """What ``logbook status --json`` prints."""
        return {
            "db": self.path,
            "counts": self.counts(),
            "oldest_pending": self.oldest_pending(),
            "last_sync": self.get_meta("last_sync"),
            "invalid_files": self._read("SELECT count(*) FROM files WHERE outcome = 'invalid'")[0][
                0
            ],
        }

    # the user's actions

    def retry(self, ids: Iterable[int | str] = (), *, all_rejected: bool = False) -> int:
        """Put rejected entries back to pending; returns how many changed."""
        with self._write() as conn:
            if all_rejected:
                cur = conn.execute(
                    "UPDATE entries SET state = 'pending', next_attempt_at = NULL"
                    " WHERE state = 'rejected'"
                )
                return cur.rowcount
            changed = 0
            for entry_id in ids:
                row = conn.execute("SELECT state FROM entries WHERE id = ?", (int(entry_id),))
                found = row.fetchone()
                if found is None:
                    raise NotFound(f"no entry with id {entry_id}")
                cur = conn.execute(
                    "UPDATE entries SET state = 'pending', next_attempt_at = NULL"
                    " WHERE id = ? AND state = 'rejected'",
                    (int(entry_id),),
                )
                changed += cur.rowcount
            return changed

    def integrity(self) -> str:
        """``ok`` or SQLite's description of what is damaged."""
        rows = self._read("PRAGMA quick_check")
        return "; ".join(str(r[0]) for r in rows[:5])

    def journal_mode(self) -> str:
        return str(self._read("PRAGMA journal_mode")[0][0])

    # sync: claim, settle, refresh

    def claim(
        self,
        limit: int,
        *,
        lease_seconds: float,
        now: float | None = None,
        ignore_backoff: bool = False,
        after_id: int = 0,
    ) -> builtins.list[Entry]:
        """Take up to ``limit`` due entries for this process to send.

        ``ignore_backoff`` takes pending entries whatever their next attempt
        time (a sync the user asked for now); ``after_id`` skips pending entries
        up to that id (a step that walks the backlog once).

        Entries left ``sending`` by a dead process or an expired lease are taken
        too, flagged ``maybe_sent`` so the sender looks them up before posting.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            stale: list[int] = []
            owners = conn.execute(
                "SELECT DISTINCT lease_owner FROM entries WHERE state = 'sending'"
            ).fetchall()
            dead = [o for (o,) in owners if o != self.owner and not _owner_alive(o)]
            for owner in dead:
                stale += [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM entries WHERE state = 'sending' AND lease_owner IS ?"
                        " LIMIT ?",
                        (owner, limit - len(stale)),
                    )
                ]
                if len(stale) >= limit:
                    break
            if len(stale) < limit:
                stale += [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM entries WHERE state = 'sending' AND lease_until < ?"
                        " AND lease_owner IS NOT ? LIMIT ?",
                        (now, self.owner, limit - len(stale)),
                    )
                ]
            if stale:
                conn.executemany(
                    "UPDATE entries SET maybe_sent = 1 WHERE id = ?", [(i,) for i in stale]
                )
            ids = list(dict.fromkeys(stale))
            if len(ids) < limit:
                ids += [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM entries WHERE state = 'pending' AND id > ?"
                        " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
                        " ORDER BY id LIMIT ?",
                        (after_id, float("inf") if ignore_backoff else now, limit - len(ids)),
                    )
                ]
                if len(ids) > len(stale):
                    self._last_pending = ids[-1]
            if not ids:
                return []
            conn.executemany(
                "UPDATE entries SET state = 'sending', lease_owner = ?, lease_until = ?"
                " WHERE id = ?",
                [(self.owner, now + lease_seconds, i) for i in ids],
            )
            marks = ",".join("?" * len(ids))
            rows = conn.execute(_SELECT + f" WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
        return [Entry.from_row(r) for r in rows]

    def last_claimed_pending(self) -> int:
        """The highest pending id the last ``claim`` took (0 if none yet)."""
        return self._last_pending

    def renew_leases(self, lease_seconds: float) -> None:
        """Extend the lease of every entry this process holds."""
        with self._write() as conn:
            conn.execute(
                "UPDATE entries SET lease_until = ? WHERE state = 'sending' AND lease_owner = ?",
                (time.time() + lease_seconds, self.owner),
            )

    def due(self, limit: int, *, now: float | None = None) -> builtins.list[Entry]:
        """What ``logbook sync`` would send now, without claiming it (for ``--dry-run``).

        The same rules as a sync the user runs: every pending entry (retry
        delays do not hold it back), and ``sending`` entries a dead process left.
        """
        now = time.time() if now is None else now
        stale = [
            i
            for i, owner, until in self._read(
                "SELECT id, lease_owner, lease_until FROM entries WHERE state = 'sending'"
            )
            if not _owner_alive(owner) or (until or 0) < now
        ]
        rows = self._read(_SELECT + " WHERE state = 'pending' ORDER BY id LIMIT ?", (limit,))
        if stale:
            marks = ",".join("?" * len(stale))
            rows += self._read(_SELECT + f" WHERE id IN ({marks})", stale)
            rows.sort(key=lambda r: r[0])
        return [Entry.from_row(r) for r in rows[:limit]]

    def _stale_sending(self, now: float) -> int:
        """``sending`` entries whose owner died or whose lease ran out."""
        n = 0
        for owner, count, latest in self._read(
            "SELECT lease_owner, count(*), max(lease_until) FROM entries"
            " WHERE state = 'sending' GROUP BY lease_owner"
        ):
            if not _owner_alive(owner):
                n += count
            elif latest is not None and latest < now:
                n += self._read(
                    "SELECT count(*) FROM entries WHERE state = 'sending'"
                    " AND lease_owner IS ? AND lease_until < ?",
                    (owner, now),
                )[0][0]
        return n

    def count_due(self, now: float | None = None, *, ignore_backoff: bool = False) -> int:
        """How many entries a sync would send now."""
        now = time.time() if now is None else now
        due = self._read(
            "SELECT count(*) FROM entries WHERE state = 'pending'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
            (float("inf") if ignore_backoff else now,),
        )[0][0]
        return int(due) + self._stale_sending(now)

    def count_left(self, now: float | None = None) -> int:
        """Entries still to be sent: pending ones and those a dead sync left ``sending``."""
        now = time.time() if now is None else now
        pending = self._read("SELECT count(*) FROM entries WHERE state = 'pending'")[0][0]
        return int(pending) + self._stale_sending(now)

    def next_due_at(self) -> float | None:
        """When the earliest pending entry becomes due (epoch seconds), if any."""
        rows = self._read(
            "SELECT min(coalesce(next_attempt_at, 0)) FROM entries WHERE state = 'pending'"
        )
        return rows[0][0]

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of send outcomes in one transaction (one fsync, not one per entry).

        Only entries this process still holds are changed.
        """
        if not outcomes:
            return
        stamp = now_iso()
        synced, pending, rejected, released = [], [], [], []
        for o in outcomes:
            if o.state == "synced":
                synced.append((o.remote_id, o.remote_status, stamp, o.entry_id, self.owner))
            elif o.state == "pending":
                pending.append(
                    (o.error, o.next_attempt_at, int(o.maybe_sent), o.entry_id, self.owner)
                )
            elif o.state == "rejected":
                rejected.append((o.error, o.entry_id, self.owner))
            elif o.state == "released":
                released.append((o.entry_id, self.owner))
            else:
                raise ValueError(f"unknown outcome state {o.state!r}")
        with self._write() as conn:
            if synced:
                conn.executemany(
                    "UPDATE entries SET state = 'synced', remote_id = ?, remote_status = ?,"
                    " synced_at = ?, attempts = attempts + 1, last_error = NULL,"
                    " maybe_sent = 0, lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                    synced,
                )
            if pending:
                conn.executemany(
                    "UPDATE entries SET state = 'pending', last_error = ?, next_attempt_at = ?,"
                    " maybe_sent = CASE WHEN ? THEN 1 ELSE maybe_sent END, attempts = attempts + 1,"
                    " lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                    pending,
                )
            if rejected:
                conn.executemany(
                    "UPDATE entries SET state = 'rejected', last_error = ?,"
                    " attempts = attempts + 1, lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                    rejected,
                )
            if released:
                conn.executemany(
                    "UPDATE entries SET state = 'pending', lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                    released,
                )

    def unfinished_remote(self, limit: int, after_id: int = 0) -> builtins.list[Entry]:
        """Synced entries whose server status is not final yet, in id order."""
        marks = ",".join("?" * len(UNFINISHED_REMOTE))
        rows = self._read(
            _SELECT + f" WHERE state = 'synced' AND remote_status IN ({marks}) AND id > ?"
            " ORDER BY id LIMIT ?",
            (*UNFINISHED_REMOTE, after_id, limit),
        )
        return [Entry.from_row(r) for r in rows]

    def set_remote_status(self, updates: Sequence[tuple[int, str]]) -> None:
        if not updates:
            return
        stamp = now_iso()
        with self._write() as conn:
            conn.executemany(
                "UPDATE entries SET remote_status = ?, refreshed_at = ? WHERE id = ?",
                [(status, stamp, entry_id) for entry_id, status in updates],
            )

    # the watcher's ledger

    def file_seen(self, path: str) -> tuple[int, int, str, str] | None:
        """``(size, mtime_ns, sha256, outcome)`` of a file already handled, if any."""
        rows = self._read(
            "SELECT size, mtime_ns, sha256, outcome FROM files WHERE path = ?", (path,)
        )
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    def record_file(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        sha256: str,
        jobs: Sequence[Mapping[str, Any]] = (),
        reason: str | None | Callable[[], str | None],
        source: str | None = None,
        row_files: Iterable[tuple[str, int]] | None = None,
    ) -> tuple[int, int]:
        """Record a file's jobs and its ledger row in one transaction; ``(created, known)``."""
        return self.record_files(
            [
                {
                    "path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha256,
                    "jobs": jobs, "reason": reason, "source": source, "row_files": row_files,
                }
            ]
        )[0]  # fmt: skip

    def record_files(self, files: Sequence[Mapping[str, Any]]) -> Sequence[tuple[int, int]]:
        """``record_file`` for several files in one transaction (one fsync, not one per file).

        Each item has the keyword arguments of ``record_file`` (``path``, ``size``,
        ``mtime_ns``, ``sha256``, ``jobs``, ``reason``, optional ``source``); ``jobs``
        may instead be ``row_files``, an iterable of ``(path, rows)`` from
        ``write_rows_file`` consumed inside the transaction, and ``reason`` a
        callable asked after it.  Each
        file's jobs and ledger row still commit together; returns ``(created, known)``
        per file, in order.  The watcher uses it to keep up with a burst.
        """
        if not files:
            return ()
        stamp = now_iso()
        counts: builtins.list[tuple[int, int]] = []
        attached: builtins.list[str] = []
        try:
            return self._record_files(files, stamp, counts, attached)
        finally:
            for alias in attached:
                self.conn.execute(f"DETACH DATABASE {alias}")

    def _record_files(
        self,
        files: Sequence[Mapping[str, Any]],
        stamp: str,
        counts: builtins.list[tuple[int, int]],
        attached: builtins.list[str],
    ) -> Sequence[tuple[int, int]]:
        with self._write() as conn:
            for f in files:
                path = f["path"]
                source = f.get("source") or path
                before = conn.total_changes
                if f.get("row_files") is not None:
                    # Rows that import's workers wrote to scratch files
                    # (write_rows_file), copied in as each chunk arrives: the
                    # copy runs inside SQLite, with no Python work per row.  A
                    # file read in a transaction can only be detached after it.
                    seen = 0
                    for chunk_path, n in f["row_files"]:
                        if len(attached) >= MAX_ROW_FILES:
                            raise StoreError(f"more than {MAX_ROW_FILES} row files for one file")
                        alias = f"chunk{len(attached)}"
                        conn.execute(f"ATTACH DATABASE ? AS {alias}", (chunk_path,))
                        attached.append(alias)
                        conn.execute(_INSERT_FROM_CHUNK.format(alias=alias))
                        seen += n
                else:
                    rows = [self.row(j, stamp, source) for j in f["jobs"]]
                    conn.executemany(_INSERT, rows)
                    seen = len(rows)
                created = conn.total_changes - before
                known = seen - created
                # A streamed file (big JSON Lines) knows its errors only once read.
                reason = f["reason"]() if callable(f["reason"]) else f["reason"]
                conn.execute(
                    "INSERT INTO files (path, size, mtime_ns, sha256, outcome, reason, recorded,"
                    " known, seen_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(path) DO UPDATE SET"
                    " size = excluded.size, mtime_ns = excluded.mtime_ns,"
                    " sha256 = excluded.sha256, outcome = excluded.outcome,"
                    " reason = excluded.reason, recorded = excluded.recorded,"
                    " known = excluded.known, seen_at = excluded.seen_at",
                    (
                        path, f["size"], f["mtime_ns"], f["sha256"],
                        "invalid" if reason else "recorded", reason, created, known, stamp,
                    ),
                )  # fmt: skip
                counts.append((created, known))
        return counts

    def file_counts(self) -> dict[str, int]:
        rows = self._read("SELECT outcome, count(*) FROM files GROUP BY outcome")
        return {outcome: n for outcome, n in rows}
