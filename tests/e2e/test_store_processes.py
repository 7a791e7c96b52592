"""The store shared by real processes, and what a fresh interpreter loads.

Every child is a real Python process started here, synchronised through its
stdin/stdout (never a fixed sleep) and killed by its PID on the way out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from support import base_env, make_jobs, prepared_job

from logbook.store import Store
from logbook.store.leases import end_owner, new_owner

TIMEOUT = 120.0


@contextmanager
def children(
    home: Path, scripts: Sequence[tuple[str, Sequence[str]]]
) -> Iterator[list[subprocess.Popen[str]]]:
    """Python processes running ``scripts`` (code, argv); killed by PID if still running."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for code, args in scripts:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, *args],
                    env=base_env(home),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child says it (or dies: "")
    if line.strip() != expected:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"child said {line!r}, not {expected!r}: {err}")


def release(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


# --- many processes open a new store at once -------------------------------------------

_WRITER = r"""
import sys
from logbook.jobs import prepare
from logbook.store import Store
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # start together
s = Store(path)
for i in range(n):
    s.record(prepare({"experiment_id": "conc", "hash": f"{tag}-{i}", "name": tag}))
    if i % 50 == 0:
        s.counts()
s.close()
print("ok")
"""

_READER = r"""
import sys, time
from logbook.store import Store
path, total = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
s = Store(path)
deadline = time.monotonic() + 200  # only if the writers never finish (the test waits longer)
reads = 0
while time.monotonic() < deadline:
    list(s.entries(limit=20)); st = s.status(); reads += 1
    if st.counts["pending"] >= total:
        break
print("reads", reads, st.counts["pending"])
"""


def test_many_processes_open_a_new_store_and_record_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "store.db"  # neither the file nor its directory exist
    # 600 durable commits (an fsync each): on a shared machine whose disk is busy (a pip
    # install beside it) an fsync can take a tenth of a second.
    writers, per = 6, 100
    scripts = [(_WRITER, (str(path), f"w{k}", str(per))) for k in range(writers)]
    scripts.append((_READER, (str(path), str(writers * per))))
    with children(tmp_path / "home", scripts) as procs:
        for p in procs:  # every interpreter has started: release them together
            wait_for_line(p, "ready")
        release(procs)
        outs = [p.communicate(timeout=240) for p in procs]  # the reader gives up after 200 s
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
            assert "locked" not in err and "Traceback" not in err, err
    assert all(out.strip() == "ok" for out, _ in outs[:-1])
    assert outs[-1][0].startswith("reads")
    with Store(path) as s:
        assert s.counts()["pending"] == writers * per
        assert len({e.hash for e in s.entries()}) == writers * per
        assert s.integrity() == "ok"
        assert s.journal_mode() == "wal"


# --- a run in another process -----------------------------------------------------------

_HOLDER = r"""
import sys
from logbook.store import Store
from logbook.store.leases import new_owner
path = sys.argv[1]
owner = new_owner()
with Store(path) as s:
    claim = s.leases.claim(owner, 10, lease_seconds=0.001)  # the lease runs out at once
print("claimed", len(claim.entries), flush=True)
sys.stdin.readline()  # paused, like a run stopped with SIGSTOP: it may still post them
"""


def test_a_live_run_in_another_process_keeps_its_entries_until_it_is_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.record_many(make_jobs(3, "held"))
    owner = new_owner()
    try:
        with children(tmp_path / "home", [(_HOLDER, (str(path),))]) as [holder]:
            wait_for_line(holder, "claimed 3")
            with Store(path) as s:
                assert s.counts()["sending"] == 3
                # its lease ran out, but the run is alive: nothing is taken
                assert s.leases.claim(owner, 10, lease_seconds=60).entries == []
                assert s.leases.count_held(owner) == 3 and s.leases.count_left() == 0
                holder.kill()
                holder.wait(timeout=TIMEOUT)
                # gone: its entries are taken, flagged to be looked up before posting
                got = s.leases.claim(owner, 10, lease_seconds=60)
                assert len(got.entries) == 3 and all(e.maybe_sent for e in got.entries)
    finally:
        end_owner(owner)


# --- what a fresh interpreter loads --------------------------------------------------------

_NO_NETWORK = r"""
import sys, json
import logbook
entry = logbook.log({"00": 5}, experiment_id="offline")
mods = sys.modules
print(json.dumps({"id": entry.id, "loaded": sorted(
    m for m in ("httpx", "httpx2", "aiohttp", "logbook.engine", "logbook.client") if m in mods)}))
"""


def test_log_never_loads_the_http_client(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with children(home, [(_NO_NETWORK, ())]) as [proc]:
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"id": 1, "loaded": []}
    assert (home / "logbook.db").exists()


_NO_QISKIT = r"""
import sys, json
import logbook.ingest, logbook.ingest.qiskit, logbook.jobs, logbook.store, logbook.api
print(json.dumps(sorted(m for m in sys.modules if m == "qiskit" or m.startswith("qiskit."))))
"""


def test_modules_do_not_import_qiskit(tmp_path: Path) -> None:
    with children(tmp_path / "home", [(_NO_QISKIT, ())]) as [proc]:
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert json.loads(out) == []


def test_opening_the_store_again_keeps_the_locks_other_processes_rely_on(tmp_path: Path) -> None:
    """Nothing outside SQLite opens the store file: closing any descriptor on it drops the
    POSIX locks of every connection of the process (sqlite.org/howtocorrupt.html 2.2).
    Another process closing the store then took itself for the last, checkpointed and
    deleted the write-ahead log under this one: a relay (which opens its store again from
    several threads) failed with "disk I/O error" on its next write."""
    db = tmp_path / "logbook.db"
    first = Store(db)
    first.record(prepared_job(1))
    Store(db).close()  # this process opens it again (a relay's worker thread does)
    Store(db, readonly=True).close()
    other = "import sys; from logbook.store import Store; Store(sys.argv[1]).close()"
    subprocess.run([sys.executable, "-c", other, str(db)], check=True, timeout=60,
                   env=base_env(tmp_path))  # fmt: skip
    assert Path(f"{db}-wal").exists()  # the other process knew this one was still there
    first.record(prepared_job(2))
    assert first.counts()["pending"] == 2
    first.close()
