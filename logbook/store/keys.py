"""A relay's keys: lab machines authenticate with these, never with the upstream API key.

A key is shown once, when it is made; the store keeps only its SHA-256 (the
key is 32 random bytes, so no slow hash is needed to make guessing hopeless).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, NotFound

if TYPE_CHECKING:
    from . import Store

PREFIX = "lbr_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class RelayKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Make a key for ``name``; returns it (the only time it is ever seen)."""
        from . import now_iso

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
        from . import now_iso

        with self.store.write() as conn:
            changed = conn.execute(
                "UPDATE relay_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now_iso(), name),
            ).rowcount
        if not changed:
            raise NotFound(f"no active relay key named {name!r}: see `logbook relay key list`")

    def list(self) -> list[dict[str, Any]]:
        rows = self.store.read("SELECT name, created_at, revoked_at FROM relay_keys ORDER BY name")
        return [dict(r) for r in rows]

    def active(self) -> dict[str, str]:
        """``{sha256: name}`` of the keys that are not revoked."""
        rows = self.store.read("SELECT name, sha256 FROM relay_keys WHERE revoked_at IS NULL")
        return {r["sha256"]: r["name"] for r in rows}

    @staticmethod
    def digest(key: str) -> str:
        return _digest(key)
