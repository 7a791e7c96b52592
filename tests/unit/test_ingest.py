"""The result file reader and the directory walker, with real files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logbook.errors import InvalidFile
from logbook.ingest import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PATTERNS,
    MAX_LINE_ERRORS,
    ReadResult,
    is_ignored,
    iter_result_files,
    matches,
    read_file,
    walk,
)
from logbook.ingest.qiskit import MAX_MEMORY_SLOTS, counts_from_result_dict, sdk_hash
from logbook.jobs import content_hash

SAMPLES = Path(__file__).resolve().parent.parent.parent / "samples"
#: How long a walk or a read may take before it counts as blocked (a generous deadline).
BLOCKED_AFTER_S = 30.0

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
STATUS_CHOICES = (
    "must be one of Submitted, Initializing, Queued, Validating, Running, Cancelled, Done, Error"
)


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


def finishes(fn: Callable[[], Any], fifos: tuple[Path, ...] = ()) -> Any:
    """``fn()`` run in a thread; fails (and unblocks it through ``fifos``) if it blocks."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(BLOCKED_AFTER_S)
    if t.is_alive():
        for fifo in fifos:  # a reader blocked in open() is released by a writer
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        t.join(BLOCKED_AFTER_S)
        raise AssertionError(f"blocked for {BLOCKED_AFTER_S} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A directory holding a good file and every kind of thing a walk must not open."""
    d = tmp_path / "specials"
    d.mkdir()
    made = {"good": write(d, "good.json", JOB)}
    made["fifo"] = d / "fifo.json"
    os.mkfifo(made["fifo"])
    made["socket"] = d / "sock.json"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    made["zero"] = d / "zero.json"
    made["zero"].symlink_to("/dev/zero")
    made["loop"] = d / "loop1.json"
    (d / "loop2.json").symlink_to(d / "loop1.json")
    made["loop"].symlink_to(d / "loop2.json")
    made["dangling"] = d / "dangling.json"
    made["dangling"].symlink_to(d / "missing.json")
    made["linked"] = d / "linked.json"
    made["linked"].symlink_to(made["good"])  # a symlink to a regular file is read
    try:
        yield made
    finally:
        sock.close()


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


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    write(tmp_path, "real/a.json", JOB)
    (tmp_path / "real" / "again").symlink_to(tmp_path / "real")  # a loop, if followed
    (tmp_path / "link").symlink_to(tmp_path / "real")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_result_files([tmp_path])]
    assert got == ["real/a.json"]


# --------------------------------------------------------------------------- walk


def test_walk_yields_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(str(tmp_path)), b"bad\xff.json")
    with open(raw, "wb") as f:
        f.write(json.dumps(JOB).encode())
    write(tmp_path, "good.json", JOB)
    got = {path: st for path, st in walk(str(tmp_path))}
    name = os.fsdecode(raw)
    assert sorted(got) == sorted([name, str(tmp_path / "good.json")])
    assert got[name].st_size == len(json.dumps(JOB))
    res = read_file(name)
    assert res.ok and res.path == name and res.jobs[0]["name"] == "bell"
    assert [os.fsencode(p) for p in iter_result_files([tmp_path])][0] == raw


def test_walk_skips_what_is_not_a_regular_file_without_blocking(
    specials: dict[str, Path],
) -> None:
    top = specials["good"].parent
    got = finishes(lambda: [p for p, _ in walk(str(top))], (specials["fifo"],))
    assert got == [str(specials["good"]), str(specials["linked"])]
    listed = finishes(lambda: list(iter_result_files([top])), (specials["fifo"],))
    assert [p.name for p in listed] == ["good.json"]  # the link is the same file: once


@pytest.mark.parametrize("kind", ["zero", "fifo", "socket", "loop", "dangling"])
def test_read_file_of_a_special_file_is_invalid_without_blocking(
    specials: dict[str, Path], kind: str
) -> None:
    res = finishes(lambda: read_file(specials[kind]), (specials["fifo"],))
    reason = only_error(res)
    if kind in ("zero", "fifo"):
        assert reason == "not a regular file (a FIFO, socket or device)"
    elif kind == "dangling":
        assert reason == "file not found"
    else:
        assert reason.startswith("cannot read")
    assert res.kind == "invalid" and res.sha256 == ""


def test_read_file_of_dev_zero_reads_at_most_max_bytes(tmp_path: Path) -> None:
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    res = finishes(lambda: read_file(link, max_bytes=1024))
    assert only_error(res) == "not a regular file (a FIFO, socket or device)"


def test_walk_exclude_skips_those_paths(tmp_path: Path) -> None:
    for name in ("a.json", "store.json", "sub/b.json", "sub/store.json"):
        write(tmp_path, name, JOB)
    exclude = {str(tmp_path / "store.json"), str(tmp_path / "sub" / "store.json")}
    got = [p for p, _ in walk(str(tmp_path), exclude=exclude)]
    assert got == [str(tmp_path / "a.json"), str(tmp_path / "sub" / "b.json")]
    listed = list(iter_result_files([tmp_path], exclude=exclude))
    assert listed == [tmp_path / "a.json", tmp_path / "sub" / "b.json"]
    everything = [p for p, _ in walk(str(tmp_path))]
    assert len(everything) == 4


def test_exclude_holds_whatever_the_spelling_of_the_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "res/a.json", JOB)
    write(tmp_path, "res/store.json", JOB)
    monkeypatch.chdir(tmp_path)
    exclude = {os.path.abspath("res/store.json")}
    assert [p.name for p in iter_result_files(["res"], exclude=exclude)] == ["a.json"]


def test_walk_skips_an_unreadable_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "a.json", JOB)
    write(tmp_path, "locked/b.json", JOB)
    real = os.scandir

    def scandir(path: Any) -> Any:
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [p for p, _ in walk(str(tmp_path))] == [str(tmp_path / "a.json")]


# --------------------------------------------------------------------------- kinds


def test_job_document(tmp_path: Path) -> None:
    path = write(tmp_path, "job.json", JOB)
    before = time.time_ns()
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
    st = os.stat(path)
    assert (res.mtime_ns, res.ino, res.ctime_ns) == (st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    assert before <= res.read_ns <= time.time_ns()  # stamped before the bytes were read
    assert res.path == str(path)
    assert res.chunks is None


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
    assert res.errors == [f"invalid job: status: {STATUS_CHOICES} (got 'Finished')"]
    res = read_file(write(tmp_path, "extra.json", {**JOB, "colour": "red"}))
    assert len(res.errors) == 1
    assert res.errors[0].startswith("invalid job: 'colour': unknown field (a job has ")


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
    assert job["name"] == "bell on basic_simulator"  # short, and a user can tell it apart


def test_qiskit_default_names_are_short_and_useful() -> None:
    from logbook.ingest.qiskit import short_name

    assert short_name(["bell"], "ibm_kyiv", "6a1f") == "bell on ibm_kyiv"
    assert short_name(["bell", "bell", "ghz"], "sim", "x") == "bell, ghz on sim"
    many = short_name([f"circuit-{i:03d}" for i in range(40)], "ibm_kyiv", "x")
    assert many == "circuit-000, circuit-001 +38 on ibm_kyiv" and len(many) <= 40
    assert short_name([None, ""], "sim", "6a1f3b9e-0000") == "job 6a1f3b9e on sim"
    assert short_name([], None, None) == "Qiskit result"
    assert len(short_name(["x" * 500], "d" * 500, "j")) == 200  # the API's limit


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


def test_a_tiny_qiskit_file_asking_for_huge_memory_slots_is_invalid(tmp_path: Path) -> None:
    # every counts key would be padded to 200 million bits: gigabytes from a few bytes
    doc = json.loads(json.dumps(QISKIT))
    doc["results"][0]["header"] = {"name": "x", "memory_slots": 200_000_000}
    path = write(tmp_path, "bomb.json", doc)
    assert path.stat().st_size < 400
    res = read_file(path, experiment_id="e")
    assert res.kind == "qiskit" and not res.ok and res.jobs == []
    [reason] = res.errors
    assert "memory_slots" in reason and "200000000" in reason
    assert reason.startswith("Qiskit result: experiment 0:")


def test_reading_a_small_file_takes_little_memory(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(QISKIT))
    doc["results"][0]["header"] = {"name": "x", "memory_slots": 200_000_000}
    path = write(tmp_path, "bomb.json", doc)
    read_file(path, experiment_id="e")  # warm up imports and caches
    tracemalloc.start()
    try:
        res = read_file(path, experiment_id="e")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not res.ok
    assert peak < 4 * 1024 * 1024, f"{peak} bytes to read {path.stat().st_size}"


def test_memory_slots_bound() -> None:
    def doc(slots: int) -> dict[str, Any]:
        return {
            "backend_name": "b", "job_id": "j",
            "results": [{"shots": 1, "data": {"counts": {"0x1": 1}},
                         "header": {"memory_slots": slots}}],
        }  # fmt: skip

    with pytest.raises(InvalidFile, match="memory_slots"):
        counts_from_result_dict(doc(MAX_MEMORY_SLOTS + 1))
    assert MAX_MEMORY_SLOTS == 65_536
    counts = counts_from_result_dict(doc(MAX_MEMORY_SLOTS))
    assert isinstance(counts, dict)
    [key] = counts
    assert len(key) == MAX_MEMORY_SLOTS and key.endswith("01")


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
    assert res.errors[1].startswith(f"line 3: status: {STATUS_CHOICES}")
    assert res.errors[2] == "line 4: a JSON array, not a JSON object"
    assert res.errors[3].startswith("line 5: status:")
    assert len(res.errors) == MAX_LINE_ERRORS + 1
    assert res.errors[-1] == "and 5 more invalid lines"


def test_jsonl_line_with_a_lone_surrogate(tmp_path: Path) -> None:
    lines = [json.dumps({**JOB, "name": f"n{i}"}) for i in range(1, 2001)]
    lines[999] = json.dumps({**JOB, "name": "\ud800"})  # written as the escape "\ud800"
    assert '"\\ud800"' in lines[999]
    res = read_file(write(tmp_path, "s.jsonl", "\n".join(lines) + "\n"))
    assert res.kind == "jsonl" and not res.ok
    assert len(res.jobs) == 1999
    assert "n1000" not in {j["name"] for j in res.jobs}
    assert {j["name"] for j in res.jobs} >= {"n999", "n1001", "n1", "n2000"}
    [reason] = res.errors
    assert reason.startswith("line 1000: name:") and "surrogate" in reason
    for job in res.jobs:
        json.dumps(job, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"experiment_id": "e", "status": ["Done"]}',
        '{"experiment_id": "e", "shots": ' + "1" * 5000 + "}",
    ],
    ids=["unhashable-status", "huge-int"],
)
def test_jsonl_one_odd_line_keeps_the_others(tmp_path: Path, bad_line: str) -> None:
    text = json.dumps(JOB) + "\n" + bad_line + "\n" + json.dumps({**JOB, "name": "b2"}) + "\n"
    res = read_file(write(tmp_path, "odd.jsonl", text))
    assert res.kind == "jsonl" and len(res.jobs) == 2
    assert len(res.errors) == 1 and res.errors[0].startswith("line 2:")


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


def test_jsonl_of_blank_lines_only(tmp_path: Path) -> None:
    res = read_file(write(tmp_path, "blank.jsonl", "\n  \n\n"))
    assert only_error(res) == "empty file"
    res = read_file(write(tmp_path, "blank2.jsonl", "\n \x0c\n"))  # not "empty": a form feed
    assert not res.ok and res.jobs == []


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
    # Near the recursion limit the JSON parses but hashing or the checks may recurse too deep.
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
    res = finishes(lambda: read_file(fifo), (fifo,))
    assert only_error(res) == "not a regular file (a FIFO, socket or device)"


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
    real = os.open

    def refuse(target: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(target) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
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
