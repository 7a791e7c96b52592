"""The API's vocabulary: job statuses, job types and limits (``api/openapi.yaml``).

No pydantic here, so the hot paths (import of 100,000 lines, ``status``) can
check a job without loading it; ``models`` builds the pydantic shapes on top.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

#: The API's limit on ``name`` and ``device_id``.
MAX_TEXT = 200
#: logbook's limit on ``experiment_id`` and ``hash``: both travel, percent-encoded,
#: in the lookup URL (``GET /experiments/{experiment_id}/jobs/{hash}``), and
#: servers refuse request lines over 8 KiB.  The API itself sets no limit.
MAX_ID = 256


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


#: The longest a retry is ever put off (a back-off, a Retry-After).  A retry time
#: further ahead than this was written under a clock that has since been set back:
#: it is due now, not in a year.
MAX_RETRY_DELAY = 300.0

#: logbook's one extension of the API: sent with a POST that follows a look-up (an
#: earlier send may have reached this endpoint, or an earlier incarnation of it).  A
#: relay then looks the job up upstream before it forwards it; the API ignores it.
REOFFER_HEADER = "x-logbook-reoffer"

#: The states of a local entry: waiting, being sent, on the server, refused for good.
STATES: tuple[str, ...] = ("pending", "sending", "synced", "rejected")
STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
JOB_TYPES: tuple[str, ...] = tuple(t.value for t in JobType)
UNFINISHED: frozenset[str] = frozenset(
    {"Submitted", "Initializing", "Queued", "Validating", "Running"}
)


def reject_constant(name: str) -> Any:
    """NaN and Infinity: Python's json reads them, but they are not JSON."""
    raise ValueError(f"{name} is not JSON")
