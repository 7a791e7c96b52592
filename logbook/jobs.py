"""Turning job content into a checked, hashed job ready for the store.

Kept apart from ``models`` so the hot paths (import of 100,000 lines) share one
function, and apart from ``store`` so the store never imports pydantic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import InvalidJob
from .vocab import JOB_TYPES, MAX_TEXT, STATUSES, reject_constant

#: The ``POST /jobs`` body fields, in the API's order.
JOB_FIELDS: tuple[str, ...] = (
    "experiment_id",
    "hash",
    "circuit_hash",
    "results",
    "device_id",
    "shots",
    "name",
    "status",
    "job_type",
    "metrics",
)
#: Fields whose values make up a job's content (and so its computed hash).
CONTENT_FIELDS: tuple[str, ...] = tuple(f for f in JOB_FIELDS if f not in ("experiment_id", "hash"))

DEFAULT_STATUS = "Done"
DEFAULT_JOB_TYPE = "User local job"

_FIELD_SET = frozenset(JOB_FIELDS)
_STATUS_SET = frozenset(STATUSES)
_JOB_TYPE_SET = frozenset(JOB_TYPES)
_TEXT_FIELDS = ("hash", "circuit_hash", "results", "device_id", "shots", "name")


# One encoder, made once: json.dumps() with options builds a new encoder per call.
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces, UTF-8 kept."""
    return _canonical(value)


def content_hash(job: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a job's content fields."""
    get = job.get
    content = {f: get(f) for f in CONTENT_FIELDS}
    return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def _as_json_text(value: Any) -> Any:
    # A job document may give results/shots as JSON values rather than JSON text;
    # the API wants text, so store the canonical text of the value.
    if isinstance(value, (dict, list, int, float, bool)):
        return canonical_json(value)
    return value


def _describe(err: Any) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ())) or "job"
        msg = e.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


_json_text = json.JSONDecoder(parse_constant=reject_constant)


def _is_json_text(value: str) -> bool:
    # raw_decode skips decode()'s two whitespace regexes; text with surrounding
    # whitespace (or trailing garbage) takes the full decode, which decides.
    try:
        return _json_text.raw_decode(value)[1] == len(value) or _full_decode(value)
    except (ValueError, RecursionError):
        return _full_decode(value)


def _full_decode(value: str) -> bool:
    try:
        _json_text.decode(value)
    except (ValueError, RecursionError):
        return False
    return True


def _plainly_valid(data: dict[str, Any]) -> dict[str, Any] | None:
    """The job when ``data`` is already exactly what ``JobSubmit`` accepts, else None.

    The fast path for bulk import (pydantic costs ~15 us a line): it accepts only
    what the model would accept unchanged and gives the same job as
    ``JobSubmit.model_validate(data).model_dump()``; anything else (wrong types,
    unknown keys, values to reject) returns None so the model checks it and
    words the error.
    """
    if not _FIELD_SET.issuperset(data):
        return None
    experiment_id = data.get("experiment_id")
    status = data["status"]
    job_type = data["job_type"]
    metrics = data["metrics"]
    if (
        type(experiment_id) is not str
        or not experiment_id
        or type(status) is not str
        or status not in _STATUS_SET
        or type(job_type) is not str
        or job_type not in _JOB_TYPE_SET
        or type(metrics) is not dict
        or not all(type(k) is str for k in metrics)
    ):
        return None
    job: dict[str, Any] = {"experiment_id": experiment_id}
    for key in _TEXT_FIELDS:
        value = data.get(key)
        if value is None:
            value = ""
        elif type(value) is not str:
            return None
        job[key] = value
    if len(job["name"]) > MAX_TEXT or len(job["device_id"]) > MAX_TEXT:
        return None
    for key in ("results", "shots"):
        if job[key] and not _is_json_text(job[key]):
            return None
    job["status"] = status
    job["job_type"] = job_type
    job["metrics"] = dict(metrics)
    return job  # keys in JOB_FIELDS order, as model_dump() gives them


def prepare(doc: Mapping[str, Any], *, experiment_id: str | None = None) -> dict[str, Any]:
    """Check a job document against the API's model and return the job to store.

    ``experiment_id`` fills in for a document without one.  Missing status and
    job_type default to ``Done`` and ``User local job``; a missing hash is
    computed from the content.  Raises ``InvalidJob`` with a one-line reason.
    """
    if not isinstance(doc, Mapping):
        raise InvalidJob("a job must be a JSON object")
    data = dict(doc)
    if experiment_id and not data.get("experiment_id"):
        data["experiment_id"] = experiment_id
    for key in ("results", "shots"):
        if key in data:
            try:
                data[key] = _as_json_text(data[key])
            except ValueError:  # NaN or Infinity inside
                raise InvalidJob(f"{key}: NaN and Infinity are not JSON") from None
    if not data.get("status"):
        data["status"] = DEFAULT_STATUS
    if not data.get("job_type"):
        data["job_type"] = DEFAULT_JOB_TYPE
    if data.get("metrics") is None:
        data["metrics"] = {}
    job = _plainly_valid(data)
    if job is None:  # something to coerce or to reject: let the model decide and explain
        from pydantic import ValidationError

        from .models import JobSubmit

        try:
            job = JobSubmit.model_validate(data).model_dump()
        except ValidationError as err:
            raise InvalidJob(_describe(err)) from None
        for key in _TEXT_FIELDS:
            if job[key] is None:
                job[key] = ""
    try:
        if not job["hash"]:
            job["hash"] = content_hash(job)  # its encoder also refuses NaN in metrics
        elif job["metrics"]:
            canonical_json(job["metrics"])
    except ValueError:
        raise InvalidJob("metrics: NaN and Infinity are not JSON") from None
    except TypeError as err:
        raise InvalidJob(f"metrics: {err}") from None
    return job
