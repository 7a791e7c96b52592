"""A big JSON Lines file is parsed by worker processes while it is stored.

Whatever the path, ``import`` must record exactly what the serial reader
reads, report bad lines by their real line numbers, and keep the file atomic.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from logbook import ingest

N_LINES = ingest.PARALLEL_MIN_LINES + 5_000
BAD_LINES = {3: "garbage", 12_345: '{"experiment_id": "e", "status": "Nope"}', N_LINES: "{"}


def _write(path: Path) -> None:
    with path.open("w") as fh:
        for i in range(1, N_LINES + 1):
            if i in BAD_LINES:
                fh.write(BAD_LINES[i] + "\n")
            elif i == 500:  # the same job as line 499: one entry
                fh.write(json.dumps({"experiment_id": "e", "name": "job 499"}) + "\n")
            else:
                fh.write(json.dumps({"experiment_id": "e", "name": f"job {i}"}) + "\n")


def test_parallel_read_matches_serial(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    _write(src)
    serial = ingest.read_file(src, workers=1)
    parallel = ingest.read_file(src, workers=2)
    assert not isinstance(parallel.jobs, list)  # really the parallel path
    assert list(parallel.jobs) == serial.jobs
    assert parallel.errors == serial.errors
    assert [e.split(":")[0] for e in serial.errors] == ["line 3", "line 12345", f"line {N_LINES}"]


def test_import_of_big_file(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "big.jsonl"
    _write(src)
    r = run_cli("import", str(src), "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    expected = N_LINES - len(BAD_LINES) - 1  # one line repeats another job
    assert report["recorded"] == expected
    assert report["known"] == 1
    assert report["invalid"] == 1
    reason = report["invalid_files"][0]["reason"]
    assert "line 3:" in reason and "line 12345: status" in reason and f"line {N_LINES}:" in reason
    assert "Traceback" not in r.stderr

    again = json.loads(run_cli("import", str(src), "--json").stdout)
    assert (again["recorded"], again["known"]) == (0, expected + 1)

    status = json.loads(run_cli("status", "--json").stdout)
    assert status["counts"]["pending"] == expected
    db = sqlite3.connect(status["db"])
    names = {n for (n,) in db.execute("SELECT name FROM entries")}
    db.close()
    assert len(names) == expected and "job 12345" not in names and "job 12346" in names
