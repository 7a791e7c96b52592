"""What the user does to entries by hand: ``retry`` (and ``--missing``) and ``rm``.

A mixin of ``Store``: every action is one transaction, all or nothing, and
says why each entry it leaves alone was left.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import NotFound, Refused
from .connect import Database
from .schema import SELECT, Entry


class EntryActions(Database):
    """``retry`` and ``remove``, on the store's connection."""

    def retry(
        self, ids: Iterable[int | str] = (), *, all_rejected: bool = False, missing: bool = False
    ) -> int:
        """Put rejected entries back to pending (``missing``: also the synced entries the API
        no longer has); returns how many changed.  An unknown id changes nothing.
        """
        changed, _ = self.retry_entries(ids, all_rejected=all_rejected, missing=missing)
        return changed

    def retry_entries(
        self, ids: Iterable[int | str] = (), *, all_rejected: bool = False, missing: bool = False
    ) -> tuple[int, list[tuple[int, str]]]:
        """``retry``, and why each id given was left as it was: ``[(id, reason)]``.

        One transaction: an unknown id (``NotFound``) changes nothing at all.
        """
        keys = list(dict.fromkeys(raw if isinstance(raw, int) else parse_id(raw) for raw in ids))
        with self.write() as conn:
            given = []
            for entry_id in keys:
                found = conn.execute(SELECT + " WHERE id = ?", (entry_id,)).fetchone()
                if found is None:
                    raise NotFound(f"no entry with id {entry_id}: see `logbook list`")
                given.append(Entry.from_row(found))
            changed = 0
            if all_rejected:
                changed += conn.execute(_TO_PENDING + " WHERE state = 'rejected'").rowcount
            if missing:
                changed += conn.execute(_MISSING_TO_PENDING + _MISSING).rowcount
            unchanged = []
            for entry in given:
                if entry.state == "rejected":
                    sql = _TO_PENDING + " WHERE id = ? AND state = 'rejected'"
                elif entry.missing_at is not None:
                    sql = _MISSING_TO_PENDING + _MISSING + " AND id = ?"
                else:
                    unchanged.append((entry.id, not_retried(entry)))
                    continue
                changed += conn.execute(sql, (entry.id,)).rowcount
            return changed, unchanged

    def remove(self, ids: Iterable[int | str]) -> int:
        """Remove entries not yet sent (pending or rejected); returns how many went.

        All or nothing, in one transaction: an unknown id (``NotFound``), or an
        entry the server has or may have (synced, being sent, or pending after a
        send that got no clear answer: ``Refused``, with the reason), removes
        nothing.  Removing is how a wrong entry is corrected: ``rm``, then
        ``record`` it again.
        """
        keys = list(dict.fromkeys(raw if isinstance(raw, int) else parse_id(raw) for raw in ids))
        with self.write() as conn:
            for entry_id in keys:
                found = conn.execute(SELECT + " WHERE id = ?", (entry_id,)).fetchone()
                if found is None:
                    raise NotFound(
                        f"no entry with id {entry_id}: see `logbook list`; nothing removed"
                    )
                why = not_removable(Entry.from_row(found))
                if why:
                    raise Refused(f"{why}; nothing removed")
            return sum(
                conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,)).rowcount
                for entry_id in keys
            )


#: Back to pending, to be sent at the next sync.
_TO_PENDING = "UPDATE entries SET state = 'pending', next_attempt_at = NULL"
#: A job the API no longer has goes back to be sent again, as an uncertain one: the API may
#: have it again by then, so the next sync looks it up before it posts.
_MISSING_TO_PENDING = (
    "UPDATE entries SET state = 'pending', missing_at = NULL, remote_id = NULL,"
    " remote_status = NULL, upstream_id = NULL, via = NULL, synced_at = NULL,"
    " next_attempt_at = NULL, maybe_sent = 1"
)
_MISSING = " WHERE state = 'synced' AND missing_at IS NOT NULL"


def not_retried(entry: Entry) -> str:
    """Why ``retry`` leaves an entry as it is, in the user's words."""
    n = entry.id
    if entry.state == "synced":
        if not entry.confirmed:
            return (
                f"entry {n} is synced, accepted by the relay at {entry.via}: nothing to retry"
                " (`logbook sync` asks for its API id)"
            )
        return f"entry {n} is synced (the server's job {entry.remote_id}): nothing to retry"
    if entry.state == "sending":
        return f"entry {n} is being sent by a sync now: nothing to retry"
    return f"entry {n} is already pending: the next `logbook sync` sends it"


def not_removable(entry: Entry) -> str | None:
    """Why ``rm`` must keep an entry (the server has it, or may), or None."""
    n = entry.id
    if entry.state == "synced":
        return (
            f"entry {n} is synced (the server's job {entry.remote_id}): it cannot be removed"
            " here, the server keeps it"
        )
    if entry.state == "sending":
        return f"entry {n} is being sent by a sync now: it cannot be removed"
    if entry.state == "pending" and entry.maybe_sent and entry.attempts > 0:
        # a send of this store's got no clear answer; an entry only flagged to be looked up
        # first (imported from a bundle, in a store restored from a backup) was never sent here
        return (
            f"entry {n} may have reached the server (a send got no clear answer): run"
            " `logbook sync` first, it finds out"
        )
    return None


def parse_id(text: str) -> int:
    """An entry id the user typed: ASCII digits that fit SQLite's integer, else ``NotFound``."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFound(f"no entry with id {text!r}: an id is a number (see `logbook list`)")
    return int(text)
