"""Opening a store file: created safely, checked to be ours, set up, migrated.

- WAL with ``synchronous=FULL`` on every connection: "recorded" survives a
  power loss, not just a crash.
- Nothing is written to a file that is not a logbook store (``PRAGMA
  application_id``, or the tables of a store from before it was set): not
  even the journal mode.
- Migrations run under ``BEGIN IMMEDIATE`` around ``PRAGMA user_version``, so
  several processes opening a new store at once take turns.
- A read-only open writes nothing, so a store in a read-only place (or owned
  by someone else) can still be read.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NotALogbookStore, StoreBusy, StoreError, StoreFull
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, create

BUSY_TIMEOUT_S = 30.0
#: The columns every logbook store had from version 1: an ``entries`` table without
#: them belongs to some other program.
_LEGACY_COLUMNS = frozenset(
    {"experiment_id", "hash", "state", "attempts", "remote_id", "remote_status", "created_at"}
)
T = TypeVar("T")


def now_iso() -> str:
    """The current time as ISO 8601 UTC with an explicit Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def translate(err: sqlite3.Error, path: str) -> StoreError:
    """One of logbook's errors, with a line that says what to do, for a SQLite error."""
    msg = str(err)
    if "locked" in msg or "busy" in msg:
        return StoreBusy(
            f"the store {path} is busy: another process held it too long ({msg}); try again"
        )
    if "disk is full" in msg or "disk I/O error" in msg:
        why = (
            "is full"
            if "full" in msg
            else "failed a write (full, past a file-size limit, or failing)"
        )
        return StoreFull(
            f"the disk holding the store {path} {why}: free some space and try again"
            " (nothing recorded was lost; what was not written was not recorded)"
        )
    if isinstance(err, sqlite3.DatabaseError) and "not a database" in msg and not_sqlite(path):
        return NotALogbookStore(
            f"{path} is not a logbook store (not an SQLite database at all): give --db the"
            " path of a logbook store; it was left unchanged"
        )
    if isinstance(err, sqlite3.DatabaseError) and (
        "not a database" in msg or "malformed" in msg or "corrupt" in msg
    ):
        return StoreError(
            f"the store {path} is damaged or not a logbook store ({msg}): move it aside and"
            " restore a backup"
        )
    if "readonly" in msg or "read-only" in msg:
        return StoreError(f"the store {path} is read-only ({msg}): check its permissions")
    if "unable to open" in msg:
        return StoreError(
            f"cannot open the store {path}: check its directory exists and is writable"
        )
    return StoreError(f"store {path}: {msg}")


def retry_busy(fn: Callable[[], T], deadline: float | None = None) -> T:
    """Run ``fn`` again while SQLite says busy or locked, until ``deadline`` (monotonic).

    Some lock waits (journal mode changes, schema changes of a new file)
    return SQLITE_BUSY without calling the busy handler.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S if deadline is None else deadline
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as err:
            if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


#: The first 16 bytes of every SQLite database file (sqlite.org/fileformat.html).
SQLITE_HEADER = b"SQLite format 3\x00"


#: Set one ``meta`` key (the store's small facts: its id, last sync, last receipt, ...).
SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


def not_sqlite(path: str) -> bool:
    """True for a file that is no SQLite database at all (``/etc/passwd``, a CSV): its first
    bytes are not SQLite's.  An empty file is a store not yet set up.

    Only asked once SQLite has refused the file ("file is not a database"): opening and
    closing a descriptor on a database file drops the POSIX locks every connection of
    this process holds on it (sqlite.org/howtocorrupt.html, 2.2), so a file that may be
    a live store is never opened outside SQLite.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return False
    return bool(head) and head != SQLITE_HEADER


def _connect(path: str, target: str, uri: bool = False) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
    except sqlite3.Error as err:
        raise translate(err, path) from None
    conn.row_factory = sqlite3.Row
    return conn


def open_readwrite(path: str) -> sqlite3.Connection:
    """A read-write connection: created 0600 if new, checked to be ours, WAL + FULL, migrated."""
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"the store {path} is a directory: give the path of a store file")
    if p.exists() and not p.is_file():
        raise StoreError(f"the store {path} is not a regular file")
    try:
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as err:
        raise StoreError(f"cannot create the store {path}: {err.strerror}") from None
    conn = _connect(path, path)
    with _closed_on_error(conn, path):
        check_ours(conn, path)
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            retry_busy(lambda: migrate(conn))
    return conn


def open_readonly(path: str) -> sqlite3.Connection:
    """A connection that writes nothing, even in a directory it cannot write."""
    if os.path.isdir(path):
        raise StoreError(f"the store {path} is a directory: give the path of a store file")
    uri = Path(path).resolve().as_uri()
    conn = _connect(path, f"{uri}?mode=ro", uri=True)
    try:
        with _closed_on_error(conn, path, sqlite3.OperationalError):
            check_ours(conn, path)
            conn.execute("SELECT count(*) FROM entries").fetchone()
        return conn
    except sqlite3.OperationalError:
        pass
    # A WAL store in a directory we cannot write: SQLite cannot make its -shm file
    # there.  Nobody can write it there either, so read it as is, unless its
    # write-ahead log holds commits that only -shm could make readable: then
    # showing the main file alone would show too little.
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise StoreError(
            f"the store {path} has recent changes in {wal} that cannot be read from a"
            " place this user cannot write: copy the store (with its -wal) somewhere"
            " writable, or run logbook as its owner"
        )
    conn = _connect(path, f"{uri}?mode=ro&immutable=1", uri=True)
    with _closed_on_error(conn, path):
        check_ours(conn, path)
    return conn


@contextmanager
def _closed_on_error(
    conn: sqlite3.Connection, path: str, passing: type[BaseException] | None = None
) -> Iterator[None]:
    """Close ``conn`` on any error; SQLite's become logbook's (``passing`` goes through as is)."""
    try:
        yield
    except BaseException as err:
        conn.close()
        if passing is not None and isinstance(err, passing):
            raise
        if isinstance(err, sqlite3.Error):
            raise translate(err, path) from None
        raise


def check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse another program's SQLite file, and a store newer than this logbook.

    The header and the tables are read in one read transaction: a new store that another
    process sets up meanwhile must be seen either empty or whole, never as tables without
    logbook's application id (which would refuse a store that is ours).
    """
    conn.execute("BEGIN")
    try:
        _check_ours(conn, path)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _check_ours(conn: sqlite3.Connection, path: str) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {path} has schema version {version}, newer than this"
                f" logbook understands ({SCHEMA_VERSION}): upgrade logbook"
            )
        return
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if app_id == 0 and not tables and version == 0:
        return  # a new, empty file: ours to set up
    legacy = (
        app_id == 0
        and 1 <= version <= 3
        and "entries" in tables
        and _LEGACY_COLUMNS <= {r[1] for r in conn.execute("PRAGMA table_info(entries)")}
    )
    if not legacy:
        raise NotALogbookStore(
            f"{path} is not a logbook store (another program's SQLite file?):"
            " give --db the path of a logbook store; it was left unchanged"
        )


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a store to the latest schema under one ``BEGIN IMMEDIATE`` (others wait their turn)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            create(conn)
        else:
            for step in MIGRATIONS[version:]:
                step(conn)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Database:
    """A connection to a store and its transactions: what every part of the store works on.

    ``Store`` is one; ``Leases``, ``Ledger`` and the relay's tables take it and
    use only these three doors: ``write()`` (a short ``BEGIN IMMEDIATE``),
    ``read()`` and ``scalar()``.
    """

    def __init__(self, conn: sqlite3.Connection, path: str, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that takes the write lock up front."""
        if self.readonly:
            raise StoreError(f"the store {self.path} was opened read-only")
        conn = self.conn
        try:
            retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as err:
            raise translate(err, self.path) from None
        try:
            yield conn
        except BaseException as err:
            self._rollback()
            if isinstance(err, sqlite3.Error):
                raise translate(err, self.path) from None
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            # A failed COMMIT may have ended the transaction itself (disk full): a
            # ROLLBACK then fails with "no transaction is active" and hides the cause.
            self._rollback()
            raise translate(err, self.path) from None

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is closed or gone; SQLite rolls back on its own

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as err:
            raise translate(err, self.path) from None

    def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = self.read(sql, params)
        return rows[0][0] if rows else None
