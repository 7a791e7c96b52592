"""The local store: the only package that touches SQLite.

Rules it keeps:

- WAL with ``synchronous=FULL`` on every connection: "recorded" survives a
  power loss, not just a crash.
- Every write transaction starts with ``BEGIN IMMEDIATE`` and stays short;
  none is ever held across an HTTP call.  A transaction that reads then
  writes under a deferred ``BEGIN`` fails at once when another process wrote
  in between, whatever the busy timeout.
- Migrations run under ``BEGIN IMMEDIATE`` around ``PRAGMA user_version``, so
  several processes opening a new store at once take turns.
- Nothing is written to a file that is not a logbook store (``PRAGMA
  application_id``, or the tables of a store from before it was set), and a
  store is opened read-only by the commands that only read it.
- The file is created with mode 0600 (it holds lab results).

``Store`` holds the connection and the entries; ``store.leases`` (the sync
protocol, ``leases.py``), ``store.ledger`` (the watcher's files,
``ledger.py``) and ``store.bundles`` (bundles and receipts, ``bundles.py``)
work on the same connection.  One ``Store`` per thread: a
sqlite3 connection is bound to the thread that made it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, StoreError
from .actions import EntryActions, parse_id
from .connect import SET_META, now_iso, open_readonly, open_readwrite
from .schema import INSERT, SCHEMA_VERSION, SELECT, STATES, Entry
from .schema import row as job_row

if TYPE_CHECKING:
    from ..health import Figures

__all__ = ["Entry", "STATES", "SCHEMA_VERSION", "Status", "Store", "now_iso"]

#: Entries a relay accepted whose API id has not come back, through their partial index
#: (without INDEXED BY, SQLite walks every synced entry by ``entries_state``: 160 ms a million).
_UNCONFIRMED = (
    "INDEXED BY entries_unconfirmed"
    " WHERE state = 'synced' AND via IS NOT NULL AND upstream_id IS NULL"
)


@dataclass
class Status:
    """What ``logbook status --json`` prints (more keys may follow the contract's)."""

    db: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    oldest_pending: str | None = None
    last_sync: str | None = None
    invalid_files: int = 0
    #: Synced through a relay that has not passed the API's id back yet.
    unconfirmed: int = 0
    #: When the oldest unconfirmed entry was accepted by the relay.
    oldest_unconfirmed: str | None = None
    #: Direct to the API: synced entries the API answered 404 for.
    missing: int = 0
    #: An air-gapped machine: when the last bundle was exported, the last receipt applied.
    last_bundle_export: str | None = None
    last_receipt_applied: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "db": self.db, "counts": self.counts, "oldest_pending": self.oldest_pending,
            "last_sync": self.last_sync, "invalid_files": self.invalid_files,
            "unconfirmed": self.unconfirmed, "oldest_unconfirmed": self.oldest_unconfirmed,
            "missing": self.missing, "last_bundle_export": self.last_bundle_export,
            "last_receipt_applied": self.last_receipt_applied,
        }  # fmt: skip


class Store(EntryActions):
    """A logbook store in one SQLite file.

    ``create=False`` refuses a path where no store exists; ``readonly=True``
    opens an existing store without writing anything to it (``status``,
    ``list``, ``show``, ``export``), so a store in a read-only place is still
    readable.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False
    ) -> None:
        from .bundles import Bundles
        from .leases import Leases
        from .ledger import Ledger
        from .relay import RelayJobs, RelayKeys

        self.path = str(path)
        if (readonly or not create) and not os.path.exists(self.path):
            raise NotFound(f"no store at {self.path}")
        super().__init__(
            open_readonly(self.path) if readonly else open_readwrite(self.path), self.path, readonly
        )
        if readonly and self.schema_version() < SCHEMA_VERSION:
            # A store of an older logbook: bring it up to date once, where that is allowed.
            self.conn.close()
            try:
                open_readwrite(self.path).close()
            except StoreError as err:
                raise StoreError(
                    f"{err}; the store {self.path} is from an older logbook and must be"
                    " upgraded once: run any logbook command where it can write there"
                ) from None
            self.conn = open_readonly(self.path)
        self.leases = Leases(self)
        self.ledger = Ledger(self)
        self.keys = RelayKeys(self)
        self.relay = RelayJobs(self)
        self.bundles = Bundles(self)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- recording ----------------------------------------------------------------------

    def record(self, job: Mapping[str, Any], *, source: str | None = None) -> tuple[Entry, bool]:
        """Store one prepared job; returns ``(entry, created)``.

        Recording the same ``(experiment_id, hash)`` again returns the existing
        entry and ``created=False``.
        """
        created_at = now_iso()
        with self.write() as conn:
            cur = conn.execute(INSERT, job_row(job, created_at, source))
            if cur.rowcount == 1 and cur.lastrowid is not None:
                entry = Entry(**job, id=cur.lastrowid, created_at=created_at, source=source)
                entry.metrics = dict(entry.metrics)
                return entry, True
            found = conn.execute(
                SELECT + " WHERE experiment_id = ? AND hash = ?",
                (job["experiment_id"], job["hash"]),
            ).fetchone()
        return Entry.from_row(found), False

    def record_many(
        self, jobs: Iterable[Mapping[str, Any]], *, source: str | None = None, batch: int = 5000
    ) -> tuple[int, int]:
        """Store many prepared jobs, one transaction per batch; returns ``(created, known)``."""
        created = seen = 0
        rows: list[tuple[Any, ...]] = []
        for job in jobs:
            rows.append(job_row(job, now_iso(), source))
            if len(rows) >= batch:
                created, seen = created + self._insert_rows(rows), seen + len(rows)
                rows = []
        if rows:
            created, seen = created + self._insert_rows(rows), seen + len(rows)
        return created, seen - created

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        with self.write() as conn:
            return conn.executemany(INSERT, rows).rowcount

    # --- reading -----------------------------------------------------------------------

    def get(self, entry_id: int | str) -> Entry:
        key = entry_id if isinstance(entry_id, int) else parse_id(entry_id)
        rows = self.read(SELECT + " WHERE id = ?", (key,))
        if not rows:
            raise NotFound(f"no entry with id {entry_id}: see `logbook list`")
        return Entry.from_row(rows[0])

    def find(self, experiment_id: str, hash_: str) -> Entry | None:
        rows = self.read(SELECT + " WHERE experiment_id = ? AND hash = ?", (experiment_id, hash_))
        return Entry.from_row(rows[0]) if rows else None

    def entries(
        self,
        *,
        state: str | None = None,
        experiment_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        page: int = 1000,
    ) -> Iterator[Entry]:
        """Entries in id order, streamed in pages so memory stays flat on a large store."""
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
            conds, p = list(where), list[Any](params)
            if cursor_id is not None:
                conds.append("id < ?" if newest_first else "id > ?")
                p.append(cursor_id)
            n = page if left is None else min(page, left)
            sql = SELECT + (" WHERE " + " AND ".join(conds) if conds else "")
            sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT {n}"
            rows = self.read(sql, p)
            for r in rows:
                yield Entry.from_row(r)
            if len(rows) < n:
                return
            cursor_id = rows[-1]["id"]
            if left is not None:
                left -= len(rows)

    def counts(self) -> dict[str, int]:
        """Entries in each state: four rows kept by triggers, not a count of the table."""
        got = {r["state"]: int(r["n"]) for r in self.read("SELECT state, n FROM entry_counts")}
        return {state: got.get(state, 0) for state in STATES}

    def oldest_pending(self) -> str | None:
        # The first pending and the first sending entry by id, through the (state, id)
        # index: min(created_at) over every pending row took 180 ms on a million.
        # Entries are stamped when inserted, so id order is time order.
        return self.scalar(  # type: ignore[no-any-return]
            "SELECT min(created_at) FROM ("
            " SELECT (SELECT created_at FROM entries WHERE state = 'pending' ORDER BY id LIMIT 1)"
            " AS created_at UNION ALL"
            " SELECT (SELECT created_at FROM entries WHERE state = 'sending' ORDER BY id LIMIT 1))"
        )

    def unconfirmed(self) -> tuple[int, str | None]:
        """Entries a relay accepted whose API id has not come back: how many, and when the
        oldest was accepted (the partial index ``entries_unconfirmed``).
        """
        row = self.read(f"SELECT count(*), min(synced_at) FROM entries {_UNCONFIRMED}")[0]
        return int(row[0]), row[1]

    def missing(self) -> int:
        """Synced entries the API no longer has (a refresh got 404; never re-sent on its own)."""
        return int(self.scalar("SELECT count(*) FROM entries WHERE missing_at IS NOT NULL"))

    def oldest_undelivered(self) -> str | None:
        """When the oldest entry the API does not have yet (to logbook's knowledge) was
        recorded: pending, being sent, or accepted by a relay and not yet confirmed.
        """
        return self._oldest_undelivered(self._unconfirmed_scan()[1])

    def _unconfirmed_scan(self) -> tuple[int, str | None]:
        """How many entries are unconfirmed, and when the oldest was recorded: one pass over
        the partial index (ids are in time order: the smallest id is the oldest).
        """
        count, first = self.read(f"SELECT count(*), min(id) FROM entries {_UNCONFIRMED}")[0]
        if not count:
            return 0, None
        return int(count), self.scalar("SELECT created_at FROM entries WHERE id = ?", (first,))

    def _oldest_undelivered(self, oldest_unconfirmed: str | None) -> str | None:
        found = [t for t in (self.oldest_pending(), oldest_unconfirmed) if t]
        return min(found) if found else None

    def figures(self) -> Figures:
        """What the daemons' metrics, readiness and status line show: a few indexed reads."""
        from ..health import Figures

        unconfirmed, oldest_unconfirmed = self._unconfirmed_scan()
        meta = {
            r["key"]: r["value"]
            for r in self.read(
                "SELECT key, value FROM meta"
                " WHERE key IN ('last_delivery', 'last_contact', 'last_sync')"
            )
        }
        return Figures(
            counts=self.counts(), unconfirmed=unconfirmed,
            oldest_undelivered=self._oldest_undelivered(oldest_unconfirmed),
            last_delivery=meta.get("last_delivery"),
            last_contact=meta.get("last_contact"), last_sync=meta.get("last_sync"),
            missing=self.missing(),
        )  # fmt: skip

    def get_meta(self, key: str) -> str | None:
        return self.scalar("SELECT value FROM meta WHERE key = ?", (key,))  # type: ignore[no-any-return]

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as conn:
            conn.execute(SET_META, (key, value))

    def record_run(self, run: Mapping[str, Any], contacted: bool = False) -> None:
        """Add a sync run to the history (``runs``); its end is the store's ``last_sync``,
        and ``last_contact`` too when the server answered it (a relay's status shows that).
        """
        cols = ", ".join(run)
        with self.write() as conn:
            conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(run))})",
                         tuple(run.values()))  # fmt: skip
            conn.execute(SET_META, ("last_sync", run["ended_at"]))
            if contacted:
                conn.execute(SET_META, ("last_contact", run["ended_at"]))

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.read("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def status(self) -> Status:
        unconfirmed, oldest_unconfirmed = self.unconfirmed()
        return Status(
            db=self.path,
            counts=self.counts(),
            oldest_pending=self.oldest_pending(),
            last_sync=self.get_meta("last_sync"),
            invalid_files=self.ledger.invalid_count(),
            unconfirmed=unconfirmed,
            oldest_unconfirmed=oldest_unconfirmed,
            missing=self.missing(),
            last_bundle_export=self.get_meta("last_bundle_export"),
            last_receipt_applied=self.get_meta("last_receipt_applied"),
        )

    def integrity(self) -> str:
        """``ok`` or SQLite's description of what is damaged."""
        rows = self.read("PRAGMA quick_check")
        return "; ".join(str(r[0]) for r in rows[:5])

    def journal_mode(self) -> str:
        return str(self.scalar("PRAGMA journal_mode"))

    def schema_version(self) -> int:
        return int(self.scalar("PRAGMA user_version"))
