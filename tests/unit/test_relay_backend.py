"""The relay's store backend: concurrent POSTs share commits (group commit), answered after them."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from logbook.relay import ID_PREFIX, StoreBackend
from logbook.store.worker import StoreWorker


def test_concurrent_posts_share_commits_and_each_is_answered_once_stored(tmp_path: Path) -> None:
    db_path = tmp_path / "relay.db"
    n = 300

    async def main() -> tuple[list[dict[str, object]], int, int]:
        db = StoreWorker(str(db_path))
        commits: list[int] = []
        backend = StoreBackend(db, on_commit=lambda: commits.append(1))
        try:
            bodies = [{"experiment_id": "gc", "hash": f"h{i % (n - 20)}"} for i in range(n)]
            jobs = await asyncio.gather(*(backend.create(b, "lab-a") for b in bodies))
            await backend.drain()
        finally:
            db.close()
        return jobs, backend.commits, len(commits)

    jobs, commits, notified = asyncio.run(main())
    assert 1 <= commits < n // 10, commits  # many POSTs per transaction, not one each
    assert notified == commits
    # every answer names a stored job; a repeated (experiment, hash) gets the same one
    by_hash: dict[str, set[str]] = {}
    for job in jobs:
        by_hash.setdefault(str(job["hash"]), set()).add(str(job["id"]))
    assert all(len(ids) == 1 for ids in by_hash.values())
    conn = sqlite3.connect(db_path)
    try:
        stored = conn.execute("SELECT id, hash, source FROM entries").fetchall()
    finally:
        conn.close()
    assert len(stored) == n - 20
    assert {f"{ID_PREFIX}{i}" for i, _, _ in stored} == {next(iter(v)) for v in by_hash.values()}
    assert {s for _, _, s in stored} == {"relay:lab-a"}
