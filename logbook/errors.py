"""Every error logbook raises on purpose.

The CLI turns each of these into one line on stderr and an exit code; the
library never prints.  Messages never contain the API key or a proxy
password (see ``logbook.redact``).

    LogbookError
    ├── InvalidJob            a job fails the API's model (exit 2)
    ├── InvalidFile           a result file cannot be read as jobs (exit 1)
    ├── BadInput              a bad argument: no such path, not an id (exit 2)
    ├── ConfigError           missing or bad configuration (exit 2)
    ├── StoreError            the store cannot be opened, read or written (exit 1)
    │   ├── StoreBusy         another process held the store for too long
    │   ├── StoreFull         the disk holding the store is full
    │   └── NotALogbookStore  another program's SQLite file: left unchanged (exit 2)
    ├── NotFound              no entry with that id (exit 1)
    ├── Conflict              one identity, other content (a relay answers 409)
    ├── Refused               the entry's state does not allow it (rm of a synced entry; exit 1)
    └── SyncError             a sync could not run at all
        ├── AuthError         the server refused the key: 401/403 (exit 3)
        ├── Unreachable       the endpoint could not be reached (exit 4)
        │   └── TrustError    its TLS certificate did not verify (exit 4)
        ├── Redirected        the endpoint answered with a redirect (exit 2)
        ├── WrongEndpoint     POST /jobs answered 404: no Jobs API at that URL (exit 2)
        ├── Interrupted       SIGINT/SIGTERM stopped the run (exit 130/143)
        └── RequestFailed     one request failed, with the client's ``Verdict``;
                              ``engine.policy`` decides what a run does next
"""

from __future__ import annotations

from enum import StrEnum


class LogbookError(Exception):
    """Base class: one clear, key-free message for the user."""

    exit_code = 1


class InvalidJob(LogbookError):
    """A job that does not match the API's JobSubmit model; nothing was stored."""

    exit_code = 2


class InvalidFile(LogbookError):
    """A result file that is not a job document, Qiskit result or JSON Lines."""


class BadInput(LogbookError):
    """An argument that cannot be used as given; nothing was changed."""

    exit_code = 2


class ConfigError(LogbookError):
    """Missing or malformed configuration (endpoint, key, config.toml)."""

    exit_code = 2


class StoreError(LogbookError):
    """The SQLite store cannot be opened, read or written."""


class StoreBusy(StoreError):
    """Another process kept the store locked longer than the busy timeout."""


class StoreFull(StoreError):
    """The disk holding the store is full (or a file size limit was reached)."""


class NotALogbookStore(StoreError):
    """The file is some other program's SQLite database; logbook changes nothing in it."""

    exit_code = 2


class NotFound(LogbookError):
    """No entry with the id the user gave."""


class Conflict(LogbookError):
    """A job whose ``(experiment_id, hash)`` is held with other content: never linked to it."""


class Refused(LogbookError):
    """What the user asked is not allowed in the entry's state (``rm`` of a synced entry);
    nothing was changed."""


class SyncError(LogbookError):
    """A sync run could not proceed."""


class AuthError(SyncError):
    """The server refused the API key (401/403); entries were left untouched."""

    exit_code = 3


class Unreachable(SyncError):
    """The endpoint could not be reached at all; nothing was changed."""

    exit_code = 4


class TrustError(Unreachable):
    """The endpoint's (or proxy's) TLS certificate did not verify; nothing was sent."""


class Redirected(SyncError):
    """An API route answered 3xx: logbook never re-sends a POST to another URL on its own."""

    exit_code = 2


class WrongEndpoint(SyncError):
    """``POST /jobs`` answered 404: the endpoint has no Jobs API there; entries were kept."""

    exit_code = 2


class Interrupted(SyncError):
    """SIGINT or SIGTERM stopped a run; what was answered is settled, ``report`` says what."""

    def __init__(self, message: str, *, signum: int, report: object = None) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.report = report


class Verdict(StrEnum):
    """What one failed request means for the job it carried: the client's one answer.

    The engine's policy (``engine.policy.decide``) maps each verdict to what a
    run does next; nothing else re-derives it from status codes or flags.
    """

    #: No connection was opened (DNS, refused, TLS handshake, a proxy that refused
    #: the CONNECT or asked for credentials): nothing reached the server.
    NOT_SENT = "not_sent"
    #: The request may have reached the server (a timeout or a reset after it was
    #: written, a 5xx to a POST, an unreadable 2xx, another job's answer): look it
    #: up before posting it again.
    MAYBE_SENT = "maybe_sent"
    #: The server answered "not now" and stored nothing (408, 429, a 5xx or an
    #: unusable answer to a GET, a 4xx to a look-up, which is no verdict on the job).
    RETRY_LATER = "retry_later"
    #: The server refused this job for good (400, 409, 413, 422, ...).
    REJECTED = "rejected"
    #: The server refused the key (401/403): stop, change nothing.
    STOP_AUTH = "stop_auth"
    #: An API route answered 3xx: a POST is never re-sent elsewhere on its own.
    STOP_REDIRECT = "stop_redirect"
    #: A TLS certificate did not verify: nothing was sent, nothing will be.
    STOP_TRUST = "stop_trust"
    #: ``POST /jobs`` answered 404: the route is not there, so the endpoint is wrong.
    STOP_ENDPOINT = "stop_endpoint"


class RequestFailed(SyncError):
    """One API request failed, with the client's ``verdict`` on what that means.

    Details the policy may read: ``status`` (the HTTP code, if any),
    ``retry_after`` (seconds the server asked for), ``timed_out`` (no answer
    within the deadline: many in a row make the endpoint unreachable) and
    ``location`` (where a redirect points).
    """

    def __init__(
        self,
        message: str,
        verdict: Verdict,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timed_out: bool = False,
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out
        self.location = location

    @property
    def maybe_sent(self) -> bool:
        """The server may hold the job: it is looked up before it is posted again."""
        return self.verdict is Verdict.MAYBE_SENT
