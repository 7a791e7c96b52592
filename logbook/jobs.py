"""Turning job content into a checked, hashed job ready for the store.

Kept apart from ``models`` so the hot paths (import of 100,000 lines) share one
function, and apart from ``store`` so the store never imports pydantic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .errors import InvalidJob
from .models import JobSubmit

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


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(job: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a job's content fields."""
    content = {f: job.get(f) for f in CONTENT_FIELDS}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


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
            data[key] = _as_json_text(data[key])
    if not data.get("status"):
        data["status"] = DEFAULT_STATUS
    if not data.get("job_type"):
        data["job_type"] = DEFAULT_JOB_TYPE
    if data.get("metrics") is None:
        data["metrics"] = {}
    try:
        job = JobSubmit.model_validate(data).model_dump()
    except ValidationError as err:
        raise InvalidJob(_describe(err)) from None
    for key in ("hash", "circuit_hash", "results", "device_id", "shots", "name"):
        if job[key] is None:
            job[key] = ""
    if not job["hash"]:
        job["hash"] = content_hash(job)
    return job
