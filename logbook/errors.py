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
    └── SyncError             a sync could not run at all
        ├── AuthError         the server refused the key: 401/403 (exit 3)
        ├── Unreachable       the endpoint could not be reached (exit 4)
        │   └── TrustError    its TLS certificate did not verify (exit 4)
        ├── Redirected        the endpoint answered with a redirect (exit 2)
        ├── Interrupted       SIGINT/SIGTERM stopped the run (exit 130/143)
        └── RequestFailed     one request failed; the sync engine decides what next
"""

from __future__ import annotations


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


class Interrupted(SyncError):
    """SIGINT or SIGTERM stopped a run; what was answered is settled, ``report`` says what."""

    def __init__(self, message: str, *, signum: int, report: object = None) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.report = report


class RequestFailed(SyncError):
    """One API request failed, classified for the sync engine.

    ``kind`` is ``auth`` (stop everything), ``redirect`` (stop: the endpoint
    moved to ``location``), ``reject`` (the server refused this job for good)
    or ``retry`` (try later).  ``maybe_sent`` is true when the server may have
    stored the job anyway, so it must be looked up before posting again.
    ``connect_failed``: no connection was opened (nothing was sent);
    ``trust_failed``: because a certificate did not verify; ``timed_out``: no
    answer within the deadline.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        connect_failed: bool = False,
        trust_failed: bool = False,
        timed_out: bool = False,
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent
        self.connect_failed = connect_failed
        self.trust_failed = trust_failed
        self.timed_out = timed_out
        self.location = location
