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
from logbook.store.sentmark import begin_sending, mark_path, read_mark


def _pending_flags(store: Store) -> list[int]:
    return [r["maybe_sent"] for r in store.read("SELECT maybe_sent FROM entries ORDER BY id")]


def test_an_older_copy_of_the_store_flags_its_pending_entries_once(tmp_path: Path) -> None:
    path, backup = tmp_path / "logbook.db", tmp_path / "backup.db"
    with Store(path) as store:
        store.record(job(1))
        assert begin_sending(store) == 0  # generation 1, mark 1
    shutil.copyfile(path, backup)  # the backup (closed store: no -wal): generation 1
    with Store(path) as store:
        assert begin_sending(store) == 0  # generation 2, mark 2
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, path)  # restored: generation 1 behind mark 2
    with Store(path) as store:
        store.record(job(2))
        assert begin_sending(store) == 2 and _pending_flags(store) == [1, 1]
        assert begin_sending(store) == 0  # told once
    assert read_mark(str(path)) == (Store(path, readonly=True).get_meta("store_id"), 4)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "huge", "damaged", "negative", "other"])
def test_a_hostile_mark_is_no_evidence_and_never_hangs(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "logbook.db"
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    with Store(path) as store:
        store.record(job(1))
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
        assert begin_sending(store) == 0 and _pending_flags(store) == [0]
    assert target.read_text() == "keep me"  # never written through a link
    assert read_mark(str(path)) is not None  # replaced by a good mark


def test_the_temporary_file_is_never_written_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / "logbook.db"
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    tmp = tmp_path / f".logbook.db.sent.{os.getpid()}.tmp"
    tmp.symlink_to(target)
    with Store(path) as store:
        store.record(job(1))
        begin_sending(store)
    assert target.read_text() == "keep me" and read_mark(str(path)) is not None
