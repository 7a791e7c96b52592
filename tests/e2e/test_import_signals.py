"""A large ``logbook import`` stopped by SIGKILL or SIGTERM leaves no worker and no scratch files.

Its parse workers are forked processes: they must die with their parent
(``PR_SET_PDEATHSIG``), and the scratch directory they write must be removed
on every way out, or swept at the next start.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import psutil
import pytest
from support import cli, spawn, states, wait_until

LINES = 60_000


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with path.open("w") as f:
        for i in range(LINES):
            doc = {"experiment_id": "big", "name": f"job {i}", "results": json.dumps({"00": i}),
                   "shots": "[1]", "metrics": {"i": i}}  # fmt: skip
            f.write(json.dumps(doc) + "\n")
    return path


def _scratch(tmp: Path) -> list[str]:
    return [n for n in os.listdir(tmp) if n.startswith("logbook-import-")]


def _workers(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_a_stopped_import_leaves_no_orphans(
    big_jsonl: Path, logbook_home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    proc = spawn(logbook_home, "import", big_jsonl, env=env)
    workers: list[psutil.Process] = []
    try:
        workers = wait_until(lambda: _workers(proc.pid), 60, "the parse workers to start")
        wait_until(lambda: _scratch(tmp), 60, "the scratch directory")
        os.kill(proc.pid, sig)
        code = proc.wait(60)
        if sig == signal.SIGTERM:
            assert code == 143, proc.stderr.read() if proc.stderr else ""
            assert _scratch(tmp) == []  # removed on the way out
        wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                                   for w in workers), 30, "the workers to die")  # fmt: skip
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # Nothing half-recorded: the file is all in or all out.
    counts = states(logbook_home / "logbook.db") if (logbook_home / "logbook.db").exists() else {}
    assert sum(counts.values()) in (0, LINES)
    # The next import sweeps what a SIGKILL left, and records the file once.
    run = cli(logbook_home, "import", big_jsonl, env=env, timeout=180)
    assert run.code == 0, run.err
    assert _scratch(tmp) == []
    assert states(logbook_home / "logbook.db")["pending"] == LINES


def test_sweep_leaves_a_running_imports_scratch(tmp_path: Path) -> None:
    from logbook.importer import SCRATCH_PREFIX, sweep_scratch

    mine = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-abc"
    gone = tmp_path / f"{SCRATCH_PREFIX}999999999-def"
    mine.mkdir()
    gone.mkdir()
    assert sweep_scratch(str(tmp_path)) == 1
    assert mine.exists() and not gone.exists()
    assert tempfile.gettempdir()  # the default place is the system's
