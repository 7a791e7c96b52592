"""Fault injection settings of the emulator.

One ``Faults`` object is live in the server.  It is set from the command line
at start and changed at run time through ``POST /_admin/faults``, so a single
test can make the server misbehave half-way through a sync.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from logbook.server import ROUTE_POST_JOBS, ROUTES

ALL_ROUTES = "*"


class FaultError(ValueError):
    """A fault setting that is unknown or has the wrong type or range."""


def _default_routes() -> list[str]:
    return [ROUTE_POST_JOBS]


@dataclass
class Faults:
    """What goes wrong, and where.

    ``latency_ms`` and ``unauthorized`` apply to every API route; all the other
    faults apply only to the routes in ``routes`` (default: ``POST /jobs``;
    ``"*"`` means every API route).  Admin routes never see faults.
    """

    latency_ms: float = 0.0
    """Added to every API request before it is handled."""
    unauthorized: bool = False
    """Answer 401 to everything, whatever key is sent."""
    error_rate: float = 0.0
    """Probability (0..1) that a request is answered with ``error_status``."""
    error_status: int = 500
    fail_next: int = 0
    """The next N requests fail with ``fail_status`` (counts down)."""
    fail_status: int = 503
    rate_limit_next: int = 0
    """The next N requests get 429 (counts down)."""
    rate_limit_rate: float = 0.0
    """Probability (0..1) that a request gets 429."""
    rate_limit_per_s: float = 0.0
    """Answer 429 (Retry-After: until a request may pass) above this rate, on every API route."""
    retry_after: float | str | None = 1
    """Retry-After of every injected 429: seconds, a verbatim string, or None for no header."""
    retry_after_format: str = "seconds"
    """"seconds", or "date": an HTTP date ``retry_after`` seconds from now."""
    drop_rate: float = 0.0
    """Probability that the job is stored, then the connection is closed without a response."""
    bad_json_rate: float = 0.0
    """Probability of a 200 whose body is not valid JSON (the job is stored)."""
    trickle_seconds: float = 0.0
    """Send each response body slowly, spread over this many seconds."""
    redirect_to: str = ""
    """Answer every request with ``redirect_status`` and this Location (nothing is stored)."""
    redirect_status: int = 307
    echo_rate: float = 0.0
    """Probability of a 500 whose body echoes the request target (query and key included)."""
    wrong_job_rate: float = 0.0
    """Probability that a lookup by hash answers 200 with a job of another hash and experiment."""
    clock_offset: float = 0.0
    """The server's clock runs this many seconds off (negative: behind): its ``Date``
    header and its Retry-After dates."""
    routes: list[str] = field(default_factory=_default_routes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data, as ``GET /_admin/faults`` shows them."""
        return dataclasses.asdict(self)

    def applies_to(self, route: str) -> bool:
        """Whether the route-targeted faults hit this route."""
        return ALL_ROUTES in self.routes or route in self.routes

    def update(self, changes: dict[str, Any]) -> None:
        """Override some fields; all are checked before any is changed."""
        checked = {name: _check(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)


_RATES = {
    "error_rate",
    "rate_limit_rate",
    "drop_rate",
    "bad_json_rate",
    "echo_rate",
    "wrong_job_rate",
}
_COUNTS = {"fail_next", "rate_limit_next"}
_STATUSES = {"error_status", "fail_status", "redirect_status"}
_SECONDS = {"latency_ms", "trickle_seconds", "rate_limit_per_s"}
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{name} must be a number, not {value!r}")
    return float(value)


def _check(name: str, value: Any) -> Any:
    """Return the value to store for one field, or raise FaultError."""
    if name not in FIELDS:
        raise FaultError(f"unknown fault field {name!r}; known: {', '.join(FIELDS)}")
    if name in _RATES:
        rate = _number(name, value)
        if not 0.0 <= rate <= 1.0:
            raise FaultError(f"{name} must be between 0 and 1")
        return rate
    if name in _SECONDS:
        amount = _number(name, value)
        if amount < 0:
            raise FaultError(f"{name} must not be negative")
        return amount
    if name in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FaultError(f"{name} must be a non-negative integer")
        return value
    if name in _STATUSES:
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            raise FaultError(f"{name} must be an HTTP status code (100..599)")
        return value
    if name == "clock_offset":
        offset = _number(name, value)
        if not math.isfinite(offset) or abs(offset) > 1e9:
            raise FaultError("clock_offset must be a number of seconds (within 1e9)")
        return offset
    if name == "unauthorized":
        if not isinstance(value, bool):
            raise FaultError("unauthorized must be true or false")
        return value
    if name == "retry_after":
        if value is None or isinstance(value, str):
            return value
        amount = _number(name, value)
        if amount < 0:
            raise FaultError("retry_after must not be negative")
        return int(amount) if amount == int(amount) else amount
    if name == "redirect_to":
        if not isinstance(value, str):
            raise FaultError("redirect_to must be a URL (or empty)")
        return value
    if name == "retry_after_format":
        if value not in ("seconds", "date"):
            raise FaultError('retry_after_format must be "seconds" or "date"')
        return value
    # routes
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise FaultError("routes must be a list of route names")
    for route in value:
        if route != ALL_ROUTES and route not in ROUTES:
            raise FaultError(f"unknown route {route!r}; known: {', '.join(ROUTES)} or '*'")
    return list(value)
