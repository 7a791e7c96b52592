"""The result file reader, with real files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from logbook.ingest import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PATTERNS,
    MAX_LINE_ERRORS,
    ReadResult,
    is_ignored,
    iter_result_files,
    matches,
    read_file,
)
from logbook.jobs import content_hash
from logbook.qiskit_compat import sdk_hash

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

JOB = {
    "experiment_id": "exp-1",
    "name": "bell",
    "device_id": "sim",
    "results": '{"00": 5, "11": 5}',
    "shots": "[10]",
    "status": "Done",
    "job_type": "User local job",
}

# A trimmed Result.to_dict() of BasicSimulator (the real one is in samples/).
QISKIT = {
    "backend_name": "basic_simulator",
    "backend_version": "0.1",
    "date": None,
    "header": None,
    "job_id": "6a1f3b9e-0000-4000-8000-000000000001",
    "status": "COMPLETED",
    "success": True,
    "results": [
        {
            "shots": 10,
            "success": True,
            "data": {"counts": {"0x3": 4, "0x0": 6}},
            "meas_level": 2,
            "header": {"name": "bell", "creg_sizes": [["c", 2]], "memory_slots": 2},
            "status": "DONE",
        }
    ],
}


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def only_error(res: ReadResult) -> str:
    assert not res.ok and not res.jobs, res
    assert len(res.errors) == 1, res.errors
    return res.errors[0]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", [".hidden.json", ".x.json.swp", "a.json.tmp", "a.json.part", "a.json~", "A.TMP"]
)
def test_ignored_names(name: str) -> None:
    assert is_ignored(name)
    assert is_ignored(f"/some/dir/{name}")


@pytest.mark.parametrize("name", ["a.json", "batch.jsonl", "tmp.json", "part1.json", "a~b.json"])
def test_not_ignored_names(name: str) -> None:
    assert not is_ignored(name)


def test_matches_uses_the_file_name() -> None:
    assert DEFAULT_PATTERNS == ("*.json", "*.jsonl")
    assert matches("/x/y/a.json") and matches("b.jsonl")
    assert not matches("a.txt") and not matches("/data.json/a.csv")
    assert matches("run_7.out", ["run_*.out"])
    assert not matches("run_7.out", ["*.json"])
    assert matches("anything", [])


def test_iter_result_files(tmp_path: Path) -> None:
    for name in [
        "b.json",
        "a.json",
        "c.jsonl",
        "notes.txt",
        ".hidden.json",
        "x.json.tmp",
        "sub/z.json",
        "sub/deeper/y.jsonl",
        ".git/config.json",
        "sub/w.json.part",
    ]:
        write(tmp_path, name, JOB)
    got = [p.relative_to(tmp_path).as_posix() for p in iter_result_files([tmp_path])]
    assert got == ["a.json", "b.json", "c.jsonl", "sub/z.json", "sub/deeper/y.jsonl"]

    only_json = [p.name for p in iter_result_files([tmp_path], patterns=["*.json"])]
    assert only_json == ["a.json", "b.json", "z.json"]

    # Explicit files: yielded whatever the pattern, but ignored names are still skipped;
    # each file once even when named twice or also found in a directory.
    explicit = [tmp_path / "notes.txt", tmp_path / "x.json.tmp", tmp_path / "a.json", tmp_path]
    got = [p.relative_to(tmp_path).as_posix() for p in iter_result_files(explicit)]
    assert got == ["notes.txt", "a.json", "b.json", "c.jsonl", "sub/z.json", "sub/deeper/y.jsonl"]


def test_iter_result_files_reports_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert list(iter_result_files([missing])) == [missing]
    assert only_error(read_file(missing)) == "file not found"


# --------------------------------------------------------------------------- kinds


def test_job_document(tmp_path: Path) -> None:
    path = write(tmp_path, "job.json", JOB)
    res = read_file(path)
    assert res.ok and res.kind == "job" and res.errors == []
    [job] = res.jobs
    assert job["experiment_id"] == "exp-1"
    assert job["results"] == JOB["results"] and job["shots"] == "[10]"
    assert job["hash"] == content_hash(job) and len(job["hash"]) == 64
    assert job["metrics"] == {}
    data = path.read_bytes()
    assert res.size == len(data)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.mtime_ns == os.stat(path).st_mtime_ns
    assert res.path == str(path)


def test_experiment_id_argument(tmp_path: Path) -> None:
    doc = {k: v for k, v in JOB.items() if k != "experiment_id"}
    path = write(tmp_path, "job.json", doc)
    err = only_error(read_file(path))
    assert err.startswith("invalid job: experiment_id") and "--experiment" in err
    assert read_file(path, experiment_id="given").jobs[0]["experiment_id"] == "given"
    # A document's own experiment_id wins over the argument (it only fills in).
    own = write(tmp_path, "own.json", JOB)
    assert read_file(own, experiment_id="given").jobs[0]["experiment_id"] == "exp-1"


def test_job_document_defaults_and_json_values(tmp_path: Path) -> None:
    path = write(tmp_path, "j.json", {"experiment_id": "e", "results": {"0": 1}, "shots": [1]})
    res = read_file(path)
    assert res.ok
    assert res.jobs[0]["results"] == '{"0":1}' and res.jobs[0]["shots"] == "[1]"
    assert res.jobs[0]["status"] == "Done" and res.jobs[0]["job_type"] == "User local job"


def test_job_document_with_bad_field(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, "bad.json", {**JOB, "status": "Finished"}))
    assert res.kind == "job" and not res.ok and res.jobs == []
    assert res.errors == [f"invalid job: status: {res.errors[0].split('status: ', 1)[1]}"]
    assert "Input should be 'Submitted'" in res.errors[0]
    res = read_file(write(tmp_path, "extra.json", {**JOB, "colour": "red"}))
    assert res.errors == ["invalid job: colour: Extra inputs are not permitted"]


def test_qiskit_result(tmp_path: Path) -> None:
    path = write(tmp_path, "r.json", QISKIT)
    res = read_file(path, experiment_id="exp-q")
    assert res.ok and res.kind == "qiskit"
    [job] = res.jobs
    assert job["experiment_id"] == "exp-q"
    assert job["hash"] == sdk_hash(QISKIT["job_id"])
    assert job["results"] == json.dumps({"11": 4, "00": 6})
    assert job["shots"] == "[10]"
    assert job["device_id"] == "basic_simulator"
    assert job["status"] == "Done" and job["job_type"] == "User local job"
    assert job["name"].startswith(f"Local job {QISKIT['job_id']}")


def test_qiskit_result_needs_experiment(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, "r.json", QISKIT))
    assert res.kind == "qiskit" and not res.ok and res.jobs == []
    assert res.errors == ["a Qiskit result has no experiment: give --experiment"]


def test_qiskit_result_without_counts(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(QISKIT))
    doc["results"][0]["data"] = {"statevector": [[1, 0], [0, 0]]}
    res = read_file(write(tmp_path, "sv.json", doc), experiment_id="e")
    assert res.kind == "qiskit" and not res.ok
    assert res.errors[0].startswith("Qiskit result: experiment 0 has a statevector")


def test_jsonl(tmp_path: Path) -> None:
    lines = [json.dumps({**JOB, "name": f"n{i}"}) for i in range(3)]
    path = write(tmp_path, "b.jsonl", "\n".join(lines[:2]) + "\n\n   \n" + lines[2] + "\n")
    res = read_file(path)
    assert res.ok and res.kind == "jsonl"
    assert [j["name"] for j in res.jobs] == ["n0", "n1", "n2"]


def test_jsonl_crlf_and_qiskit_line(tmp_path: Path) -> None:
    text = json.dumps(JOB) + "\r\n" + json.dumps(QISKIT) + "\r\n"
    res = read_file(write(tmp_path, "b.jsonl", text), experiment_id="e")
    assert res.ok and [j["device_id"] for j in res.jobs] == ["sim", "basic_simulator"]


def test_jsonl_partial_errors(tmp_path: Path) -> None:
    lines = []
    for i in range(1, 21):
        if i in (3, 5, 7, 9, 11, 13, 15, 17):
            lines.append(json.dumps({**JOB, "status": "Finished"}))
        else:
            lines.append(json.dumps({**JOB, "name": f"ok{i}"}))
    lines[1] = "{not json"
    lines[3] = "[1, 2]"
    res = read_file(write(tmp_path, "p.jsonl", "\n".join(lines)))
    assert res.kind == "jsonl" and not res.ok
    assert len(res.jobs) == 10  # 20 lines, 10 bad
    assert res.errors[0].startswith("line 2: not JSON: Expecting property name")
    assert res.errors[1].startswith("line 3: status: Input should be 'Submitted'")
    assert res.errors[2] == "line 4: a JSON array, not a JSON object"
    assert res.errors[3].startswith("line 5: status:")
    assert len(res.errors) == MAX_LINE_ERRORS + 1
    assert res.errors[-1] == "and 5 more invalid lines"


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    text = json.dumps(JOB) + "\n" + json.dumps({**JOB, "name": "second"}) + "\n"
    res = read_file(write(tmp_path, "lines.json", text))
    assert res.ok and res.kind == "jsonl" and len(res.jobs) == 2


def test_big_jsonl(tmp_path: Path) -> None:
    n = 10_000
    text = "".join(json.dumps({**JOB, "name": f"n{i}"}) + "\n" for i in range(n))
    res = read_file(write(tmp_path, "big.jsonl", text))
    assert res.ok and len(res.jobs) == n
    assert len({j["hash"] for j in res.jobs}) == n


# --------------------------------------------------------------------------- invalid files


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"  \n\t\n", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file (contains NUL bytes), not JSON text"),
        (b'{"name": "caf\xe9"}', "not UTF-8 text (bad byte at offset 13)"),
        (b'{"experiment_id": "e",\n  "status": }', "not JSON: Expecting value at line 2 column 13"),
        (b"[1, 2, 3]", "a JSON array, not a JSON object"),
        (b'"hello"', "a JSON string, not a JSON object"),
        (b"42", "a JSON number, not a JSON object"),
        (b"null", "JSON null, not a JSON object"),
    ],
)
def test_invalid_content(tmp_path: Path, content: bytes, reason: str) -> None:
    res = read_file(write(tmp_path, "f.json", content))
    assert only_error(res) == reason
    assert res.kind == "invalid"
    assert res.size == len(content)
    assert res.sha256 == hashlib.sha256(content).hexdigest()


def test_neither_job_nor_qiskit(tmp_path: Path) -> None:
    err = only_error(read_file(write(tmp_path, "c.json", {"00": 512, "11": 512})))
    assert err.startswith("a JSON object that is neither a job document nor a Qiskit result")
    assert "keys: 00, 11" in err


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, "bom.json", b"\xef\xbb\xbf" + json.dumps(JOB).encode()))
    assert res.ok
    res = read_file(write(tmp_path, "bad.json", b'\xef\xbb\xbf{"a\xff": 1}'))
    assert only_error(res) == "not UTF-8 text (bad byte at offset 6)"


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deep_nesting_does_not_crash(tmp_path: Path, depth: int) -> None:
    res = read_file(write(tmp_path, "deep.json", "[" * depth + "]" * depth))
    assert only_error(res) == "JSON nested too deeply"
    res = read_file(write(tmp_path, "deep.jsonl", json.dumps(JOB) + "\n" + "[" * depth + "\n"))
    assert res.errors == ["line 2: JSON nested too deeply"] and len(res.jobs) == 1


@pytest.mark.parametrize("depth", [50, sys.getrecursionlimit() - 20, 5_000])
def test_deep_metrics_do_not_crash(tmp_path: Path, depth: int) -> None:
    # Near the recursion limit the JSON parses but hashing or the model may recurse too deep.
    nested = '{"a":' * depth + "1" + "}" * depth
    text = '{"experiment_id": "e", "metrics": ' + nested + "}"
    res = read_file(write(tmp_path, "m.json", text))
    if depth == 50:
        assert res.ok and res.jobs[0]["metrics"]["a"]["a"]["a"] is not None
    else:
        assert res.errors == ["JSON nested too deeply"] or res.ok


def test_size_limit(tmp_path: Path) -> None:
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024
    path = write(tmp_path, "big.json", JOB)
    size = path.stat().st_size
    assert read_file(path, max_bytes=size).ok
    err = only_error(read_file(path, max_bytes=size - 1))
    assert err.startswith(f"file too large: {size} bytes, over the limit of {size - 1} bytes")
    assert "max_file_bytes" in err


def test_missing_directory_and_special_files(tmp_path: Path) -> None:
    assert only_error(read_file(tmp_path / "gone.json")) == "file not found"
    assert only_error(read_file(tmp_path)) == "is a directory, not a file"
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert only_error(read_file(fifo)) == "not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.json", JOB)
    path.chmod(0)
    try:
        assert only_error(read_file(path)) == "permission denied"
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "secret.json", JOB)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("builtins.open", refuse)
    assert only_error(read_file(path)) == "permission denied"


# --------------------------------------------------------------------------- samples


def test_samples() -> None:
    found = {p.relative_to(SAMPLES).as_posix(): p for p in iter_result_files([SAMPLES])}
    assert set(found) == {
        "bell_job.json",
        "qiskit_bell_result.json",
        "batch.jsonl",
        "invalid/not_a_job.json",
    }
    bell = read_file(found["bell_job.json"])
    assert bell.ok and bell.kind == "job" and bell.jobs[0]["experiment_id"] == "demo"
    assert not read_file(found["qiskit_bell_result.json"]).ok  # needs --experiment
    q = read_file(found["qiskit_bell_result.json"], experiment_id="demo")
    assert q.ok and q.kind == "qiskit"
    assert set(json.loads(q.jobs[0]["results"])) == {"00", "11"}
    batch = read_file(found["batch.jsonl"])
    assert batch.ok and batch.kind == "jsonl" and len(batch.jobs) >= 3
    bad = read_file(found["invalid/not_a_job.json"])
    assert not bad.ok and bad.errors
