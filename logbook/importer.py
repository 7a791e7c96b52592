"""``logbook import``: the watcher's reader, run once over files and directories.

Each file's jobs and its ledger row commit together, so an interrupted
import records every file it finished and nothing of the one in hand.  One
bad file never stops the others: whatever goes wrong with a file becomes its
reason, and the import goes on.  Only a store that cannot be written (busy,
full disk) stops the run.

A big JSON Lines file is parsed by forked workers (``ingest.parallel``) that
write the store's rows to scratch SQLite files in a private temporary
directory.  The directory is removed on every way out, and one left by a
killed import (its name carries the pid) is swept at the next start.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput, StoreError
from .ingest import DEFAULT_PATTERNS, iter_result_files, read_file
from .store import Store, now_iso, schema
from .store.bulk import write_rows_file
from .store.ledger import FileRead, FileState, shown

SCRATCH_PREFIX = "logbook-import-"
_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-")

#: ``progress(files_done, files_total, entries_recorded)``.
Progress = Callable[[int, int, int], None]


@dataclass
class ImportReport:
    files: int = 0
    recorded: int = 0
    known: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "recorded": self.recorded,
            "known": self.known,
            "invalid": len(self.invalid),
            "invalid_files": [{"path": p, "reason": r} for p, r in self.invalid],
        }


def store_files(db: str) -> tuple[str, ...]:
    """The store's own files, never read as results (a store inside a watched directory)."""
    return tuple(os.path.abspath(db + suffix) for suffix in ("", "-wal", "-shm", "-journal"))


def sweep_scratch(tmp: str | None = None) -> int:
    """Remove scratch directories that imports killed with ``kill -9`` left behind."""
    tmp = tmp or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(tmp)
    except OSError:
        return 0
    for name in names:
        m = _SCRATCH.match(name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its import is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        removed += 1
    return removed


def ingest_file(
    store: Store, path: str, *, experiment_id: str | None, max_bytes: int, workers: int = 1
) -> tuple[int, int, str | None]:
    """Read one result file and record its jobs with its ledger row, atomically.

    Returns ``(created, known, reason)``; ``reason`` is None for a valid file.
    ``workers`` > 1 parses a big JSON Lines file in that many processes while
    its jobs are stored (only for single-threaded callers: it forks).
    """
    abspath = os.path.abspath(path)
    # The ledger's key as the watcher makes it (its directories' real paths), so a file
    # imported through a symlinked directory is not read again by a watcher of it.
    abspath = os.path.join(os.path.realpath(os.path.dirname(abspath)), os.path.basename(abspath))
    stamp = now_iso()
    source = shown(abspath)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:

        def to_rows_file(jobs: list[dict[str, Any]], index: int) -> tuple[str, int]:
            # Runs in a worker: the store's rows, in a scratch file the store copies in.
            rows = [schema.row(j, stamp, source) for j in jobs]
            return write_rows_file(os.path.join(scratch, f"chunk-{index}.db"), rows)

        res = read_file(
            path, experiment_id=experiment_id, max_bytes=max_bytes, workers=workers,
            transform=to_rows_file,
        )  # fmt: skip

        def reason() -> str | None:
            res.finish()
            return "; ".join(res.errors) if res.errors else None

        # The store asks for the chunks with its own limit (one attached scratch file each).
        row_files = res.chunks.chunks if res.chunks is not None else None
        state = FileState(res.size, res.mtime_ns, res.ino, res.ctime_ns)
        item = FileRead(
            abspath, state, res.sha256, jobs=res.jobs, reason=reason, source=source,
            read_ns=res.read_ns, row_files=row_files,
        )  # fmt: skip
        [(created, known)] = store.ledger.record([item])
    return created, known, reason()


def check_paths(paths: Iterable[str]) -> None:
    """``BadInput`` for a path that does not exist, before anything is opened or recorded."""
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise BadInput(f"no such file or directory: {shown(missing[0])}")


def import_paths(
    store: Store,
    paths: Iterable[str],
    *,
    experiment_id: str | None,
    max_bytes: int,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Record every result file under ``paths``; big JSON Lines files use ``workers`` processes.

    Raises ``BadInput`` before recording anything when a path does not exist.
    """
    paths = list(paths)
    check_paths(paths)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    sweep_scratch()
    files = list(iter_result_files(paths, DEFAULT_PATTERNS, exclude=store_files(store.path)))
    report = ImportReport()
    for i, path in enumerate(files):
        report.files += 1
        try:
            created, known, reason = ingest_file(
                store, str(path), experiment_id=experiment_id, max_bytes=max_bytes,
                workers=workers,
            )  # fmt: skip
        except StoreError:
            raise  # the store itself cannot take more: stop, what is done is kept
        except Exception as err:  # noqa: BLE001 - one file never stops the others
            created, known, reason = 0, 0, f"cannot record: {type(err).__name__}: {err}"
        report.recorded += created
        report.known += known
        if reason:
            report.invalid.append((shown(str(path)), reason))
        if progress is not None:
            progress(i + 1, len(files), report.recorded)
    return report
