"""Pydantic models of the Haiqu Jobs API shapes (``api/openapi.yaml``).

Responses are read leniently: unknown fields are kept and a status or job type
we do not know yet is kept as a plain string, so a newer server never crashes
an older logbook.  Submissions are checked strictly, before anything is stored.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .vocab import (  # noqa: F401  (re-exported: the API's vocabulary)
    JOB_TYPES,
    MAX_TEXT,
    STATUSES,
    UNFINISHED,
    JobStatus,
    JobType,
    reject_constant,
)


def _json_text(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return value
    try:
        json.loads(value, parse_constant=reject_constant)
    except ValueError:
        raise ValueError(f"{field} must be JSON text") from None
    return value


class JobSubmit(BaseModel):
    """The ``POST /jobs`` body, checked as strictly as the API checks it."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    experiment_id: str = Field(min_length=1)
    hash: str | None = ""
    circuit_hash: str | None = ""
    results: str | None = ""
    device_id: str | None = Field(default="", max_length=MAX_TEXT)
    shots: str | None = ""
    name: str | None = Field(default="", max_length=MAX_TEXT)
    status: JobStatus = JobStatus.DONE
    job_type: JobType = JobType.USER_LOCAL_JOB
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("results")
    @classmethod
    def _results_json(cls, v: str | None) -> str | None:
        return _json_text(v, "results")

    @field_validator("shots")
    @classmethod
    def _shots_json(cls, v: str | None) -> str | None:
        return _json_text(v, "shots")


class ServerJobSubmit(JobSubmit):
    """What the server accepts: like JobSubmit, but unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True)


class Job(BaseModel):
    """A job as the server returns it; extra fields and new enum values are kept.

    The whole shape, for library users and the tests; the sync itself reads
    only id, status and hash (``client.JobRef``), without loading pydantic.
    """

    model_config = ConfigDict(extra="allow")

    id: str
    user_id: int
    experiment_id: str
    status: str
    job_type: str
    creation_date: str
    hash: str
    backend_name: str
    name: str | None = None
    description: str | None = None
    device_id: str | None = "Haiqu OS"
    run_date: str | None = None
    finish_date: str | None = None
    logs: str | None = None
    quality: float | None = None
    info: dict[str, Any] | None = None
    time: float | None = None
    circuit_id: str | None = ""
    results: str | None = ""
    shot_local: str | None = ""
    metrics: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED
