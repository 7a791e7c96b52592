"""The Qiskit mapping (logbook.ingest.qiskit) against REAL qiskit results and the SDK's rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from logbook.errors import InvalidFile
from logbook.ingest.qiskit import (
    counts_from_result_dict,
    is_result_dict,
    job_from_qiskit_job,
    job_from_result,
    job_from_result_dict,
    looks_like_qiskit_job,
    looks_like_qiskit_result,
    sdk_hash,
)

qiskit = pytest.importorskip("qiskit")
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister  # noqa: E402
from qiskit.providers.basic_provider import BasicSimulator  # noqa: E402
from qiskit.result import Counts  # noqa: E402


def sdk_get_job_hash(job_id: object) -> str:
    """haiqu-sdk 1.7.0, haiqu/sdk/utils.py ``get_job_hash`` for a Result, verbatim steps:

    hash_object = hashlib.sha256(b"")
    values = []
    if isinstance(job_data, Result):
        values.append(job_data.job_id)
    ...
    for value in values:
        encoded_value = repr(value).encode("utf-8")
        hash_object.update(encoded_value)
    hash_bytes = hash_object.digest()
    hash_value = int.from_bytes(hash_bytes, byteorder="little")
    return str(hash_value)
    """
    hash_object = hashlib.sha256(b"")
    for value in [job_id]:
        hash_object.update(repr(value).encode("utf-8"))
    return str(int.from_bytes(hash_object.digest(), byteorder="little"))


def roundtrip(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


@pytest.fixture(scope="module")
def sim() -> BasicSimulator:
    return BasicSimulator()


def bell(name: str = "bell") -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name=name)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def two_cregs() -> QuantumCircuit:
    qr = QuantumRegister(3, "q")
    a = ClassicalRegister(2, "a")
    c = ClassicalRegister(3, "c")
    qc = QuantumCircuit(qr, a, c, name="two_cregs")
    qc.x(0)
    qc.h(2)
    qc.measure(0, a[1])
    qc.measure(2, c[2])
    qc.measure(1, c[0])
    return qc


def unmeasured() -> QuantumCircuit:
    qc = QuantumCircuit(2, 5, name="unmeasured")  # clbits 1..4 never written
    qc.x(0)
    qc.measure(0, 0)
    return qc


# --------------------------------------------------------------------------- hash


def test_sdk_hash_matches_the_sdk_rule() -> None:
    for job_id in ["0fea4db3-b8e9-4566-818b-32655e578d90", "", None, 12, "a'b\"c", "é"]:
        assert sdk_hash(job_id) == sdk_get_job_hash(job_id)
    # Pinned: a string hashes with its quotes (repr), little-endian, decimal.
    digest = hashlib.sha256(b"'abc'").digest()
    assert sdk_hash("abc") == str(int.from_bytes(digest, "little"))
    assert sdk_hash("abc") != sdk_hash(repr("abc"))


def test_sdk_hash_equals_the_installed_sdk(sim: BasicSimulator) -> None:
    utils = pytest.importorskip("haiqu.sdk.utils")
    result = sim.run(bell(), shots=10, seed_simulator=1).result()
    assert sdk_hash(result.job_id) == utils.get_job_hash(result)
    assert job_from_result(result)["hash"] == utils.get_job_hash(result)


# --------------------------------------------------------------------------- counts


def test_counts_one_experiment(sim: BasicSimulator) -> None:
    result = sim.run(bell(), shots=200, seed_simulator=3).result()
    expected = result.get_counts()
    assert isinstance(expected, dict) and set(expected) <= {"00", "11"}
    assert counts_from_result_dict(result.to_dict()) == expected
    got = counts_from_result_dict(roundtrip(result.to_dict()))
    assert got == expected
    assert list(got) == list(expected)  # same key order, so the same JSON text


def test_counts_several_experiments_and_registers(sim: BasicSimulator) -> None:
    result = sim.run([bell(), two_cregs(), unmeasured()], shots=64, seed_simulator=5).result()
    expected = result.get_counts()
    assert isinstance(expected, list) and len(expected) == 3
    got = counts_from_result_dict(roundtrip(result.to_dict()))
    assert got == expected
    assert [list(c) for c in got] == [list(c) for c in expected]  # type: ignore[union-attr]
    # Real values: registers are split with spaces (c then a), unmeasured bits padded.
    assert set(expected[1]) <= {"000 10", "100 10", "001 10", "101 10"}
    assert expected[2] == {"00001": 64}
    assert got[2] == {"00001": 64}  # type: ignore[index]


def test_counts_without_creg_sizes_in_header(sim: BasicSimulator) -> None:
    d = roundtrip(sim.run(two_cregs(), shots=32, seed_simulator=1).result().to_dict())
    raw = d["results"][0]["data"]["counts"]
    cases = [
        None,
        {},
        {"memory_slots": 5},
        {"creg_sizes": [["a", 2], ["c", 3]]},
        {"creg_sizes": [["a", 2], ["c", 3]], "memory_slots": 5},
        {"creg_sizes": [["a", 2], ["c", 3]], "memory_slots": 7},
    ]
    for header in cases:
        d["results"][0]["header"] = header
        counts_header = {k: v for k, v in (header or {}).items()}
        assert counts_from_result_dict(d) == Counts(raw, **counts_header), header
    d["results"][0].pop("header")
    assert counts_from_result_dict(d) == Counts(raw)
    assert all(not k.startswith("0x") for k in counts_from_result_dict(d))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"0b101": 3, "0b1": 2},
        {"101": 1, "001": 4},
        {"10 1": 2, "0 1": 3},
        {"0x0": 1, "0xa": 2, "0x1f": 3},
    ],
)
@pytest.mark.parametrize(
    "header",
    [{}, {"memory_slots": 5}, {"creg_sizes": [["x", 2], ["y", 3]], "memory_slots": 5}],
)
def test_counts_key_formats_like_qiskit_counts(raw: dict, header: dict) -> None:
    d = {
        "backend_name": "b",
        "job_id": "j",
        "results": [{"shots": 1, "data": {"counts": raw}, "header": header}],
    }
    assert counts_from_result_dict(d) == Counts(raw, **header)


def test_counts_errors_are_invalid_file() -> None:
    base = {"backend_name": "b", "job_id": "j"}
    with pytest.raises(InvalidFile, match="statevector"):
        counts_from_result_dict({**base, "results": [{"data": {"statevector": [[1, 0]]}}]})
    with pytest.raises(InvalidFile, match="no counts"):
        counts_from_result_dict({**base, "results": [{"data": {}}]})
    with pytest.raises(InvalidFile, match="memory_slots"):
        counts_from_result_dict(
            {**base, "results": [{"data": {"counts": {"0x1": 1}}, "header": {"memory_slots": "2"}}]}
        )
    with pytest.raises(InvalidFile, match="bad counts"):
        counts_from_result_dict({**base, "results": [{"data": {"counts": {"0xzz": 1}}}]})


# --------------------------------------------------------------------------- jobs


def check_sdk_job(job: dict, result) -> None:  # type: ignore[no-untyped-def]
    assert job["hash"] == sdk_get_job_hash(result.job_id)
    assert job["results"] == json.dumps(result.get_counts())
    assert job["shots"] == json.dumps([r.shots for r in result.results])
    assert job["device_id"] == result.backend_name == "basic_simulator"
    assert job["status"] == "Done"
    assert job["job_type"] == "User local job"
    # Not the SDK's "Local job <uuid> - Job result, ...": the circuits on the backend.
    names = list(dict.fromkeys(r.header.name if hasattr(r.header, "name") else r.header["name"]
                               for r in result.results))  # fmt: skip
    assert job["name"].startswith(names[0]) and job["name"].endswith(" on basic_simulator")
    assert len(job["name"]) <= 40
    assert "experiment_id" not in job


@pytest.mark.parametrize("n", [1, 3])
def test_job_from_result_equals_dict_route(sim: BasicSimulator, n: int) -> None:
    circuits = [bell(), two_cregs(), unmeasured()][:n]
    result = sim.run(circuits, shots=50, seed_simulator=11).result()
    live = job_from_result(result)
    check_sdk_job(live, result)
    assert live == job_from_result_dict(result.to_dict())
    assert live == job_from_result_dict(roundtrip(result.to_dict()))
    assert json.loads(live["shots"]) == [50] * n


def test_job_from_qiskit_job(sim: BasicSimulator) -> None:
    job = sim.run(bell(), shots=20, seed_simulator=2)
    assert looks_like_qiskit_job(job) and not looks_like_qiskit_result(job)
    got = job_from_qiskit_job(job)
    result = job.result()
    check_sdk_job(got, result)
    assert result.job_id == job.job_id()
    assert got == job_from_result_dict(roundtrip(result.to_dict()))


def test_result_without_job_id_gets_content_hash(sim: BasicSimulator) -> None:
    from logbook.jobs import content_hash, prepare

    d = roundtrip(sim.run(bell(), shots=10, seed_simulator=1).result().to_dict())
    d["job_id"] = None
    job = job_from_result_dict(d)
    assert job["hash"] == ""
    stored = prepare(job, experiment_id="e")
    assert stored["hash"] == content_hash(stored) != sdk_hash(None)


def test_job_hash_differs_between_runs(sim: BasicSimulator) -> None:
    a = job_from_result(sim.run(bell(), shots=10, seed_simulator=1).result())
    b = job_from_result(sim.run(bell(), shots=10, seed_simulator=1).result())
    assert a["results"] == b["results"]
    assert a["hash"] != b["hash"]  # new job_id each run, as in the SDK


def test_duck_typing(sim: BasicSimulator) -> None:
    result = sim.run(bell(), shots=10).result()
    assert looks_like_qiskit_result(result)
    assert not looks_like_qiskit_job(result)
    d = result.to_dict()
    assert is_result_dict(d) and is_result_dict(roundtrip(d))
    assert not looks_like_qiskit_result(d) and not looks_like_qiskit_job(d)
    for other in [{"experiment_id": "e", "results": "[]"}, {"00": 1}, [], "x", None, Counts]:
        assert not is_result_dict(other)
        assert not looks_like_qiskit_result(other)
        assert not looks_like_qiskit_job(other)
    with pytest.raises(TypeError):
        job_from_result(d)


def test_modules_do_not_import_qiskit_at_import_time() -> None:
    """Qiskit is optional: no module-level import of it (a fresh interpreter checks the
    same in tests/e2e/test_store_processes.py)."""
    import ast

    import logbook.ingest
    import logbook.ingest.qiskit as mod

    for m in (mod, logbook.ingest):
        assert m.__file__ is not None
        tree = ast.parse(Path(m.__file__).read_text(encoding="utf-8"))
        for node in tree.body:  # only the module level: functions import it when called
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "qiskit" or n.startswith("qiskit.") for n in names), names
