"""``logbook import``: the watcher's reader, run once over files and directories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .store import Store, now_iso


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


def ingest_file(
    store: Store, path: str, *, experiment_id: str | None, max_bytes: int, workers: int = 1
) -> tuple[int, int, str | None]:
    """Read one result file and record its jobs with its ledger row, atomically.

    Returns ``(created, known, reason)``; ``reason`` is None for a valid file.
    ``workers`` > 1 parses a big JSON Lines file in that many processes while
    its jobs are stored (only for single-threaded callers: it forks).
    """
    import tempfile

    from .ingest import ParallelJobs, read_file
    from .store import MAX_ROW_FILES, write_rows_file

    abspath = os.path.abspath(path)
    stamp = now_iso()
    with tempfile.TemporaryDirectory(prefix="logbook-import-") as scratch:

        def to_rows_file(jobs: list[dict[str, Any]], index: int) -> tuple[str, int]:
            # Runs in a worker: the store's rows, in a scratch file the store copies in.
            rows = [Store.row(j, stamp, abspath) for j in jobs]
            return write_rows_file(os.path.join(scratch, f"chunk-{index}.db"), rows)

        result = read_file(
            path, experiment_id=experiment_id, max_bytes=max_bytes, workers=workers,
            transform=to_rows_file,
        )  # fmt: skip

        def reason() -> str | None:
            return "; ".join(result.errors) if result.errors else None

        parallel = isinstance(result.jobs, ParallelJobs)
        if isinstance(result.jobs, ParallelJobs):
            result.jobs.max_chunks = MAX_ROW_FILES  # one attached scratch file per chunk
        created, known = store.record_file(
            abspath,
            size=result.size,
            mtime_ns=result.mtime_ns,
            sha256=result.sha256,
            jobs=() if parallel else result.jobs,
            row_files=result.jobs.chunks() if isinstance(result.jobs, ParallelJobs) else None,
            reason=reason,
        )
    return created, known, reason()


def import_paths(
    store: Store,
    paths: Iterable[str],
    *,
    experiment_id: str | None,
    max_bytes: int,
    workers: int | None = None,
) -> ImportReport:
    """Record every result file under ``paths``; big JSON Lines files use ``workers`` processes."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    from .ingest import DEFAULT_PATTERNS, iter_result_files

    report = ImportReport()
    for top in paths:
        if not os.path.exists(top):
            report.files += 1
            report.invalid.append((top, "no such file or directory"))
            continue
        for path in iter_result_files([top], DEFAULT_PATTERNS):
            report.files += 1
            created, known, reason = ingest_file(
                store, str(path), experiment_id=experiment_id, max_bytes=max_bytes,
                workers=workers,
            )  # fmt: skip
            report.recorded += created
            report.known += known
            if reason:
                report.invalid.append((str(path), reason))
    return report
