"""Qiskit 2 primitives: real StatevectorSampler/Estimator results, logged and read from files.

The identity rules checked here are the ones README gives: a primitive job is
its ``job_id()`` (the SDK's Result rule applied to it), a bare result is its
content; the SDK's own hash (``repr(repr(result))``) would merge two runs
with different counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

qiskit = pytest.importorskip("qiskit")

from qiskit import QuantumCircuit  # noqa: E402
from qiskit.primitives import StatevectorEstimator, StatevectorSampler  # noqa: E402
from qiskit.quantum_info import SparsePauliOp  # noqa: E402

import logbook  # noqa: E402
from logbook.ingest import read_file  # noqa: E402
from logbook.ingest.qiskit import circuit_hash, sdk_hash  # noqa: E402


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def test_a_sampler_result_is_one_job_with_its_counts(db_path: Path) -> None:
    result = StatevectorSampler(seed=7).run([bell()], shots=1000).result()
    entry = logbook.log(result, experiment_id="prim", db=db_path)
    counts = result[0].join_data().get_counts()
    assert json.loads(entry.results) == counts and sum(counts.values()) == 1000
    assert json.loads(entry.shots) == [1000]
    assert entry.metrics["qiskit"]["pubs"][0]["shots"] == 1000
    # A bare result's identity is its content: logged again, the same entry.
    assert logbook.log(result, experiment_id="prim", db=db_path).id == entry.id


def test_two_runs_with_different_counts_are_two_entries(db_path: Path) -> None:
    """The SDK's hash would give both the same identity (its repr holds no counts)."""
    from haiqu.sdk.utils import get_job_hash  # the SDK's own rule

    a = StatevectorSampler(seed=1).run([bell()], shots=1000).result()
    b = StatevectorSampler(seed=2).run([bell()], shots=1000).result()
    assert a[0].join_data().get_counts() != b[0].join_data().get_counts()
    assert get_job_hash(a) == get_job_hash(b)  # why logbook does not use it
    ea = logbook.log(a, experiment_id="prim", db=db_path)
    eb = logbook.log(b, experiment_id="prim", db=db_path)
    assert ea.id != eb.id and ea.hash != eb.hash


def test_a_primitive_job_is_identified_by_its_job_id(db_path: Path) -> None:
    job = StatevectorSampler(seed=3).run([bell()], shots=512)
    entry = logbook.log(job, experiment_id="prim", db=db_path)
    assert entry.hash == sdk_hash(job.job_id())
    assert entry.name == f"job {job.job_id()[:8]}"  # short (no backend name: a local sampler)
    assert logbook.log(job, experiment_id="prim", db=db_path).id == entry.id
    # Two runs with identical counts, told apart by their jobs.
    again = StatevectorSampler(seed=3).run([bell()], shots=512)
    other = logbook.log(again, experiment_id="prim", db=db_path)
    assert other.results == entry.results and other.id != entry.id


def test_several_pubs_and_registers(db_path: Path) -> None:
    from qiskit.circuit import ClassicalRegister, QuantumRegister

    q, a, b = QuantumRegister(3, "q"), ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    qc = QuantumCircuit(q, a, b)
    qc.x(0)
    qc.measure(0, a[0])
    qc.measure([1, 2], b)
    result = StatevectorSampler(seed=4).run([(bell(), None, 100), (qc, None, 64)]).result()
    entry = logbook.log(result, experiment_id="prim", db=db_path)
    first, second = json.loads(entry.results)
    assert first == result[0].join_data().get_counts()
    assert second == {
        "001": 64
    }  # the first register rightmost, as Result.get_counts() without spaces
    assert json.loads(entry.shots) == [100, 64]


def test_an_estimator_result_keeps_its_values(db_path: Path) -> None:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    observables = [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("ZI")]
    result = StatevectorEstimator().run([(qc, observables)]).result()
    entry = logbook.log(result, experiment_id="prim", db=db_path)
    values = json.loads(entry.results)
    assert values["evs"] == pytest.approx([1.0, 1.0, 0.0], abs=1e-9)


def test_circuit_hash_is_the_sdks(db_path: Path) -> None:
    from haiqu.sdk.utils import get_circuit_hash

    qc = bell()
    assert circuit_hash(qc) == get_circuit_hash(qc)
    result = StatevectorSampler(seed=5).run([qc], shots=100).result()
    entry = logbook.log(result, experiment_id="prim", circuit=qc, db=db_path)
    assert entry.circuit_hash == get_circuit_hash(qc)


def test_metrics_join_what_the_result_brought(db_path: Path) -> None:
    result = StatevectorSampler(seed=6).run([bell()], shots=100).result()
    entry = logbook.log(result, experiment_id="prim", metrics={"fidelity": 0.97}, db=db_path)
    assert entry.metrics["fidelity"] == 0.97 and "qiskit" in entry.metrics


def test_the_runtime_encoder_json_of_a_result_is_read_like_the_object(tmp_path: Path) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    result = StatevectorSampler(seed=8).run([bell(), (bell(), None, 50)], shots=300).result()
    path = tmp_path / "sampler.json"
    path.write_text(json.dumps(result, cls=runtime.RuntimeEncoder))
    res = read_file(path, experiment_id="prim")
    assert res.ok and res.kind == "primitive", res.errors
    [job] = res.jobs
    assert json.loads(job["results"]) == [p.join_data().get_counts() for p in result]
    assert json.loads(job["shots"]) == [300, 50]
    from logbook.api import job_from_object

    assert job["hash"] == job_from_object(result, "prim")["hash"]


def test_a_primitive_result_file_that_would_expand_without_end_is_invalid(tmp_path: Path) -> None:
    import base64
    import zlib

    bomb = base64.standard_b64encode(zlib.compress(b"\0" * (80 * 1024 * 1024), 9)).decode()
    doc = {
        "__type__": "PrimitiveResult",
        "__value__": {"metadata": {}, "pub_results": [{"__type__": "SamplerPubResult",
            "__value__": {"metadata": {}, "data": {"__type__": "DataBin", "__value__": {
                "field_names": ["meas"], "shape": [], "fields": {"meas": {"__type__": "BitArray",
                "__value__": {"num_bits": 2,
                              "array": {"__type__": "ndarray", "__value__": bomb}}}}}}}}]},
    }  # fmt: skip
    path = tmp_path / "bomb.json"
    path.write_text(json.dumps(doc))
    res = read_file(path, experiment_id="prim")
    assert not res.ok and "expands past" in res.errors[0]
