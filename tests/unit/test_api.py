"""``logbook.log()``: Qiskit results and jobs, mappings and counts, offline (in-process).

That ``log`` never loads the HTTP client is checked in a fresh interpreter in
tests/e2e/test_store_processes.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import logbook
from logbook.errors import InvalidJob
from logbook.store import Store

qiskit = pytest.importorskip("qiskit")


def _sdk_hash(job_id: object) -> str:
    # haiqu.sdk.utils.get_job_hash, restated: the decimal of the little-endian int of
    # sha256(repr(job_id)).
    return str(int.from_bytes(hashlib.sha256(repr(job_id).encode()).digest(), "little"))


@pytest.fixture(scope="module")
def bell_job() -> Any:
    from qiskit import QuantumCircuit, transpile
    from qiskit.providers.basic_provider import BasicSimulator

    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    backend = BasicSimulator()
    job = backend.run(transpile(qc, backend), shots=256, seed_simulator=7)
    job.result()  # finish it once
    return job


def test_log_a_qiskit_result(bell_job: Any, db_path: Path) -> None:
    result = bell_job.result()
    entry = logbook.log(result, experiment_id="bell")
    assert entry.hash == _sdk_hash(result.job_id)
    assert entry.experiment_id == "bell"
    assert json.loads(entry.results) == result.get_counts()
    assert json.loads(entry.shots) == [256]
    assert entry.device_id == result.backend_name
    assert (entry.status, entry.job_type, entry.state) == ("Done", "User local job", "pending")
    assert entry.source == "python"
    with Store(db_path) as s:  # it is in the default store, durably
        assert s.get(entry.id).hash == entry.hash


def test_result_job_and_file_are_one_entry(
    bell_job: Any, tmp_path: Path, cli_runner: Any, db_path: Path
) -> None:
    result = bell_job.result()
    as_result = logbook.log(result, experiment_id="bell")
    as_job = logbook.log(bell_job, experiment_id="bell")
    assert as_job.id == as_result.id
    f = tmp_path / "bell_result.json"
    f.write_text(json.dumps(result.to_dict(), default=str))
    res = cli_runner("import", f, "--experiment", "bell", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["recorded"], report["known"]) == (0, 1)
    with Store(db_path) as s:
        entries = list(s.entries())
    assert [e.id for e in entries] == [as_result.id]
    # the same result in another experiment is another entry
    other = logbook.log(result, experiment_id="bell-2")
    assert other.id != as_result.id and other.hash == as_result.hash


def test_log_a_mapping_with_extra_fields(db_path: Path) -> None:
    entry = logbook.log(
        {"name": "sweep", "results": {"00": 3}, "shots": [3], "metrics": {"depth": 2}},
        experiment_id="maps",
        device_id="sim",
    )
    assert (entry.name, entry.device_id, entry.metrics) == ("sweep", "sim", {"depth": 2})
    assert entry.results == '{"00":3}'
    doc = {"name": "sweep", "results": {"00": 3}, "shots": [3], "metrics": {"depth": 2}}
    again = logbook.log(doc, experiment_id="maps", device_id="sim")
    assert again.id == entry.id


def test_log_a_counts_dict() -> None:
    entry = logbook.log({"00": 510, "11": 490}, experiment_id="counts", name="bell counts")
    assert json.loads(entry.results) == {"00": 510, "11": 490}
    assert json.loads(entry.shots) == [1000]
    assert entry.name == "bell counts"


def test_log_to_an_explicit_store(tmp_path: Path, db_path: Path) -> None:
    target = tmp_path / "other.db"
    logbook.log({"0": 1}, experiment_id="x", db=target)
    with Store(target) as s:
        assert len(list(s.entries())) == 1
    assert not db_path.exists()


@pytest.mark.parametrize(
    "obj,kwargs",
    [
        (42, {"experiment_id": "e"}),
        ("a string", {"experiment_id": "e"}),
        ([1, 2], {"experiment_id": "e"}),
        ({"name": "no experiment"}, {}),
        ({"status": "Finished"}, {"experiment_id": "e"}),
        ({"name": "x" * 201}, {"experiment_id": "e"}),
        ({"00": 1}, {"experiment_id": "e", "results": "{broken"}),
    ],
)
def test_bad_objects_raise_invalid_job_and_store_nothing(
    obj: Any, kwargs: dict[str, Any], db_path: Path
) -> None:
    with pytest.raises(InvalidJob):
        logbook.log(obj, **kwargs)
    if db_path.exists():
        with Store(db_path) as s:
            assert list(s.entries()) == []


class _JobWithPrimitiveResult:
    """A job whose result() is not a Qiskit Result (like a primitive's job)."""

    def result(self) -> object:
        return {"pub_results": []}

    def job_id(self) -> str:
        return "abc"

    def status(self) -> str:
        return "DONE"


def test_job_without_a_result_is_invalid() -> None:
    with pytest.raises(InvalidJob):
        logbook.log(_JobWithPrimitiveResult(), experiment_id="e")


def test_log_a_result_dict_is_the_same_entry(bell_job: Any) -> None:
    result = bell_job.result()
    live = logbook.log(result, experiment_id="bell")
    from_dict = logbook.log(json.loads(json.dumps(result.to_dict(), default=str)), "bell")
    assert from_dict.id == live.id


def test_callers_metrics_join_the_results_own(db_path: Path) -> None:
    entry = logbook.log(
        {"name": "m", "results": {"00": 1}, "metrics": {"depth": 2, "width": 1}},
        experiment_id="metrics",
        metrics={"width": 3, "fidelity": 0.9},
    )
    assert entry.metrics == {"depth": 2, "width": 3, "fidelity": 0.9}
    with pytest.raises(InvalidJob, match="metrics"):
        logbook.log({"00": 1}, experiment_id="metrics", metrics=[1, 2])


def test_log_returns_the_stored_entry(db_path: Path) -> None:
    entry = logbook.log({"00": 7}, experiment_id="e", name="n", device_id="d")
    with Store(db_path) as s:
        stored = s.get(entry.id)
    assert stored.to_dict() == entry.to_dict()
    assert logbook.log({"00": 7}, experiment_id="e", name="n", device_id="d").id == entry.id
