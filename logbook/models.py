"""Pydantic models of the Haiqu Jobs API shapes (``openapi.yaml`` in the emulator).

``JobSubmit`` and ``ServerJobSubmit`` are built from ``jobs.JOB``, the one
declaration of a job's fields: the first as strict as logbook's own checks
(for library users), the second as lenient as the API's server (the emulator
and the relay validate with it and answer 422 in FastAPI's shape).  ``Job``
is what the server returns (``jobs.JobDocument``); it is read leniently, so a newer server never
breaks an older logbook.  The sync itself reads only id, status and hash
(``client.JobRef``), without pydantic.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from .jobs import JOB, JobDocument, JobField
from .vocab import (  # noqa: F401  (re-exported: the API's vocabulary)
    JOB_TYPES,
    MAX_ID,
    MAX_TEXT,
    STATUSES,
    UNFINISHED,
    JobStatus,
    JobType,
    reject_constant,
)

_ENUMS: dict[str, Any] = {"status": JobStatus, "job_type": JobType}


def _json_text(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return value
    try:
        json.loads(value, parse_constant=reject_constant)
    except ValueError:
        raise ValueError(f"{field} must be JSON text") from None
    return value


def _field(f: JobField, strict: bool) -> tuple[Any, Any]:
    """The pydantic annotation and default of one declared job field.

    ``strict``: logbook's own limits too (ids of at most ``MAX_ID`` characters,
    which the API's server does not enforce).
    """
    if f.kind == "enum":
        return _ENUMS[f.name], f.default  # the value: use_enum_values does not touch defaults
    if f.kind == "object":
        return dict[str, Any], Field(default_factory=dict)
    limits = {"short": MAX_TEXT, "id": MAX_ID} if strict else {"short": MAX_TEXT}
    limit = limits.get(f.kind)
    if f.required:
        return str, Field(min_length=1, max_length=limit)
    return str | None, Field(default=f.default, max_length=limit)


class _Checks(BaseModel):
    """JSON text where the API wants JSON text; an empty enum means its default (servers)."""

    @field_validator("results", "shots", check_fields=False)
    @classmethod
    def _json(cls, v: str | None, info: Any) -> str | None:
        return _json_text(v, info.field_name)


class _ServerChecks(_Checks):
    @field_validator("status", "job_type", mode="before", check_fields=False)
    @classmethod
    def _empty_is_default(cls, value: Any, info: Any) -> Any:
        if value == "":
            return cls.model_fields[info.field_name].default
        return value


_FIELDS: dict[str, Any] = {f.name: _field(f, strict=True) for f in JOB}
_SERVER_FIELDS: dict[str, Any] = {f.name: _field(f, strict=False) for f in JOB}

#: The ``POST /jobs`` body, checked as strictly as logbook checks it.
JobSubmit: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "JobSubmit",
    __base__=_Checks,
    __config__=None,
    **_FIELDS,
)
JobSubmit.model_config = ConfigDict(extra="forbid", use_enum_values=True)
JobSubmit.model_rebuild(force=True)

#: What the API's server accepts: unknown fields ignored, "" status/job type = default.
ServerJobSubmit: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ServerJobSubmit", __base__=_ServerChecks, **_SERVER_FIELDS
)
ServerJobSubmit.model_config = ConfigDict(extra="ignore", use_enum_values=True)
ServerJobSubmit.model_rebuild(force=True)


class _JobBase(BaseModel):
    """A job as the server returns it; extra fields and new enum values are kept."""

    model_config = ConfigDict(extra="allow")

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED  # type: ignore[attr-defined]


def _document_field(f: Any, hints: dict[str, Any]) -> tuple[Any, Any]:
    return hints[f.name], (... if f.default is MISSING else f.default)


_DOC_HINTS = get_type_hints(JobDocument)
#: The Job the server returns, read leniently, from ``jobs.JobDocument`` (declared once).
Job: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Job",
    __base__=_JobBase,
    **{f.name: _document_field(f, _DOC_HINTS) for f in fields(JobDocument)},
)
