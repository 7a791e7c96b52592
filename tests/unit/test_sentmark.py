"""The sent mark beside a store: an older copy of the store is told, and nothing hostile put
beside it (a FIFO, a symlink, a huge or damaged file) hangs, misleads or is written through."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import prepared_job as job

from logbook.store import Store
from logbook.store.leases import new_owner
from logbook.store.sentmark import check_restored, mark_path, read_mark


def _flags(store: Store) -> list[int]:
    return [r["maybe_sent"] for r in store.read("SELECT maybe_sent FROM entries ORDER BY id")]


def _claim(store: Store, n: int = 1) -> None:
    assert len(store.leases.claim(new_owner(), n, lease_seconds=60).entries) == n


def test_a_copy_taken_before_a_claim_is_told_as_older_and_once(tmp_path: Path) -> None:
    path, backup = tmp_path / "logbook.db", tmp_path / "backup.db"
    with Store(path) as store:
        for i in range(4):
            store.record(job(i))
        _claim(store)  # entry 1 sent: generation 1
    shutil.copyfile(path, backup)  # the backup (a closed store: no -wal)
    with Store(path) as store:
        _claim(store)  # entry 2 claimed (and posted) after the backup: generation 2
        assert check_restored(store) == 0  # the store itself is not behind
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, path)  # restored: generation 1 behind the mark's 2
    with Store(path) as store:
        with store.write() as conn:  # one of the backup's entries had been rejected
            conn.execute("UPDATE entries SET state = 'rejected' WHERE id = 4")
        assert check_restored(store) == 3  # entries 2 and 3 pending, 4 rejected: all may be sent
        assert _flags(store) == [0, 1, 1, 1]
        assert check_restored(store) == 0  # told once
        _claim(store)
    assert read_mark(str(path)) == (Store(path, readonly=True).get_meta("store_id"), 3)


def test_every_path_to_one_store_shares_its_mark(tmp_path: Path) -> None:
    real = tmp_path / "data" / "logbook.db"
    real.parent.mkdir()
    link = tmp_path / "logbook.db"
    link.symlink_to(real)
    assert mark_path(str(link)) == mark_path(str(real)) == real.parent / "logbook.db.sent"


@pytest.mark.parametrize("kind", ["fifo", "symlink", "huge", "damaged", "negative", "other"])
def test_a_hostile_mark_is_no_evidence_and_never_hangs(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "logbook.db"
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    with Store(path) as store:
        store.record(job(1))
        store.record(job(2))
        mark = mark_path(str(path))
        if kind == "fifo":
            os.mkfifo(mark)
        elif kind == "symlink":
            mark.symlink_to(target)
        elif kind == "huge":
            mark.write_bytes(b" " * 10_000 + b'{"store_id": "x", "generation": 9}')
        elif kind == "damaged":
            mark.write_bytes(b'{"store_id": ')
        elif kind == "negative":
            mark.write_text(json.dumps({"store_id": store.get_meta("store_id"), "generation": -5}))
        else:  # another store's mark with a high generation
            mark.write_text(json.dumps({"store_id": "another", "generation": 10**9}))
        assert check_restored(store) == 0 and _flags(store) == [0, 0]
        if kind != "fifo":  # a FIFO there cannot be replaced by a rename; the claim goes on
            _claim(store)
            assert read_mark(str(path)) is not None  # replaced by a good mark
    assert target.read_text() == "keep me"  # never written through a link


def test_the_temporary_file_is_never_written_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / "logbook.db"
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    tmp = tmp_path / f".logbook.db.sent.{os.getpid()}.tmp"
    tmp.symlink_to(target)
    with Store(path) as store:
        store.record(job(1))
        _claim(store)
    assert target.read_text() == "keep me" and read_mark(str(path)) is not None
    assert not tmp.exists()


def test_a_mark_that_cannot_be_written_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "logbook.db"
    with Store(path) as store:
        store.record(job(1))
        mark_path(str(path)).mkdir()  # a directory where the mark goes: the rename fails
        _claim(store)  # the claim stands all the same
        assert store.counts()["sending"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
