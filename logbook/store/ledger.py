"""The ledger of result files read by ``watch`` and ``import``: nothing read twice, nothing missed.

Each file's jobs and its ledger row are written in one transaction, so a
restart never records a file twice and never forgets one half-recorded.

A file counts as unchanged only when its size, mtime, inode and ctime are
all as recorded: a rename over it changes the inode, a ``chmod`` (an
unreadable file made readable) changes the ctime.  When the recorded mtime
is so close to the moment the file was read that a later write in the same
timestamp tick would not show (git's "racily clean" case), the caller reads
it again and compares its hash.

Paths are kept as bytes: on Linux a file name need not be UTF-8.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreBusy, StoreFull
from .bulk import MAX_ROW_FILES, copy_rows_files
from .connect import Database, now_iso
from .schema import INSERT
from .schema import row as job_row

#: A file modified this close to (or after) the moment it was read may have
#: changed without changing its stat (coarse timestamps): read it again.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FileState:
    """What a file looked like: any change of these means it may hold something new."""

    size: int
    mtime_ns: int
    ino: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass
class FileRecord:
    """A ledger row: how a file was when it was last read, and what came of it."""

    state: FileState
    sha256: str
    outcome: str  # recorded | invalid
    reason: str | None
    read_ns: int

    def unchanged(self, state: FileState) -> bool:
        """True when ``state`` is the recorded one and is not too recent to trust."""
        return state == self.state and state.mtime_ns + RACY_NS < self.read_ns


@dataclass
class FileRead:
    """One file's outcome, to be recorded with its jobs.

    ``jobs`` are prepared jobs; a big file's ``row_files`` replace them: called
    with the most scratch files the store can copy in at once, it yields
    ``(path, rows)`` of scratch files from import's workers (see ``bulk``).  ``reason`` says why the
    file is invalid (None: it is not); a callable is asked after the rows are
    in, for a file whose errors are only known once it has been read through.
    """

    path: str
    state: FileState
    sha256: str
    jobs: Sequence[Mapping[str, Any]] = ()
    reason: str | None | Callable[[], str | None] = None
    source: str | None = None
    read_ns: int = field(default_factory=time.time_ns)
    row_files: Callable[[int], Iterable[tuple[str, int]]] | None = None


def _sha256_of(path: str, size: int) -> str | None:
    """The sha256 of a file's bytes as ``read_file`` hashes them (None: unreadable, or not
    ``size`` bytes long any more)."""
    import hashlib

    digest = hashlib.sha256()
    seen = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                seen += len(chunk)
                if seen > size:
                    return None
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest() if seen == size else None


def path_key(path: str) -> bytes:
    """A path as the ledger keys it: its bytes on disk."""
    return os.fsencode(path)


def shown(path: str) -> str:
    """A path fit to print and to store as text: undecodable bytes as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Ledger:
    def __init__(self, store: Database) -> None:
        self.store = store

    def seen(self, path: str) -> FileRecord | None:
        rows = self.store.read(
            "SELECT size, mtime_ns, ino, ctime_ns, sha256, outcome, reason, read_ns FROM files"
            " WHERE path_bytes = ?",
            (path_key(path),),
        )
        if not rows:
            return None
        r = rows[0]
        state = FileState(r["size"], r["mtime_ns"], r["ino"], r["ctime_ns"])
        return FileRecord(state, r["sha256"], r["outcome"], r["reason"], r["read_ns"])

    def unchanged(self, path: str, seen: FileRecord | None, state: FileState) -> bool:
        """True when the file is as it was read, so it is not read again, whatever the
        reader's options.

        A racily clean record (modified within ``RACY_NS`` of its read, so a later
        write in the same timestamp tick would not show in its stat) is settled by
        its bytes, as git does: the same sha256 means unchanged, and the row is
        marked read now, so the next check is a stat alone.  Without this, a file
        read right after it was written stayed racy for ever and was parsed again
        on every rescan and restart (under the options of that run).
        """
        if seen is None or seen.state != state:
            return False
        if seen.unchanged(state):
            return True
        checked_ns = time.time_ns()  # before the bytes: what they show is at least this new
        digest = _sha256_of(path, state.size)
        if digest is None or digest != seen.sha256:
            return False
        try:
            if FileState.of(os.stat(path)) != state:
                return False  # written while it was hashed: read it
        except OSError:
            return False
        with self.store.write() as conn:
            conn.execute(
                "UPDATE files SET read_ns = ? WHERE path_bytes = ? AND sha256 = ?",
                (checked_ns, path_key(path), digest),
            )
        return True

    def record(self, files: Sequence[FileRead]) -> list[tuple[int, int]]:
        """Record each file's jobs with its ledger row; ``(created, known)`` per file, in order.

        The batch is one transaction (one fsync, not one per file).  If it
        fails for a reason other than a busy or full disk, each file is tried
        on its own, and one that still fails is recorded as invalid with the
        reason: one bad member never fails its neighbours, nor fails again on
        every rescan.
        """
        if not files:
            return []
        try:
            return self._record(files)
        except (StoreBusy, StoreFull):
            raise
        except Exception:  # noqa: BLE001 - find the member at fault below
            if len(files) == 1 and files[0].row_files is not None:
                raise  # a streamed file cannot be replayed
        counts: list[tuple[int, int]] = []
        for f in files:
            try:
                counts += self._record([f])
            except (StoreBusy, StoreFull):
                raise
            except Exception as err:  # noqa: BLE001 - recorded as this file's reason
                failed = FileRead(f.path, f.state, f.sha256, reason=f"cannot record: {err}")
                counts += self._record([failed])
        return counts

    def _record(self, files: Sequence[FileRead]) -> list[tuple[int, int]]:

        stamp = now_iso()
        counts: list[tuple[int, int]] = []
        attached: list[str] = []
        try:
            with self.store.write() as conn:
                for f in files:
                    counts.append(self._one(conn, f, stamp, attached))
        finally:
            for alias in attached:
                try:
                    self.store.conn.execute(f"DETACH DATABASE {alias}")
                except sqlite3.Error:
                    pass
        return counts

    @staticmethod
    def _one(
        conn: sqlite3.Connection, f: FileRead, stamp: str, attached: list[str]
    ) -> tuple[int, int]:
        source = f.source or shown(f.path)
        if f.row_files is not None:
            chunks = f.row_files(MAX_ROW_FILES)
            try:
                seen, created = copy_rows_files(conn, chunks, attached)
            finally:  # a generator's clean-up (import's workers) runs now, not at exit
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        else:
            rows = [job_row(j, stamp, source) for j in f.jobs]
            # rowcount counts the inserts alone (total_changes would count the triggers' too)
            created = conn.executemany(INSERT, rows).rowcount
            seen = len(rows)
        reason = f.reason() if callable(f.reason) else f.reason
        s = f.state
        conn.execute(
            "INSERT INTO files (path, path_bytes, size, mtime_ns, ino, ctime_ns, sha256, outcome,"
            " reason, recorded, known, seen_at, read_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(path_bytes) DO UPDATE SET path = excluded.path, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, ino = excluded.ino, ctime_ns = excluded.ctime_ns,"
            " sha256 = excluded.sha256, outcome = excluded.outcome, reason = excluded.reason,"
            " recorded = excluded.recorded, known = excluded.known, seen_at = excluded.seen_at,"
            " read_ns = excluded.read_ns",
            (
                shown(f.path), path_key(f.path), s.size, s.mtime_ns, s.ino, s.ctime_ns, f.sha256,
                "invalid" if reason else "recorded", reason, created, seen - created, stamp,
                f.read_ns,
            ),
        )  # fmt: skip
        return created, seen - created

    def counts(self) -> dict[str, int]:
        rows = self.store.read("SELECT outcome, count(*) AS n FROM files GROUP BY outcome")
        return {r["outcome"]: r["n"] for r in rows}

    def invalid_count(self) -> int:
        return int(self.store.scalar("SELECT count(*) FROM files WHERE outcome = 'invalid'"))

    def forget_missing(self, roots: Sequence[str]) -> int:
        """Drop the invalid files under ``roots`` that are gone: they no longer need the user."""
        prefixes = tuple(os.fsencode(os.path.join(r, "")) for r in roots)
        gone = [
            bytes(r["path_bytes"])
            for r in self.store.read("SELECT path_bytes FROM files WHERE outcome = 'invalid'")
            if bytes(r["path_bytes"]).startswith(prefixes)
            and not os.path.lexists(bytes(r["path_bytes"]))
        ]
        if gone:
            with self.store.write() as conn:
                conn.executemany("DELETE FROM files WHERE path_bytes = ?", [(p,) for p in gone])
        return len(gone)

    def invalid(self, limit: int = 100) -> list[tuple[str, str]]:
        """``(path, reason)`` of invalid files, newest first (for ``doctor`` and ``status``)."""
        rows = self.store.read(
            "SELECT path, reason FROM files WHERE outcome = 'invalid' ORDER BY seen_at DESC"
            " LIMIT ?",
            (limit,),
        )
        return [(r["path"], r["reason"] or "") for r in rows]
