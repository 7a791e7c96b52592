"""A relay's side of the store: its keys, and its jobs committed in groups.

Lab machines authenticate with relay keys, never with the upstream API key.

A key is shown once, when it is made; the store keeps only its SHA-256 (the
key is 32 random bytes, so no slow hash is needed to make guessing hopeless).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput, NotFound
from ..jobs import content_key, same_job
from .connect import Database, now_iso
from .schema import INSERT, SELECT, STATES, Entry
from .schema import row as job_row

PREFIX = "lbr_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class RelayKeys:
    def __init__(self, store: Database) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Make a key for ``name``; returns it (the only time it is ever seen)."""

        if not name or not name.isprintable() or len(name) > 100:
            raise BadInput("a relay key's name: 1 to 100 printable characters")
        key = PREFIX + secrets.token_urlsafe(32)
        with self.store.write() as conn:
            if conn.execute("SELECT 1 FROM relay_keys WHERE name = ?", (name,)).fetchone():
                raise BadInput(f"a relay key named {name!r} exists: revoke it first")
            conn.execute(
                "INSERT INTO relay_keys (name, sha256, created_at) VALUES (?, ?, ?)",
                (name, _digest(key), now_iso()),
            )
        return key

    def revoke(self, name: str) -> None:

        with self.store.write() as conn:
            changed = conn.execute(
                "UPDATE relay_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now_iso(), name),
            ).rowcount
        if not changed:
            raise NotFound(f"no active relay key named {name!r}: see `logbook relay key list`")

    def described(self) -> list[dict[str, Any]]:
        """Every key's name and dates, never the key (only its hash is stored)."""
        rows = self.store.read("SELECT name, created_at, revoked_at FROM relay_keys ORDER BY name")
        return [dict(r) for r in rows]

    def active(self) -> dict[str, str]:
        """``{sha256: name}`` of the keys that are not revoked."""
        rows = self.store.read("SELECT name, sha256 FROM relay_keys WHERE revoked_at IS NULL")
        return {r["sha256"]: r["name"] for r in rows}

    def by_digest(self) -> dict[str, tuple[str, bool]]:
        """``{sha256: (name, active)}`` of every key, revoked ones included (to name them)."""
        rows = self.store.read("SELECT name, sha256, revoked_at FROM relay_keys")
        return {r["sha256"]: (r["name"], r["revoked_at"] is None) for r in rows}

    def version(self) -> int:
        """Changes when another connection commits (a key added or revoked, among others):
        a running relay reads its keys again only then."""
        return int(self.store.scalar("PRAGMA data_version"))

    @staticmethod
    def digest(key: str) -> str:
        return _digest(key)


@dataclass
class Held:
    """What a relay holds for one POST: the entry, and whether the POST created it.

    ``conflict``: the identity is held with other content; the entry is the held
    one, and the POST is answered 409 (it is never linked to another's job).
    """

    entry: Entry
    created: bool
    conflict: bool = False


class RelayJobs:
    def __init__(self, store: Database) -> None:
        self.store = store

    def record_batch(
        self, jobs: Sequence[Mapping[str, Any]], sources: Sequence[str | None],
        reoffers: Sequence[bool] | None = None,
    ) -> list[Held]:  # fmt: skip
        """Record many prepared jobs in ONE transaction (one fsync): a relay's group commit.

        A job already held (the same experiment and hash) gives the held entry:
        the same content is the same job (and a rejected one goes back to be
        forwarded again: a lab's ``retry``), other content is a conflict.  Every
        new job, and a held one a lab offers again (``reoffers``: the lab looked it
        up first), is looked up upstream before it is forwarded: it may be there
        already.
        """
        created_at = now_iso()
        reoffers = reoffers or [False] * len(jobs)
        out: list[Held] = []
        with self.store.write() as conn:
            for job, source, reoffer in zip(jobs, sources, reoffers, strict=True):
                cur = conn.execute(INSERT, job_row(job, created_at, source))
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    # Looked up upstream before its first post, like every job (the Haiqu
                    # SDK's rule): while the relay held it, its lab may have sent it to
                    # the API by another way (the relay unreachable, or paused).
                    conn.execute("UPDATE entries SET maybe_sent = 1 WHERE id = ?",
                                 (cur.lastrowid,))  # fmt: skip
                    entry = Entry(**job, id=cur.lastrowid, created_at=created_at, source=source)
                    entry.maybe_sent = True
                    out.append(Held(entry, True))
                    continue
                held = _held(conn, job)
                if not same_job(content_key(held.post_body()), held.circuit_hash, job):
                    out.append(Held(held, False, conflict=True))
                    continue
                if held.state == "rejected" or (reoffer and held.state == "pending"):
                    conn.execute(_AGAIN, (int(reoffer), held.id))
                    held = _held(conn, job)
                out.append(Held(held, False))
        return out

    def mark_started(self) -> int:
        """A relay starting: every job not yet forwarded is looked up upstream before it is
        posted (those a store written before that rule holds too); returns how many wait.
        Its store may be a restored copy that forgot it had forwarded them.
        """
        with self.store.write() as conn:
            return conn.execute(  # 'sending': a run of the relay's that is gone
                "UPDATE entries SET maybe_sent = 1 WHERE state IN ('pending', 'sending')"
            ).rowcount

    def counts_by_source(self) -> dict[str, dict[str, int]]:
        """``{source: {state: n}}``: a relay's per-client counts."""
        out: dict[str, dict[str, int]] = {}
        for r in self.store.read(
            "SELECT source, state, count(*) AS n FROM entries GROUP BY source, state"
        ):
            out.setdefault(r["source"] or "", dict.fromkeys(STATES, 0))[r["state"]] = r["n"]
        return out


#: A held job posted again: a rejected one goes back to be forwarded (a lab's retry);
#: a re-offer marks it to be looked up upstream first.
_AGAIN = (
    "UPDATE entries SET state = CASE WHEN state = 'rejected' THEN 'pending' ELSE state END,"
    " next_attempt_at = NULL, maybe_sent = max(maybe_sent, ?) WHERE id = ?"
    " AND state IN ('rejected', 'pending')"
)


def _held(conn: sqlite3.Connection, job: Mapping[str, Any]) -> Entry:
    row = conn.execute(
        SELECT + " WHERE experiment_id = ? AND hash = ?", (job["experiment_id"], job["hash"])
    ).fetchone()
    return Entry.from_row(row)
