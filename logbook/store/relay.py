"""A relay's side of the store: its keys, and its jobs committed in groups.

Lab machines authenticate with relay keys, never with the upstream API key.

A key is shown once, when it is made; the store keeps only its SHA-256 (the
key is 32 random bytes, so no slow hash is needed to make guessing hopeless).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from ..errors import BadInput, NotFound
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


class RelayJobs:
    def __init__(self, store: Database) -> None:
        self.store = store

    def record_batch(
        self, jobs: list[Mapping[str, Any]], sources: list[str | None]
    ) -> list[tuple[Entry, bool]]:
        """Record many prepared jobs in ONE transaction (one fsync): ``(entry, created)`` each.

        A relay's group commit: concurrent POSTs share this commit.  A job
        already held (the same experiment and hash) gives its existing entry.
        """

        created_at = now_iso()
        out: list[tuple[Entry, bool]] = []
        with self.store.write() as conn:
            for job, source in zip(jobs, sources, strict=True):
                cur = conn.execute(INSERT, job_row(job, created_at, source))
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    entry = Entry(**job, id=cur.lastrowid, created_at=created_at, source=source)
                    out.append((entry, True))
                    continue
                row = conn.execute(
                    SELECT + " WHERE experiment_id = ? AND hash = ?",
                    (job["experiment_id"], job["hash"]),
                ).fetchone()
                out.append((Entry.from_row(row), False))
        return out

    def counts_by_source(self) -> dict[str, dict[str, int]]:
        """``{source: {state: n}}``: a relay's per-client counts."""
        out: dict[str, dict[str, int]] = {}
        for r in self.store.read(
            "SELECT source, state, count(*) AS n FROM entries GROUP BY source, state"
        ):
            out.setdefault(r["source"] or "", dict.fromkeys(STATES, 0))[r["state"]] = r["n"]
        return out
