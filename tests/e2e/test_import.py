"""``logbook import``: a big JSON Lines file is parsed by forked workers while it is stored.

Whatever the path, ``import`` must record exactly what the serial reader
reads, report bad lines by their real line numbers, and keep the file atomic.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from support import Run, assert_no_traceback

from logbook import ingest

RunCli = Callable[..., Run]

N_LINES = ingest.PARALLEL_MIN_LINES + 5_000
SURROGATE_LINE = '{"experiment_id": "e", "name": "job \\ud800"}'  # a lone surrogate, escaped
BAD_LINES = {
    3: "garbage",
    12_345: '{"experiment_id": "e", "status": "Nope"}',
    20_000: SURROGATE_LINE,
    N_LINES: "{",
}


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
    assert serial.chunks is None and parallel.chunks is not None  # really the parallel path
    jobs = [job for chunk in parallel.chunks.chunks() for job in chunk]
    parallel.finish()
    assert jobs == serial.jobs
    assert parallel.errors == serial.errors
    assert [e.split(":")[0] for e in serial.errors] == [
        "line 3",
        "line 12345",
        "line 20000",
        f"line {N_LINES}",
    ]
    assert parallel.sha256 == serial.sha256 and parallel.size == serial.size


def test_import_of_big_file(tmp_path: Path, run_cli: RunCli) -> None:
    src = tmp_path / "big.jsonl"
    _write(src)
    r = run_cli("import", str(src), "--json")
    assert r.code == 1, r.err
    report = r.json()
    expected = N_LINES - len(BAD_LINES) - 1  # one line repeats another job
    assert report["recorded"] == expected
    assert report["known"] == 1
    assert report["invalid"] == 1
    reason = report["invalid_files"][0]["reason"]
    assert "line 3:" in reason and "line 12345: status" in reason and f"line {N_LINES}:" in reason
    assert "line 20000: name: not valid Unicode text" in reason
    assert_no_traceback(r.out, r.err)

    again = run_cli("import", str(src), "--json").json()
    assert (again["recorded"], again["known"]) == (0, expected + 1)

    status = run_cli("status", "--json").json()
    assert status["counts"]["pending"] == expected
    assert status["invalid_files"] == 1
    db = sqlite3.connect(status["db"])
    try:
        names = {n for (n,) in db.execute("SELECT name FROM entries")}
    finally:
        db.close()
    assert len(names) == expected and "job 12345" not in names and "job 12346" in names


def test_one_poisoned_member_never_stops_the_files_after_it(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """A directory: the big file with a surrogate line, a name that is not UTF-8, files after."""
    src = tmp_path / "results"
    src.mkdir()
    _write(src / "a-big.jsonl")
    (src / "b-poison.json").write_text(SURROGATE_LINE)
    named = os.fsencode(src) + b"/c-bad\xff.json"
    with open(named, "w") as fh:
        fh.write(json.dumps({"experiment_id": "e", "name": "under a bad name"}))
    (src / "d-after.json").write_text(json.dumps({"experiment_id": "e", "name": "after"}))
    r = run_cli("import", str(src), "--json")
    assert r.code == 1, r.err  # invalid files were reported
    assert_no_traceback(r.out, r.err)
    report = r.json()
    expected = N_LINES - len(BAD_LINES) - 1 + 2
    assert report["recorded"] == expected
    assert report["invalid"] == 2
    reasons = {f["path"]: f["reason"] for f in report["invalid_files"]}
    assert "surrogate" in reasons[str(src / "b-poison.json")]
    names = {e["name"] for e in run_cli("list", "--limit", "0", "--json").json()}
    assert {"under a bad name", "after", "job 19999", "job 20001"} <= names


def test_jsonl_lines_with_crlf_and_spaces(tmp_path: Path, run_cli: RunCli) -> None:
    src = tmp_path / "win.jsonl"
    src.write_bytes(
        b'{"experiment_id": "e", "name": "a"}\r\n'
        b'   {"experiment_id": "e", "name": "b"}   \n'
        b'{"experiment_id": "e", "name": "c"} trailing\n'
    )
    res = ingest.read_file(src)
    assert [j["name"] for j in res.jobs] == ["a", "b"]
    assert res.errors == ["line 3: not JSON: Extra data at column 37"]
    r = run_cli("import", src, "--json")
    assert r.code == 1, r.err
    report = r.json()
    assert (report["recorded"], report["invalid"]) == (2, 1)
    assert report["invalid_files"][0]["reason"] == "line 3: not JSON: Extra data at column 37"
    assert sorted(e["name"] for e in run_cli("list", "--json").json()) == ["a", "b"]
