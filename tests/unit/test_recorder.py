"""The watcher's reader (``watch.watcher.Recorder``) with a real file and store, no observer.

The settle wait runs on a clock the test moves; a writer that rewrites the file
while it is being read is played by wrapping ``read_file``: the file is torn
(half of its new content) when it is read, and complete right after.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import logbook.watch.watcher as watcher_module
from logbook.store import Store
from logbook.watch.settle import Settler
from logbook.watch.watcher import Recorder, WatchOptions

SETTLE = 0.25
HOUR_NS = 3600 * 10**9


def line(name: str) -> str:
    return json.dumps({"experiment_id": "exp-rw", "name": name, "results": '{"0": 1}'}) + "\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "logbook.db")
    yield s
    s.close()


def write(path: Path, text: str, mtime_ns: int) -> None:
    with path.open("w") as f:
        f.write(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_rewritten_while_it_is_read_is_read_again_once_settled(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    # Settled by our own observations only: the wall clock never makes an mtime look old.
    settler = Settler(SETTLE, 1.0, clock=clock, wall=lambda: 0.0)

    def touch(path: str) -> None:
        st = os.stat(path)
        settler.touch(path, (st.st_size, st.st_mtime_ns))

    recorder = Recorder(settler, WatchOptions(dirs=[str(tmp_path)]), threading.Event(), str, touch)
    recorder.store = store
    path = tmp_path / "results.jsonl"
    t0 = time.time_ns()
    write(path, line("first"), t0 - 3 * HOUR_NS)
    new = line("second") + line("third")
    torn = line("second")
    assert len(torn) != len(line("first"))
    real_read = watcher_module.read_file
    reads: list[list[str]] = []

    def read_while_rewritten(p: str, **kw: Any) -> Any:
        if not reads:  # the writer rewrites the file just as it is read
            write(path, torn, t0 - 2 * HOUR_NS)
        res = real_read(p, **kw)
        if not reads:
            write(path, new, t0 - HOUR_NS)
        reads.append([j["name"] for j in res.jobs])
        return res

    monkeypatch.setattr(watcher_module, "read_file", read_while_rewritten)
    touch(str(path))
    for _ in range(10):  # settle, read; settle again, read again
        clock.now += SETTLE
        recorder.check_due()
        if not len(settler):
            break
    assert reads == [["second"], ["second", "third"]]  # the torn read was not kept
    assert sorted(e.name or "" for e in store.entries()) == ["second", "third"]
    seen = store.ledger.seen(str(path))
    st = os.stat(path)
    assert seen is not None and seen.outcome == "recorded"
    assert (seen.state.size, seen.state.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert recorder.stats.files == 1 and recorder.stats.invalid == 0
