"""``logbook import``: the watcher's reader, run once over files and directories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .store import Store


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
    store: Store, path: str, *, experiment_id: str | None, max_bytes: int
) -> tuple[int, int, str | None]:
    """Read one result file and record its jobs with its ledger row, atomically.

    Returns ``(created, known, reason)``; ``reason`` is None for a valid file.
    Shared by ``import`` and ``watch`` so both treat a file the same way.
    """
    from .ingest import read_file

    result = read_file(path, experiment_id=experiment_id, max_bytes=max_bytes)
    reason = "; ".join(result.errors) if result.errors else None
    created, known = store.record_file(
        os.path.abspath(path),
        size=result.size,
        mtime_ns=result.mtime_ns,
        sha256=result.sha256,
        jobs=result.jobs,
        reason=reason,
    )
    return created, known, reason


def import_paths(
    store: Store, paths: Iterable[str], *, experiment_id: str | None, max_bytes: int
) -> ImportReport:
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
                store, str(path), experiment_id=experiment_id, max_bytes=max_bytes
            )
            report.recorded += created
            report.known += known
            if reason:
                report.invalid.append((str(path), reason))
    return report
