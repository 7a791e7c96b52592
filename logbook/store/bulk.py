"""Rows written by import's worker processes to scratch SQLite files, copied in with one statement.

A big JSON Lines file is parsed by forked workers (``ingest.parallel``); each
writes its chunk's rows to a scratch file with no journal and no fsync (the
file is thrown away), and the store copies it in with one ``INSERT ...
SELECT``, inside the transaction that records the file, so the file stays
atomic and no Python code runs per row in the parent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from .schema import INSERT_COLUMNS

#: SQLite attaches at most 10 databases to a connection; a file is copied in this many
#: chunks at most.
MAX_ROW_FILES = 8
_COLUMNS = ", ".join(INSERT_COLUMNS)
_COPY = (
    f"INSERT INTO main.entries ({_COLUMNS}) SELECT {_COLUMNS} FROM {{alias}}.rows"
    " ORDER BY seq ON CONFLICT(experiment_id, hash) DO NOTHING"
)


def write_rows_file(path: str, rows: Sequence[tuple[Any, ...]]) -> tuple[str, int]:
    """Write ``schema.row`` rows to a new scratch SQLite file; returns ``(path, len(rows))``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"CREATE TABLE rows (seq INTEGER PRIMARY KEY, {_COLUMNS})")
        conn.execute("BEGIN")
        marks = ",".join("?" * len(INSERT_COLUMNS))
        conn.executemany(f"INSERT INTO rows ({_COLUMNS}) VALUES ({marks})", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path, len(rows)


def copy_rows_files(
    conn: sqlite3.Connection, row_files: Iterable[tuple[str, int]], attached: list[str]
) -> tuple[int, int]:
    """Copy each scratch file's rows into ``entries`` as it arrives; returns how many rows
    were seen and how many were new (the statement's own count: triggers' writes are not
    entries).

    Runs inside the caller's transaction.  A file read in a transaction can
    only be detached after it, so the aliases go into ``attached`` for the
    caller to detach.
    """
    seen = created = 0
    for chunk_path, n in row_files:
        if len(attached) >= MAX_ROW_FILES:
            raise ValueError(f"more than {MAX_ROW_FILES} row files for one file")
        alias = f"chunk{len(attached)}"
        conn.execute(f"ATTACH DATABASE ? AS {alias}", (chunk_path,))
        attached.append(alias)
        created += conn.execute(_COPY.format(alias=alias)).rowcount
        seen += n
    return seen, created
