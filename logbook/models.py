"""Pydantic models of the Haiqu Jobs API shapes (``api/openapi.yaml``).

Responses are read leniently: unknown fields are kept and a status or job type
we do not know yet is kept as a plain string, so a newer server never crashes
an older logbook.  Submissions are checked strictly, before anything is stored.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT = 200


class JobStatus(StrEnum):
    SUBMITTED = "Submitted"
    INITIALIZING = "Initializing"
    QUEUED = "Queued"
    VALIDATING = "Validating"
    RUNNING = "Running"
    CANCELLED = "Cancelled"
    DONE = "Done"
    ERROR = "Error"


class JobType(StrEnum):
    USER_LOCAL_JOB = "User local job"
    ANALYTICS = "Analytics"
    DEVICE_SPECIFIC_ANALYTICS = "Device specific analytics"
    DATA_LOADING = "Data Loading"
    RUN = "Run"
    STATE_COMPRESSION = "State Compression"
    TRANSPILATION = "Transpilation"
    VARIATIONAL = "Variational"
    PRETRAINING = "Pretraining"
    SKQD = "SKQD"


STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
JOB_TYPES: tuple[str, ...] = tuple(t.value for t in JobType)
UNFINISHED: frozenset[str] = frozenset(
    {"Submitted", "Initializing", "Queued", "Validating", "Running"}
)
TERMINAL: frozenset[str] = frozenset({"Cancelled", "Done", "Error"})


def reject_constant(name: str) -> Any:
    """NaN and Infinity: Python's json reads them, but they are not JSON."""
    raise ValueError(f"{name} is not JSON")


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
    """A job as the server returns it; extra fields and new enum values are kept."""

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
