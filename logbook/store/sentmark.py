"""The sent mark: how a sync tells that its store was put back to an older copy.

A store restored from a backup brings back, as ``pending``, entries that were
posted after the backup was taken. The API does not de-duplicate posts, so
sending them again would make a second job of each. Before a run sends
anything, it raises the store's *send generation* (in ``meta``) and writes the
same number to a small file beside the store, ``<store>.sent``. It does both
under the store's write lock, so runs of several processes keep the two in
step. A store whose generation is behind that file's (same store id) is an
older copy of itself. Its pending entries are flagged ``maybe_sent``, so each
is looked up at the API by ``(experiment_id, hash)`` and posted only if the
API does not have it.

What this cannot tell: a restore that also puts back the mark file (a whole
directory from one backup). A mark that cannot be read, or that names another
store, is no evidence and is replaced. A failed write of the mark is a warning:
the run goes on as it would have before the mark existed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from .connect import Database

log = logging.getLogger("logbook.store")

SUFFIX = ".sent"
_KEY = "send_generation"
_SET = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


def mark_path(store_path: str) -> Path:
    return Path(store_path + SUFFIX)


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
    put there), fsync, rename over the mark, the directory fsync'd."""
    path = mark_path(store_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps({"store_id": store_id, "generation": generation}).encode()
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def begin_sending(db: Database) -> int:
    """Before a run's first POST: raise the generation (store and mark) and return how many
    pending entries were flagged ``maybe_sent`` because the store is an older copy."""
    flagged = 0
    with db.write() as conn:
        store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if store_id is None:
            return 0
        store_id = store_id[0]
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY,)).fetchone()
        generation = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        mark = read_mark(db.path)
        if mark is not None and mark[0] == store_id and mark[1] > generation:
            flagged = conn.execute(
                "UPDATE entries SET maybe_sent = 1 WHERE state = 'pending' AND maybe_sent = 0"
            ).rowcount
            generation = mark[1]
            log.warning(
                "this store is older than its last sync (restored from a backup?): %d pending"
                " entries will be looked up before they are sent, so none is posted twice",
                flagged,
            )
        generation += 1
        conn.execute(_SET, (_KEY, str(generation)))
        try:
            _write_mark(db.path, store_id, generation)
        except OSError as err:
            if db.path not in _warned:  # once a process: a watcher runs a sync every few seconds
                _warned.add(db.path)
                log.warning(
                    "cannot write %s (%s): a restore of this store from a backup would not be"
                    " noticed", mark_path(db.path), err.strerror,
                )  # fmt: skip
    return flagged
