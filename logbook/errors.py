"""Every error logbook raises on purpose.

The CLI turns each of these into one line on stderr and an exit code; the
library never prints.  Messages never contain the API key (see
``logbook.client.redact``).

    LogbookError
    ├── InvalidJob            a job fails the API's model (exit 2)
    ├── InvalidFile           a result file cannot be read as jobs (exit 1)
    ├── ConfigError           missing or bad configuration (exit 2)
    ├── StoreError            the store cannot be opened, read or written (exit 1)
    │   └── StoreBusy         another process held the store for too long
    ├── NotFound              no entry with that id (exit 1)
    └── SyncError             a sync could not run at all
        ├── AuthError         the server refused the key: 401/403 (exit 3)
        ├── Unreachable       the endpoint could not be reached (exit 4)
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


class ConfigError(LogbookError):
    """Missing or malformed configuration (endpoint, key, config.toml)."""

    exit_code = 2


class StoreError(LogbookError):
    """The SQLite store cannot be opened, read or written."""


class StoreBusy(StoreError):
    """Another process kept the store locked longer than the busy timeout."""


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


class RequestFailed(SyncError):
    """One API request failed, classified for the sync engine.

    ``kind`` is ``auth`` (stop everything), ``reject`` (the server refused this
    job for good) or ``retry`` (try later).  ``maybe_sent`` is true when the
    server may have stored the job anyway, so it must be looked up before
    posting again.
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
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent
        self.connect_failed = connect_failed
