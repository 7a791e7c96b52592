"""The API's models: strict for what we send, lenient for what the server returns."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from logbook.errors import InvalidJob
from logbook.jobs import content_hash, prepare
from logbook.models import JOB_TYPES, STATUSES, Job, JobSubmit


def test_jobsubmit_defaults_and_enum_values() -> None:
    job = JobSubmit(experiment_id="e")
    dumped = job.model_dump()
    assert dumped["status"] == "Done"
    assert dumped["job_type"] == "User local job"
    assert dumped["metrics"] == {}


@pytest.mark.parametrize("status", STATUSES)
def test_every_api_status_accepted(status: str) -> None:
    assert JobSubmit(experiment_id="e", status=status).model_dump()["status"] == status


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_every_api_job_type_accepted(job_type: str) -> None:
    assert JobSubmit(experiment_id="e", job_type=job_type).model_dump()["job_type"] == job_type


@pytest.mark.parametrize(
    "field,value",
    [
        ("status", "Finished"),
        ("status", "done"),  # the enum is case-sensitive, like the API
        ("job_type", "Local"),
        ("name", "x" * 201),
        ("device_id", "d" * 201),
        ("results", "{not json"),
        ("shots", "[1024"),
        ("experiment_id", ""),
        ("unknown_field", "x"),
        ("metrics", "not a dict"),
    ],
)
def test_jobsubmit_rejects(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        JobSubmit.model_validate({"experiment_id": "e", field: value})


def test_jobsubmit_limits_are_inclusive() -> None:
    job = JobSubmit(experiment_id="e", name="n" * 200, device_id="d" * 200)
    assert len(job.name or "") == 200 and len(job.device_id or "") == 200


def test_results_and_shots_must_be_json_text() -> None:
    job = JobSubmit(experiment_id="e", results='{"00": 5}', shots="[1024]")
    assert job.results == '{"00": 5}' and job.shots == "[1024]"


def test_prepare_error_is_one_line_naming_the_field() -> None:
    with pytest.raises(InvalidJob) as info:
        prepare({"experiment_id": "e", "status": "Finished", "name": "n" * 201})
    msg = str(info.value)
    assert "\n" not in msg
    assert "status" in msg and "name" in msg


def test_prepare_turns_json_values_into_text_and_hashes_content() -> None:
    a = prepare({"experiment_id": "e", "results": {"b": 1, "a": 2}, "shots": [3]})
    assert a["results"] == '{"a":2,"b":1}' and a["shots"] == "[3]"
    assert a["hash"] == content_hash(a)
    # Same content, other key order and other experiment: same hash.
    b = prepare({"shots": "[3]", "results": '{"a":2,"b":1}', "experiment_id": "other"})
    assert b["hash"] == a["hash"]
    # Different content: different hash.
    c = prepare({"experiment_id": "e", "results": {"a": 2, "b": 2}, "shots": [3]})
    assert c["hash"] != a["hash"]


def test_prepare_keeps_a_given_hash_and_fills_experiment() -> None:
    job = prepare({"hash": "h1"}, experiment_id="exp")
    assert job["hash"] == "h1" and job["experiment_id"] == "exp"
    with pytest.raises(InvalidJob):
        prepare({"hash": "h1"})  # no experiment at all


def test_prepare_rejects_non_mapping() -> None:
    with pytest.raises(InvalidJob):
        prepare(["not", "a", "job"])  # type: ignore[arg-type]


SERVER_JOB = {
    "id": "j-1",
    "user_id": 7,
    "experiment_id": "e",
    "status": "Done",
    "job_type": "User local job",
    "creation_date": "2025-01-01T00:00:00Z",
    "hash": "h",
    "backend_name": "sim",
}


def test_job_response_keeps_unknown_fields() -> None:
    job = Job.model_validate({**SERVER_JOB, "new_field": {"x": 1}, "priority": 3})
    assert job.model_extra == {"new_field": {"x": 1}, "priority": 3}
    assert job.model_dump()["new_field"] == {"x": 1}


def test_job_response_keeps_unknown_status_and_type() -> None:
    job = Job.model_validate({**SERVER_JOB, "status": "Paused", "job_type": "Quantum Magic"})
    assert job.status == "Paused" and job.job_type == "Quantum Magic"
    assert job.finished  # not one of the known unfinished states


@pytest.mark.parametrize("status", ["Submitted", "Queued", "Running"])
def test_job_unfinished(status: str) -> None:
    assert not Job.model_validate({**SERVER_JOB, "status": status}).finished


def test_job_response_missing_required_field_fails() -> None:
    body = dict(SERVER_JOB)
    del body["hash"]
    with pytest.raises(ValidationError):
        Job.model_validate(body)


FAST_PATH_DOCS = [
    {"experiment_id": "e"},
    {"experiment_id": "e", "name": "n" * 200, "device_id": "d", "results": '{"0": 1}'},
    {"experiment_id": "e", "hash": "h", "circuit_hash": None, "shots": "[1]", "metrics": {"a": 1}},
    {"experiment_id": "e", "status": "Running", "job_type": "SKQD", "results": ""},
    # everything below must take the model's path and be judged the same way
    {"experiment_id": "e", "name": "n" * 201},
    {"experiment_id": "e", "status": "Finished"},
    {"experiment_id": "e", "results": "{oops"},
    {"experiment_id": "e", "name": 5},
    {"experiment_id": "e", "extra": 1},
    {"experiment_id": "", "name": "x"},
    {"experiment_id": "e", "metrics": {1: "int key"}},
    {"experiment_id": "e", "metrics": []},
    {"experiment_id": 3},
]


@pytest.mark.parametrize("doc", FAST_PATH_DOCS)
def test_prepare_fast_path_agrees_with_the_model(doc: dict[str, object]) -> None:
    from logbook.jobs import _plainly_valid

    data = {"status": "Done", "job_type": "User local job", "metrics": {}, **doc}
    try:
        expected = JobSubmit.model_validate(data).model_dump()
    except ValidationError:
        assert _plainly_valid(data) is None
        with pytest.raises(InvalidJob):
            prepare(doc)
        return
    for key in ("hash", "circuit_hash", "results", "device_id", "shots", "name"):
        expected[key] = expected[key] or ""
    fast = _plainly_valid(data)
    if fast is not None:
        assert fast == expected and list(fast) == list(expected)
    job = prepare(doc)
    assert {k: v for k, v in job.items() if k != "hash"} == {
        k: v for k, v in expected.items() if k != "hash"
    }
