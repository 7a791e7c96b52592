"""A job's checks (``jobs.prepare``) and the API's models (``models``).

``prepare`` is plain Python and stricter than the API: unknown fields are
refused and every string must be valid Unicode, so that a lone surrogate is
one invalid job instead of a failed batch at the insert.  The pydantic models
are built from the same declaration: ``JobSubmit`` strict, ``ServerJobSubmit``
lenient like the API's server, ``Job`` (what the server returns) lenient.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from logbook.errors import InvalidJob
from logbook.jobs import JOB, JOB_FIELDS, Job, content_hash, prepare
from logbook.models import JOB_TYPES, STATUSES, JobSubmit, ServerJobSubmit
from logbook.models import Job as ServerJob
from logbook.store import Store
from logbook.vocab import MAX_ID, MAX_TEXT

SURROGATE = "\ud800"


def invalid(doc: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidJob) as info:
        prepare(doc, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    msg.encode("utf-8")  # the message itself is printable, whatever the job held
    return msg


# --- the declaration ----------------------------------------------------------------


def test_one_declaration_of_the_fields() -> None:
    assert JOB_FIELDS == (
        "experiment_id", "hash", "circuit_hash", "name", "device_id", "shots", "status",
        "job_type", "results", "metrics",
    )  # fmt: skip
    assert tuple(f.name for f in JOB) == JOB_FIELDS
    assert tuple(JobSubmit.model_fields) == JOB_FIELDS
    assert tuple(ServerJobSubmit.model_fields) == JOB_FIELDS
    j = Job(experiment_id="e", hash="h")
    assert tuple(j.post_body()) == JOB_FIELDS
    assert (j.status, j.job_type, j.metrics) == ("Done", "User local job", {})
    assert MAX_ID == 256 and MAX_TEXT == 200


# --- JobSubmit: strict ----------------------------------------------------------------


def test_jobsubmit_defaults_and_enum_values() -> None:
    job = JobSubmit(experiment_id="e")
    dumped = job.model_dump()
    assert dumped["status"] == "Done"
    assert dumped["job_type"] == "User local job"
    assert dumped["metrics"] == {}


@pytest.mark.parametrize("status", STATUSES)
def test_every_api_status_accepted(status: str) -> None:
    assert JobSubmit(experiment_id="e", status=status).model_dump()["status"] == status
    assert prepare({"experiment_id": "e", "status": status})["status"] == status


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_every_api_job_type_accepted(job_type: str) -> None:
    assert JobSubmit(experiment_id="e", job_type=job_type).model_dump()["job_type"] == job_type
    assert prepare({"experiment_id": "e", "job_type": job_type})["job_type"] == job_type


REJECTED = [
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
]


@pytest.mark.parametrize("field,value", REJECTED)
def test_jobsubmit_rejects(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        JobSubmit.model_validate({"experiment_id": "e", field: value})


@pytest.mark.parametrize("field,value", REJECTED)
def test_prepare_rejects_naming_the_field(field: str, value: str) -> None:
    msg = invalid({"experiment_id": "e", field: value})
    assert field in msg


def test_jobsubmit_limits_are_inclusive() -> None:
    job = JobSubmit(experiment_id="e", name="n" * 200, device_id="d" * 200)
    assert len(job.name or "") == 200 and len(job.device_id or "") == 200
    got = prepare({"experiment_id": "e", "name": "n" * 200, "device_id": "d" * 200})
    assert len(got["name"]) == 200 and len(got["device_id"]) == 200


def test_results_and_shots_must_be_json_text() -> None:
    job = JobSubmit(experiment_id="e", results='{"00": 5}', shots="[1024]")
    assert job.results == '{"00": 5}' and job.shots == "[1024]"
    with pytest.raises(ValidationError):
        JobSubmit(experiment_id="e", results="NaN")


@pytest.mark.parametrize("field", ["experiment_id", "hash"])
def test_jobsubmit_refuses_ids_prepare_refuses(field: str) -> None:
    with pytest.raises(ValidationError):
        JobSubmit.model_validate({"experiment_id": "e", field: "x" * (MAX_ID + 1)})


# --- ServerJobSubmit: lenient like the API's server ---------------------------------------


def test_server_model_ignores_extra_fields_and_empty_enums() -> None:
    job = ServerJobSubmit.model_validate(
        {"experiment_id": "e", "status": "", "job_type": "", "colour": "red"}
    )
    dumped = job.model_dump()
    assert dumped["status"] == "Done" and dumped["job_type"] == "User local job"
    assert "colour" not in dumped
    with pytest.raises(ValidationError):
        ServerJobSubmit.model_validate({"experiment_id": "e", "status": "Finished"})
    with pytest.raises(ValidationError):
        ServerJobSubmit.model_validate({"experiment_id": "e", "results": "{oops"})


# --- prepare --------------------------------------------------------------------------


def test_prepare_error_is_one_line_naming_the_field() -> None:
    msg = invalid({"experiment_id": "e", "status": "Finished", "name": "n" * 201})
    assert "status" in msg and "name" in msg


@pytest.mark.parametrize(
    "doc, expected",
    [
        (
            {"experiment_id": "e", "status": "Finished"},
            "status: must be one of Submitted, Initializing, Queued, Validating, Running,"
            " Cancelled, Done, Error (got 'Finished')",
        ),
        ({"experiment_id": "e", "name": "n" * 201}, "name: at most 200 characters (got 201)"),
        (
            {"experiment_id": "e", "results": "{oops"},
            "results: must be JSON text (Expecting property name enclosed in double quotes"
            " at line 1 column 2)",
        ),
        (
            {"experiment_id": "e", "shots": "[1024,\n 2048"},
            "shots: must be JSON text (Expecting ',' delimiter at line 2 column 6)",
        ),
        ({"experiment_id": ""}, "experiment_id: required (a non-empty string)"),
        ({"name": "x"}, "experiment_id: required (a non-empty string)"),
    ],
)
def test_prepare_error_texts(doc: dict[str, Any], expected: str) -> None:
    assert invalid(doc) == expected


def test_prepare_unknown_field_text() -> None:
    msg = invalid({"experiment_id": "e", "colour": "red"})
    assert msg.startswith("'colour': unknown field (a job has experiment_id, hash,")


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
    assert prepare({"experiment_id": "own"}, experiment_id="exp")["experiment_id"] == "own"
    with pytest.raises(InvalidJob):
        prepare({"hash": "h1"})  # no experiment at all


def test_prepare_rejects_non_mapping() -> None:
    assert invalid(["not", "a", "job"]) == "a job must be a JSON object"


# --- surrogates and lengths ------------------------------------------------------------


@pytest.mark.parametrize(
    "field, doc",
    [
        ("name", {"name": SURROGATE}),
        ("device_id", {"device_id": "dev" + SURROGATE}),
        ("results", {"results": f'"{SURROGATE}"'}),
        ("results", {"results": {"00": SURROGATE}}),
        # the same value written as JSON text with an escape: refused the same way
        ("results", {"results": '{"00": "\\ud800"}'}),
        ("results", {"results": '{"\\uDFFF": 1}'}),
        ("shots", {"shots": '["\\udbff"]'}),
        ("shots", {"shots": SURROGATE}),
        ("shots", {"shots": [SURROGATE]}),
        ("experiment_id", {"experiment_id": SURROGATE}),
        ("hash", {"hash": "h" + SURROGATE}),
        ("circuit_hash", {"circuit_hash": SURROGATE}),
        ("metrics", {"metrics": {SURROGATE: 1}}),
        ("metrics", {"metrics": {"note": SURROGATE}}),
        ("metrics", {"metrics": {"deep": [{"x": SURROGATE}]}}),
    ],
)
def test_a_lone_surrogate_is_an_invalid_job_naming_the_field(
    field: str, doc: dict[str, Any]
) -> None:
    msg = invalid({"experiment_id": "e", **doc})
    assert msg.startswith(f"{field}: ")
    assert "Unicode" in msg and "surrogate" in msg
    assert "NaN" not in msg
    others = [f for f in JOB_FIELDS if f != field]
    assert not any(msg.startswith(f"{f}:") or f"; {f}:" in msg for f in others)


def test_a_surrogate_in_the_name_is_not_called_nan() -> None:
    # the old model said "metrics: NaN and Infinity are not JSON" for this
    msg = invalid({"experiment_id": "e", "name": "bell " + SURROGATE, "metrics": {"a": 1}})
    assert "metrics: NaN" not in msg and "metrics" not in msg
    assert msg.startswith("name: ") and "surrogate" in msg


def test_a_paired_surrogate_is_fine() -> None:
    job = prepare({"experiment_id": "e", "name": "\U0001f600", "metrics": {"\U0001f600": 1}})
    assert job["name"] == "\U0001f600"


def test_an_escaped_surrogate_pair_in_json_text_is_fine() -> None:
    job = prepare({"experiment_id": "e", "results": '{"\\ud83d\\ude00": 1}'})
    assert json.loads(job["results"]) == {"\U0001f600": 1}


@pytest.mark.parametrize("field", ["experiment_id", "hash"])
def test_ids_are_at_most_256_characters(field: str) -> None:
    assert prepare({"experiment_id": "e", field: "x" * MAX_ID})[field] == "x" * MAX_ID
    msg = invalid({"experiment_id": "e", field: "x" * (MAX_ID + 1)})
    assert msg == f"{field}: at most 256 characters (got 257)"


@pytest.mark.parametrize("field", ["status", "job_type"])
@pytest.mark.parametrize("value", [["Done"], {"a": 1}])
def test_an_unhashable_enum_value_is_an_invalid_job(field: str, value: Any) -> None:
    msg = invalid({"experiment_id": "e", field: value})
    assert msg.startswith(f"{field}: must be one of")


@pytest.mark.parametrize("doc", [{"metrics": {"a": 10**5000}}, {"results": [10**5000]}])
def test_a_huge_integer_is_not_called_nan(doc: dict[str, Any]) -> None:
    msg = invalid({"experiment_id": "e", **doc})
    assert "NaN" not in msg


# --- prepare agrees with the model ------------------------------------------------------

MODEL_DOCS = [
    {"experiment_id": "e"},
    {"experiment_id": "e", "name": "n" * 200, "device_id": "d", "results": '{"0": 1}'},
    {"experiment_id": "e", "hash": "h", "circuit_hash": None, "shots": "[1]", "metrics": {"a": 1}},
    {"experiment_id": "e", "status": "Running", "job_type": "SKQD", "results": ""},
    {"experiment_id": "e", "name": "n" * 201},
    {"experiment_id": "e", "status": "Finished"},
    {"experiment_id": "e", "results": "{oops"},
    {"experiment_id": "e", "name": 5},
    {"experiment_id": "e", "extra": 1},
    {"experiment_id": "", "name": "x"},
    {"experiment_id": "e", "metrics": {1: "int key"}},
    {"experiment_id": "e", "metrics": []},
    {"experiment_id": 3},
    {"experiment_id": "e", "name": SURROGATE},
]


@pytest.mark.parametrize("doc", MODEL_DOCS)
def test_prepare_agrees_with_the_model(doc: dict[str, object]) -> None:
    data = {"status": "Done", "job_type": "User local job", "metrics": {}, **doc}
    try:
        expected = JobSubmit.model_validate(data).model_dump()
    except ValidationError:
        with pytest.raises(InvalidJob):
            prepare(doc)
        return
    for key in ("hash", "circuit_hash", "results", "device_id", "shots", "name"):
        expected[key] = expected[key] or ""
    job = prepare(doc)
    assert list(job) == list(expected)
    assert {k: v for k, v in job.items() if k != "hash"} == {
        k: v for k, v in expected.items() if k != "hash"
    }


# --- what the server returns --------------------------------------------------------------

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
    job = ServerJob.model_validate({**SERVER_JOB, "new_field": {"x": 1}, "priority": 3})
    assert job.model_extra == {"new_field": {"x": 1}, "priority": 3}
    assert job.model_dump()["new_field"] == {"x": 1}


def test_job_response_keeps_unknown_status_and_type() -> None:
    job = ServerJob.model_validate({**SERVER_JOB, "status": "Paused", "job_type": "Quantum Magic"})
    assert job.status == "Paused" and job.job_type == "Quantum Magic"
    assert job.finished  # not one of the known unfinished states


@pytest.mark.parametrize("status", ["Submitted", "Queued", "Running"])
def test_job_unfinished(status: str) -> None:
    assert not ServerJob.model_validate({**SERVER_JOB, "status": status}).finished


def test_job_response_missing_required_field_fails() -> None:
    body = dict(SERVER_JOB)
    del body["hash"]
    with pytest.raises(ValidationError):
        ServerJob.model_validate(body)


# --- property: prepare gives a storable job or InvalidJob, nothing else ----------------------

# Any code point, lone surrogates included, with a few that matter made likely.
_chars = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.sampled_from(["\ud800", "\udcff", "\udfff", "\x00", "é", '"', "{", "}", "[", "1"]),
)
_text = st.text(_chars, max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_other = st.sampled_from([b"bytes", (1, 2), {1, 2}, object(), 1j])
_value = st.one_of(_text, _json, _other)
# Mostly plausible values (so that many documents pass), sometimes anything at all.
_plain = st.text(st.characters(codec="utf-8"), max_size=20)


def _field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 5).flatmap(lambda i: _value if i == 0 else plausible)


_enum = st.one_of(st.sampled_from(STATUSES + JOB_TYPES), _text, st.none(), st.integers())
_FIELD_VALUES = {
    "hash": _field(st.one_of(_plain, st.text(min_size=250, max_size=260))),
    "circuit_hash": _field(_plain),
    "name": _field(st.one_of(_plain, st.text(min_size=195, max_size=205))),
    "device_id": _field(_plain),
    "shots": _field(st.one_of(st.lists(st.integers()).map(json.dumps), _json)),
    "status": st.one_of(st.sampled_from(STATUSES), _enum),
    "job_type": st.one_of(st.sampled_from(JOB_TYPES), _enum),
    "results": _field(st.one_of(_json.map(json.dumps), _json)),
    "metrics": _field(st.dictionaries(_text, _json, max_size=4)),
}
_docs = st.builds(
    lambda eid, fields, extra: {**extra, **fields, **eid},
    st.integers(0, 3).flatmap(
        lambda i: (
            st.just({}) if i == 0 else st.fixed_dictionaries({"experiment_id": _field(_plain)})
        )
    ),
    st.fixed_dictionaries({}, optional=_FIELD_VALUES),
    st.one_of(st.just({}), st.just({}), st.just({}), st.dictionaries(_text, _value, max_size=2)),
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.fixture(scope="module")
def property_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as d:
        s = Store(Path(d) / "prop.db")
        yield s
        s.close()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_docs, fill=st.one_of(st.none(), st.just("fill-exp"), _plain, _text))
def test_prepare_gives_a_storable_job_or_invalid_job(
    property_store: Store, doc: dict[str, Any], fill: str | None
) -> None:
    try:
        job = prepare(doc, experiment_id=fill)
    except InvalidJob as err:
        str(err).encode("utf-8")  # the reason is printable
        first = str(err).split(":", 1)[0]
        event(f"invalid: {first if first in JOB_FIELDS else 'other'}")
        return
    event("accepted")
    assert list(job) == list(JOB_FIELDS)
    for s in _strings(job):
        s.encode("utf-8")
    for f in ("experiment_id", "hash"):
        assert isinstance(job[f], str) and 0 < len(job[f]) <= MAX_ID
    for f in ("results", "shots"):
        assert isinstance(job[f], str)
        if job[f]:
            json.loads(job[f])
    assert job["status"] in STATUSES and job["job_type"] in JOB_TYPES
    json.dumps(job["metrics"], allow_nan=False)
    entry, created = property_store.record(job, source="property")
    if created:
        stored = property_store.get(entry.id).post_body()
        assert {k: v for k, v in stored.items() if k != "metrics"} == {
            k: v for k, v in job.items() if k != "metrics"
        }
        assert json.dumps(stored["metrics"], sort_keys=True) == json.dumps(
            job["metrics"], sort_keys=True
        )
    assert not any(isinstance(v, float) and math.isnan(v) for v in job.values())
