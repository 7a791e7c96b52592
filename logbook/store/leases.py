"""The sync protocol's side of the store: claim, re-check, renew and settle entries.

An entry goes ``pending`` -> ``sending`` (claimed by one sync run, with a
lease) -> ``synced`` | ``rejected`` | back to ``pending``.  What keeps
delivery exactly-once here:

- A run is an *owner*: ``host:pid:start:token``.  The process start time
  tells a live process from a later one that reuses its pid, and the token
  tells a run still going in this process from one that ended (a watcher
  runs many).
- An entry held by a run that is still alive on this host is never taken by
  another, whether or not its lease ran out: a sync paused with SIGSTOP may
  still post it when it resumes.  Entries of a run that is gone (killed,
  crashed, ended without settling) are taken with ``maybe_sent`` set, so the
  taker looks them up before posting.  Only another host's entries (a store
  on a shared disk, which doctor warns about) fall back to lease expiry.
- Right before each POST the run re-checks, in memory, that its lease has not
  run out; once it has (the run was paused, or starved), ``revalidate`` renews
  only what the run still holds, and anything else is dropped unposted.
- ``settle`` changes only entries the run still holds.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..vocab import MAX_RETRY_DELAY, UNFINISHED
from .connect import Database, now_iso
from .schema import BY_UNCONFIRMED, SELECT, Entry
from .sentmark import note_claim

UNFINISHED_REMOTE: tuple[str, ...] = tuple(sorted(UNFINISHED))
_HOST = socket.gethostname()
_live: set[str] = set()
_live_lock = threading.Lock()


def _proc_stat(pid: int) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command name (Linux), or [] where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return stat[stat.rfind(b")") + 2 :].split()


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, or "" where unknown."""
    fields = _proc_stat(pid)
    return fields[19].decode() if len(fields) > 19 else ""


_MY_START = _start_time(os.getpid())


#: Pending entries whose retry time has come (two parameters: ``_due_at``).  A retry
#: time further ahead than any back-off was written under a clock since set back:
#: it is due now (a year-ahead clock, corrected, must not stall the backlog a year).
_DUE = (
    "state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ? OR next_attempt_at > ?)"
)


def _due_at(now: float, ignore_backoff: bool) -> tuple[float, float]:
    """``_DUE``'s parameters: due up to now (or all), and beyond the longest back-off."""
    return (float("inf") if ignore_backoff else now), now + MAX_RETRY_DELAY


def new_owner() -> str:
    """A fresh owner id for one sync run of this process; ``end_owner`` when the run ends."""
    token = secrets.token_hex(4)
    owner = f"{_HOST}:{os.getpid()}:{_MY_START}:{token}"
    with _live_lock:
        _live.add(owner)
    return owner


def end_owner(owner: str) -> None:
    with _live_lock:
        _live.discard(owner)


def owner_alive(owner: str | None) -> bool | None:
    """True: a run alive on this host; False: gone; None: another host's (trust its lease)."""
    if not owner:
        return False
    parts = owner.split(":")
    # host:pid (before 0.2) or host:pid:start:token; a host name has no ":".
    host, pid_text = parts[0], parts[1] if len(parts) > 1 else ""
    if host != _HOST or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if len(parts) >= 4 and pid == os.getpid() and parts[2] == _MY_START:
        with _live_lock:
            return owner in _live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] == b"Z":
        return False  # killed, not yet reaped by its parent: it will never post again
    if len(parts) >= 4 and parts[2] and len(fields) > 19 and fields[19].decode() != parts[2]:
        return False  # the pid was reused by a later process
    return True


@dataclass
class Outcome:
    """How one send ended; ``Leases.settle`` writes a batch of these at once."""

    entry_id: int
    state: str  # synced | pending | rejected | released
    remote_id: str | None = None
    remote_status: str | None = None
    upstream_id: str | None = None
    #: The relay that accepted it (its base URL), when the endpoint is one.
    via: str | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    maybe_sent: bool = False


@dataclass
class Refreshed:
    """What a status refresh learnt about one synced entry; ``Leases.refreshed`` writes them.

    ``kind``: ``status`` (a new status, and the API's id once a relay passes it
    on), ``reoffer`` (the relay that accepted it no longer holds it: send it
    again, looked up first), ``missing`` (the API itself no longer has it: only
    noted) or ``rejected`` (the API refused it, says the relay).
    """

    entry_id: int
    kind: str
    status: str | None = None
    upstream_id: str | None = None
    reason: str | None = None


@dataclass
class Claim:
    entries: list[Entry]
    #: The highest pending id taken (0 if none): a step that walks the backlog once goes on from it.
    last_pending: int = 0


_SETTLE = {
    "synced": "UPDATE entries SET state = 'synced', remote_id = ?, remote_status = ?,"
    " upstream_id = ?, via = ?, synced_at = ?, attempts = attempts + 1, last_error = NULL,"
    " maybe_sent = 0, missing_at = NULL, lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
    "pending": "UPDATE entries SET state = 'pending', last_error = ?, next_attempt_at = ?,"
    " maybe_sent = CASE WHEN ? THEN 1 ELSE maybe_sent END, attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
    "rejected": "UPDATE entries SET state = 'rejected', last_error = ?, attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
    "released": "UPDATE entries SET state = 'pending', lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND state = 'sending' AND lease_owner = ?",
}
#: An entry is delivered once the API has it: synced straight to it, or through a relay that
#: passed the API's id back.
_DELIVERED = "state = 'synced' AND (via IS NULL OR upstream_id IS NOT NULL)"
#: ``meta.last_delivery`` (what the daemons' metrics show, whichever process delivered): now,
#: when one of the entries (ids as a JSON array) is delivered.
_MARK_DELIVERY = (
    "INSERT INTO meta (key, value) SELECT 'last_delivery', ? WHERE EXISTS (SELECT 1 FROM entries"
    f" WHERE id IN (SELECT value FROM json_each(?)) AND {_DELIVERED})"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


class Leases:
    """Claim, re-check, renew and settle; every write is one short ``BEGIN IMMEDIATE``."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def _stale(self, now: float, limit: int | None = None) -> list[int]:
        """``sending`` entries whose run is gone (or, another host's, whose lease ran out)."""
        ids: list[int] = []
        owners = self.store.read(
            "SELECT lease_owner, count(*) AS n, min(lease_until) AS soonest FROM entries"
            " WHERE state = 'sending' GROUP BY lease_owner"
        )
        for r in owners:
            alive = owner_alive(r["lease_owner"])
            if alive or (alive is None and (r["soonest"] or 0) >= now):
                continue
            left = -1 if limit is None else limit - len(ids)
            if left == 0:
                break
            expiry = "" if alive is False else " AND coalesce(lease_until, 0) < ?"
            params: tuple[object, ...] = (r["lease_owner"],) + (() if alive is False else (now,))
            ids += [
                row["id"]
                for row in self.store.read(
                    f"SELECT id FROM entries WHERE state = 'sending' AND lease_owner IS ?{expiry}"
                    " ORDER BY id LIMIT ?",
                    (*params, left),
                )
            ]
        return ids

    def claim(
        self,
        owner: str,
        limit: int,
        *,
        lease_seconds: float,
        now: float | None = None,
        ignore_backoff: bool = False,
        after_id: int = 0,
    ) -> Claim:
        """Take up to ``limit`` due entries for ``owner`` to send.

        ``ignore_backoff`` takes pending entries whatever their next attempt
        time (a sync the user asked for now); ``after_id`` skips pending
        entries up to that id (a step that walks the backlog once).  Entries a
        gone run left ``sending`` are taken first, flagged ``maybe_sent``.
        """
        now = time.time() if now is None else now
        with self.store.write() as conn:
            stale = self._stale(now, limit)
            if stale:
                conn.executemany(
                    "UPDATE entries SET maybe_sent = 1 WHERE id = ?", [(i,) for i in stale]
                )
            ids, last = list(stale), 0
            if len(ids) < limit:
                pending = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM entries WHERE {_DUE} AND id > ? ORDER BY id LIMIT ?",
                        (*_due_at(now, ignore_backoff), after_id, limit - len(ids)),
                    )
                ]
                ids += pending
                last = pending[-1] if pending else 0
            if not ids:
                return Claim([])
            conn.executemany(
                "UPDATE entries SET state = 'sending', lease_owner = ?, lease_until = ?"
                " WHERE id = ?",
                [(owner, now + lease_seconds, i) for i in ids],
            )
            note_claim(conn, self.store.path)  # before any of them can be posted
            marks = ",".join("?" * len(ids))
            rows = conn.execute(SELECT + f" WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
        return Claim([Entry.from_row(r) for r in rows], last)

    def revalidate(self, owner: str, ids: Sequence[int], lease_seconds: float) -> set[int]:
        """Renew the lease on those of ``ids`` that ``owner`` still holds; returns them."""
        if not ids:
            return set()
        until = time.time() + lease_seconds
        held: set[int] = set()
        with self.store.write() as conn:
            for i in ids:
                if conn.execute(
                    "UPDATE entries SET lease_until = ? WHERE id = ? AND state = 'sending'"
                    " AND lease_owner = ?",
                    (until, i, owner),
                ).rowcount:
                    held.add(i)
        return held

    def settle(self, owner: str, outcomes: Sequence[Outcome]) -> dict[str, int]:
        """Write a batch of outcomes in one transaction (one fsync, not one per entry).

        Only entries ``owner`` still holds change; returns how many of each
        state were written.
        """

        if not outcomes:
            return {}
        stamp = now_iso()
        params: dict[str, list[tuple[object, ...]]] = {state: [] for state in _SETTLE}
        for o in outcomes:
            if o.state == "synced":
                params["synced"].append(
                    (o.remote_id, o.remote_status, o.upstream_id, o.via, stamp, o.entry_id, owner)
                )
            elif o.state == "pending":
                params["pending"].append(
                    (o.error, o.next_attempt_at, int(o.maybe_sent), o.entry_id, owner)
                )
            elif o.state == "rejected":
                params["rejected"].append((o.error, o.entry_id, owner))
            elif o.state == "released":
                params["released"].append((o.entry_id, owner))
            else:
                raise ValueError(f"unknown outcome state {o.state!r}")
        written: dict[str, int] = {}
        with self.store.write() as conn:
            for state, rows in params.items():
                if rows:
                    written[state] = conn.executemany(_SETTLE[state], rows).rowcount
            if written.get("synced"):
                ids = json.dumps([row[-2] for row in params["synced"]])  # the entry ids
                conn.execute(_MARK_DELIVERY, (stamp, ids))
        return written

    # --- what is due ---------------------------------------------------------------------

    def due(
        self, limit: int, *, now: float | None = None, ignore_backoff: bool = False
    ) -> list[Entry]:
        """What a sync would send now, without claiming it (for ``--dry-run``): the entries
        ``count_due`` counts, with the same ``ignore_backoff``.
        """
        now = time.time() if now is None else now
        stale = self._stale(now, limit)
        rows = self.store.read(
            f"{SELECT} WHERE {_DUE} ORDER BY id LIMIT ?", (*_due_at(now, ignore_backoff), limit)
        )
        if stale:
            rows += self.store.read(SELECT + f" WHERE id IN ({','.join('?' * len(stale))})", stale)
        entries = sorted((Entry.from_row(r) for r in rows), key=lambda e: e.id)
        return entries[:limit]

    def count_due(self, now: float | None = None, *, ignore_backoff: bool = False) -> int:
        """How many entries a sync would send now."""
        now = time.time() if now is None else now
        due = self.store.scalar(
            f"SELECT count(*) FROM entries WHERE {_DUE}", _due_at(now, ignore_backoff)
        )
        return int(due) + len(self._stale(now))

    def any_due(self, now: float | None = None) -> bool:
        """Whether any entry is due now (one index probe, whatever the backlog)."""
        now = time.time() if now is None else now
        row = self.store.read(f"SELECT 1 FROM entries WHERE {_DUE} LIMIT 1", _due_at(now, False))
        return bool(row)

    def count_left(self, now: float | None = None) -> int:
        """Entries still to be sent: pending ones and those a gone run left ``sending``."""
        now = time.time() if now is None else now
        pending = self.store.scalar("SELECT count(*) FROM entries WHERE state = 'pending'")
        return int(pending) + len(self._stale(now))

    def count_held(self, owner: str | None = None) -> int:
        """``sending`` entries held by live runs other than ``owner``."""
        held = 0
        for r in self.store.read(
            "SELECT lease_owner, count(*) AS n FROM entries WHERE state = 'sending'"
            " GROUP BY lease_owner"
        ):
            if r["lease_owner"] != owner and owner_alive(r["lease_owner"]) is not False:
                held += r["n"]
        return held

    def count_owned(self, owner: str) -> int:
        """``sending`` entries ``owner`` still holds (none, once a run has settled)."""
        return int(
            self.store.scalar(
                "SELECT count(*) FROM entries WHERE state = 'sending' AND lease_owner = ?",
                (owner,),
            )
        )

    def next_due_at(self, now: float | None = None) -> float | None:
        """When the earliest pending entry becomes due (epoch seconds), if any (a time past
        the longest back-off counts as now, as in ``_DUE``).
        """
        now = time.time() if now is None else now
        return self.store.scalar(  # type: ignore[no-any-return]
            "SELECT min(CASE WHEN next_attempt_at > ? THEN 0 ELSE coalesce(next_attempt_at, 0)"
            " END) FROM entries WHERE state = 'pending'",
            (now + MAX_RETRY_DELAY,),
        )

    # --- remote statuses ---------------------------------------------------------------

    def unfinished_remote(
        self, limit: int, after_id: int = 0, synced_before: str = "9999"
    ) -> list[Entry]:
        """Synced, confirmed entries whose server status is not final yet, in id order.

        ``synced_before``: only those synced before then (a run does not ask
        again about what it has just been told).  Unconfirmed entries are
        ``unconfirmed``'s; jobs the API no longer has are not asked about again.
        """
        marks = ",".join("?" * len(UNFINISHED_REMOTE))
        rows = self.store.read(
            SELECT + f" WHERE state = 'synced' AND remote_status IN ({marks}) AND id > ?"
            f" AND {_ASKED} AND remote_id IS NOT NULL AND {_CONFIRMED}"
            " AND missing_at IS NULL ORDER BY id LIMIT ?",
            (*UNFINISHED_REMOTE, after_id, *_asked(synced_before), limit),
        )
        return [Entry.from_row(r) for r in rows]

    def count_unfinished_remote(self, synced_before: str = "9999") -> int:
        marks = ",".join("?" * len(UNFINISHED_REMOTE))
        return int(
            self.store.scalar(
                "SELECT count(*) FROM entries WHERE state = 'synced'"
                f" AND remote_status IN ({marks}) AND {_ASKED} AND {_CONFIRMED}"
                " AND missing_at IS NULL",
                (*UNFINISHED_REMOTE, *_asked(synced_before)),
            )
        )

    def unconfirmed(
        self, limit: int, after: tuple[str, int] = ("", 0), synced_before: str = "9999"
    ) -> list[Entry]:
        """Entries a relay accepted whose API id has not come back, in the order they were
        accepted (``after``: the last one's ``(synced_at, id)``): each is asked about on
        every sync, whatever its status (a final one included).

        Pages walk the partial index ``entries_unconfirmed`` from where the last one
        ended, so a store of a million synced entries costs what its unconfirmed ones do.
        """
        since, after_id = after
        asked = _asked(synced_before)
        rows = self.store.read(
            f"{SELECT} {BY_UNCONFIRMED} WHERE {_UNCONFIRMED} AND synced_at = ? AND id > ?"
            f" AND {_ASKED} UNION ALL {SELECT} {BY_UNCONFIRMED} WHERE {_UNCONFIRMED}"
            f" AND synced_at > ? AND {_ASKED} ORDER BY synced_at, id LIMIT ?",
            (since, after_id, *asked, since, *asked, limit),
        )
        return [Entry.from_row(r) for r in rows]

    def count_unconfirmed(self, synced_before: str = "9999") -> int:
        return int(
            self.store.scalar(
                f"SELECT count(*) FROM entries {BY_UNCONFIRMED} WHERE {_UNCONFIRMED} AND {_ASKED}",
                _asked(synced_before),
            )
        )

    def refreshed(self, changes: Sequence[Refreshed]) -> dict[str, int]:
        """Write what a refresh learnt, in one transaction; how many of each kind changed.

        Each change applies only to an entry still as it was asked about (synced,
        and still unconfirmed for a re-offer or a rejection): another process may
        have moved it meanwhile.
        """
        if not changes:
            return {}
        stamp = now_iso()
        params: dict[str, list[tuple[object, ...]]] = {kind: [] for kind in _REFRESHED}
        for c in changes:
            if c.kind == "status":
                params["status"].append((c.status, c.upstream_id, stamp, c.entry_id))
            elif c.kind == "reoffer":
                params["reoffer"].append((c.reason, stamp, c.entry_id))
            elif c.kind == "rejected":
                params["rejected"].append((c.reason, c.status, stamp, c.entry_id))
            elif c.kind == "missing":
                params["missing"].append((stamp, stamp, c.entry_id))
            else:
                raise ValueError(f"unknown refresh kind {c.kind!r}")
        # Entries whose API id comes back now: delivered now (not those that had it already).
        confirming = json.dumps([c.entry_id for c in changes if c.upstream_id is not None])
        written: dict[str, int] = {}
        with self.store.write() as conn:
            newly = confirming != "[]" and conn.execute(_CONFIRMING, (confirming,)).fetchone()
            for kind, rows in params.items():
                if rows:
                    written[kind] = conn.executemany(_REFRESHED[kind], rows).rowcount
            if newly:
                conn.execute(_MARK_DELIVERY, (stamp, confirming))
        return written


#: Synced before the run that asks (``synced_before``: it does not ask again about what it
#: has just been told), or under a clock since set back (a ``synced_at`` still ahead of
#: now): a corrected clock must not hide an entry from the refresh until that date.
_ASKED = "(synced_at < ? OR synced_at > ?)"


def _asked(synced_before: str) -> tuple[str, str]:
    """``_ASKED``'s parameters."""
    return synced_before, now_iso()


#: An entry the API has, to logbook's knowledge (direct, or its API id came back).
_CONFIRMED = "(via IS NULL OR upstream_id IS NOT NULL)"
#: Synced through a relay, and the API's id not back yet (the partial index's condition).
_UNCONFIRMED = "state = 'synced' AND via IS NOT NULL AND upstream_id IS NULL"
_CONFIRMING = (
    f"SELECT 1 FROM entries WHERE id IN (SELECT value FROM json_each(?)) AND {_UNCONFIRMED} LIMIT 1"
)
_REFRESHED = {
    "status": "UPDATE entries SET remote_status = ?, upstream_id = coalesce(?, upstream_id),"
    " refreshed_at = ? WHERE id = ? AND state = 'synced'",
    "reoffer": "UPDATE entries SET state = 'pending', maybe_sent = 1, next_attempt_at = NULL,"
    " remote_id = NULL, remote_status = NULL, via = NULL, synced_at = NULL, last_error = ?,"
    " refreshed_at = ?"
    f" WHERE id = ? AND {_UNCONFIRMED}",
    "rejected": "UPDATE entries SET state = 'rejected', last_error = ?,"
    " remote_status = coalesce(?, remote_status), refreshed_at = ?"
    f" WHERE id = ? AND {_UNCONFIRMED}",
    "missing": "UPDATE entries SET missing_at = ?, refreshed_at = ?"
    " WHERE id = ? AND state = 'synced' AND missing_at IS NULL",
}
