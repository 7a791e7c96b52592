"""The sent mark: how a sync tells that its store was put back to an older copy.

A store restored from a backup brings back, as ``pending`` (or ``rejected``),
entries that were posted after the backup was taken. The API does not
de-duplicate posts, so sending them again would make a second job of each.
Each claim of entries to send raises the store's *send generation* (in
``meta``) and writes the same number to a small file beside the store,
``<store>.sent``, in the claim's own transaction: before any entry it claims
can be posted, the mark is ahead of every copy of the store taken before. At a
run's start, a store whose generation is behind its mark (same store id) is
an older copy of itself. Its pending and rejected entries are flagged
``maybe_sent``, so each is looked up at the API by ``(experiment_id, hash)``
and posted only if the API does not have it.

The mark sits beside the store's real file (symlinks resolved), so every path
to one store shares one mark. It is not fsync'd: a power loss may keep an
older mark, which errs towards no alarm, never a false one.

What this cannot tell: a restore that also puts back the mark (a whole
directory from one backup), and a copy of the store used at another path or on
another machine (it has no mark there). A mark that cannot be read, or that
names another store, is no evidence and is replaced. A failed write of the mark
is a warning: the run goes on as it would have before the mark existed.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

from .connect import SET_META, Database

log = logging.getLogger("logbook.store")

SUFFIX = ".sent"
_KEY = "send_generation"
_GENERATION = f"SELECT value FROM meta WHERE key = '{_KEY}'"
_STORE_ID = "SELECT value FROM meta WHERE key = 'store_id'"


def mark_path(store_path: str) -> Path:
    return Path(os.path.realpath(store_path) + SUFFIX)


#: A mark is a few dozen bytes; anything longer is not one.
_MAX_BYTES = 4096
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_warned: set[str] = set()


def read_mark(store_path: str) -> tuple[str, int] | None:
    """``(store_id, generation)`` from the mark beside the store, or None.

    Opened without following a symlink and without blocking (a FIFO put there would hang a
    plain read), and only a small regular file is read.
    """
    try:
        fd = os.open(mark_path(store_path), os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            return None
        data = json.loads(raw)
        store_id, generation = data["store_id"], data["generation"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    finally:
        os.close(fd)
    if not isinstance(store_id, str) or type(generation) is not int or generation < 0:
        return None
    return store_id, generation


def _write_mark(store_path: str, store_id: str, generation: int) -> None:
    """Written whole or not at all: a temporary file of our own (never through a link someone
    put there), renamed over the mark; the temporary file never stays behind."""
    path = mark_path(store_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps({"store_id": store_id, "generation": generation}).encode()
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _number(value: object) -> int:
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _one(conn: sqlite3.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def check_restored(db: Database) -> int:
    """At a run's start: flag a restored store's pending and rejected entries ``maybe_sent``
    and catch its generation up with the mark; returns how many were flagged."""
    mark = read_mark(db.path)
    if mark is None or mark[0] != db.scalar(_STORE_ID):
        return 0
    if mark[1] <= _number(db.scalar(_GENERATION)):  # the usual case: reads, no write lock
        return 0
    with db.write() as conn:
        if mark[1] <= _number(_one(conn, _GENERATION)):
            return 0  # another process caught it up meanwhile
        flagged = conn.execute(
            "UPDATE entries SET maybe_sent = 1"
            " WHERE state IN ('pending', 'rejected') AND maybe_sent = 0"
        ).rowcount
        conn.execute(SET_META, (_KEY, str(mark[1])))
    log.warning(
        "this store is behind its last sync (restored from a backup, or a sync stopped as it"
        " began): %d entries not yet synced will be looked up before they are sent, so none"
        " is posted twice", flagged,
    )  # fmt: skip
    return flagged


def note_claim(conn: sqlite3.Connection, store_path: str) -> None:
    """In a claim's transaction, before any entry it takes can be posted: raise the store's
    generation and write the mark, so every copy taken before is told as older."""
    generation = _number(_one(conn, _GENERATION)) + 1
    conn.execute(SET_META, (_KEY, str(generation)))
    store_id = _one(conn, _STORE_ID)
    if not isinstance(store_id, str):
        return
    try:
        _write_mark(store_path, store_id, generation)
    except OSError as err:
        if store_path not in _warned:  # once a process: a watcher claims every few seconds
            _warned.add(store_path)
            log.warning(
                "cannot write %s (%s): a restore of this store from a backup would not be"
                " noticed", mark_path(store_path), err.strerror,
            )  # fmt: skip
