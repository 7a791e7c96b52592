"""The store's side of bundles and receipts: a snapshot out, jobs in, outcomes back.

- ``snapshot`` reads every entry a bundle carries (not yet on the server:
  ``pending`` or ``sending``) in ONE read transaction: other processes go on
  recording (WAL), and the bundle holds exactly the entries committed when it
  began.  Nothing is written.
- ``record`` inserts a batch of imported jobs in one short write, flagged
  ``maybe_sent``: a bundled job may already be on the server (the same bundle
  imported on another machine, or its first machine was online once), so the
  first sync looks it up before posting it.  A job already held comes back
  with what the store holds, for the caller to compare.
- ``apply`` writes a receipt's outcomes: only forward (pending -> synced or
  rejected, rejected -> synced), never an entry a running sync holds.

The schema is untouched: an imported entry's ``source`` names its bundle, and
the times of the last export and the last receipt live in ``meta``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..jobs import JOB_FIELDS, canonical_json
from .connect import SET_META, Database, now_iso, translate
from .schema import INSERT_COLUMNS
from .schema import row as job_row

#: What a bundle carries: every entry the server does not have yet.
CARRIED = "state IN ('pending', 'sending')"
_JOB_LIST = ", ".join(JOB_FIELDS)
_BY_KEY = " FROM entries WHERE experiment_id = ? AND hash = ?"
_HERE = "state, remote_id, remote_status, upstream_id, via, synced_at, last_error, missing_at"
_INSERT_LIST = ", ".join(INSERT_COLUMNS)
_BATCH_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS bundle_batch (seq INTEGER PRIMARY KEY, {_INSERT_LIST})"
)
_STAGE = (
    f"INSERT INTO temp.bundle_batch (seq, {_INSERT_LIST})"
    f" VALUES (?, {', '.join('?' * len(INSERT_COLUMNS))})"
)
#: Imported entries are flagged maybe_sent: looked up before their first post.
_COPY = (
    f"INSERT INTO main.entries ({_INSERT_LIST}, maybe_sent)"
    f" SELECT {_INSERT_LIST}, 1 FROM temp.bundle_batch ORDER BY seq"
    " ON CONFLICT(experiment_id, hash) DO NOTHING"
)
_HELD = (
    "SELECT b.seq, " + ", ".join(f"e.{f}" for f in JOB_FIELDS) + " FROM temp.bundle_batch b"
    " JOIN main.entries e ON e.experiment_id = b.experiment_id AND e.hash = b.hash"
    " ORDER BY b.seq"
)
_SYNCED = (
    "UPDATE entries SET state = 'synced', remote_id = ?, remote_status = ?, synced_at = ?,"
    " upstream_id = NULL, via = NULL, missing_at = NULL, last_error = NULL, maybe_sent = 0,"
    " next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND state IN ('pending', 'rejected')"
)
_REJECTED = (
    "UPDATE entries SET state = 'rejected', last_error = ?, next_attempt_at = NULL"
    " WHERE id = ? AND state = 'pending'"
)
#: What ``lookup`` finds for a key: the job the store holds, and the entry's bookkeeping.
Found = tuple[dict[str, Any], dict[str, Any]]
LAST_EXPORT = "last_bundle_export"
LAST_RECEIPT = "last_receipt_applied"


def job_digest(job: Mapping[str, Any]) -> str:
    """A job's checksum in a bundle: sha256 (hex) of the canonical JSON of its fields."""
    return hashlib.sha256(canonical_json(job).encode("utf-8")).hexdigest()


def job_of(values: Sequence[Any]) -> dict[str, Any]:
    """The job fields of a row (``JOB_FIELDS`` order), as a job document: text, metrics a dict."""
    job = {name: "" if v is None else v for name, v in zip(JOB_FIELDS, values, strict=False)}
    metrics = job["metrics"]
    job["metrics"] = json.loads(metrics) if metrics else {}
    return job


@dataclass
class Outcome:
    """What a receipt says became of one job: ``synced`` (with the API's id) or ``rejected``."""

    experiment_id: str
    hash: str
    sha256: str
    outcome: str
    remote_id: str | None = None
    remote_status: str | None = None
    synced_at: str | None = None
    reason: str | None = None


class Bundles:
    """Snapshot, record, look up and apply; every write is one short ``BEGIN IMMEDIATE``."""

    def __init__(self, store: Database) -> None:
        self.store = store
        self._staging = False

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every read inside sees the same committed state."""
        conn = self.store.conn
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as err:
            raise translate(err, self.store.path) from None
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    pass  # a read transaction: nothing of ours to keep

    @contextmanager
    def snapshot(self) -> Iterator[tuple[int, Iterator[dict[str, Any]]]]:
        """``(count, jobs)`` of every entry a bundle carries, in id order, as of one instant."""
        with self._reading() as conn:
            count = conn.execute(f"SELECT count(*) FROM entries WHERE {CARRIED}").fetchone()[0]
            cursor = conn.execute(f"SELECT {_JOB_LIST} FROM entries WHERE {CARRIED} ORDER BY id")
            yield int(count), (job_of(r) for r in cursor)

    @contextmanager
    def lookup(self) -> Iterator[Callable[[str, str], Found | None]]:
        """A function ``(experiment_id, hash) -> (job, here) | None`` over one read transaction;
        ``here``: the entry's state, ids, status and error.
        """
        width = len(JOB_FIELDS)
        sql = f"SELECT {_JOB_LIST}, {_HERE}{_BY_KEY}"
        with self._reading() as conn:

            def find(experiment_id: str, hash_: str) -> Found | None:
                r = conn.execute(sql, (experiment_id, hash_)).fetchone()
                if r is None:
                    return None
                values = tuple(r)
                here = dict(zip(r.keys()[width:], values[width:], strict=True))
                return job_of(values[:width]), here

            yield find

    def record(
        self, jobs: Sequence[Mapping[str, Any]], source: str
    ) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """Insert ``jobs`` in one transaction; returns how many were new and, when some were
        held already, ``(index, the job the store holds)`` for every one of them (ours or
        theirs: the caller compares).

        The batch goes through a temporary table (in memory) and ONE ``INSERT ... SELECT``:
        an ``executemany`` is a statement per row, and with the counting triggers each
        statement journals the pages it touches again (14 writes a row to a temporary file).
        """
        stamp = now_iso()
        self._stage()
        with self.store.write() as conn:
            conn.executemany(_STAGE, [(i, *job_row(j, stamp, source)) for i, j in enumerate(jobs)])
            created = conn.execute(_COPY).rowcount
            held: list[tuple[int, dict[str, Any]]] = []
            if created < len(jobs):
                held = [(r[0], job_of(tuple(r)[1:])) for r in conn.execute(_HELD)]
            conn.execute("DELETE FROM temp.bundle_batch")
        return created, held

    def _stage(self) -> None:
        """The temporary table a batch passes through (once per connection, in memory)."""
        if self._staging:
            return
        try:
            self.store.conn.execute("PRAGMA temp_store = MEMORY")
            self.store.conn.execute(_BATCH_TABLE)
        except sqlite3.Error as err:
            raise translate(err, self.store.path) from None
        self._staging = True

    def apply(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Write a batch of a receipt's outcomes in one transaction; returns, for each, what
        became of the entry here: ``synced``, ``rejected``, ``already synced``, ``sending``
        (a running sync holds it: left alone), ``unchanged``, ``not here`` or ``other
        content`` (this store holds another job under that identity).
        """
        done: list[str] = []
        with self.store.write() as conn:
            for o in outcomes:
                r = conn.execute(
                    f"SELECT id, state, {_JOB_LIST}{_BY_KEY}", (o.experiment_id, o.hash)
                ).fetchone()
                done.append(self._apply_one(conn, o, r))
        return done

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, o: Outcome, r: sqlite3.Row | None) -> str:
        if r is None:
            return "not here"
        entry_id, state = r[0], r[1]
        if state == "synced":
            return "already synced"
        if state == "sending":
            return "sending"
        if job_digest(job_of(tuple(r)[2:])) != o.sha256:
            return "other content"
        if o.outcome == "synced":
            conn.execute(_SYNCED, (o.remote_id, o.remote_status, o.synced_at, entry_id))
            return "synced"
        if o.outcome == "rejected" and state == "pending":
            conn.execute(_REJECTED, (o.reason, entry_id))
            return "rejected"
        return "unchanged"

    # --- meta ------------------------------------------------------------------------------

    def exported(self, when: str) -> None:
        """Remember when the last bundle was exported (``status`` shows it)."""
        with self.store.write() as conn:
            conn.execute(SET_META, (LAST_EXPORT, when))

    def receipt_applied(self, bundle_id: str) -> str | None:
        """When the newest receipt applied for that bundle was made, if any."""
        return self.store.scalar(  # type: ignore[no-any-return]
            "SELECT value FROM meta WHERE key = ?", (f"receipt:{bundle_id}",)
        )

    def newest_receipt_from(self, made_in: str) -> str | None:
        """When the newest receipt applied from that (importing) store was made, any bundle."""
        return self.store.scalar(  # type: ignore[no-any-return]
            "SELECT value FROM meta WHERE key = ?", (f"receipt-from:{made_in}",)
        )

    def applied(self, bundle_id: str, made: str, made_in: str) -> None:
        """Remember a receipt as applied: an older (or the same) one for that bundle changes
        nothing later, and an older one from that store rejects nothing; ``status`` shows
        when the last one was.
        """
        with self.store.write() as conn:
            conn.execute(SET_META, (f"receipt:{bundle_id}", made))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                " SET value = max(value, excluded.value)", (f"receipt-from:{made_in}", made),
            )  # fmt: skip
            conn.execute(SET_META, (LAST_RECEIPT, now_iso()))
