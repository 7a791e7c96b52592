"""A MockTransport Jobs API for the unit tests of the client and the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2

KEY = "k+ey/with=chars+/="
ENDPOINT = "http://api.test"
Handler = Callable[[httpx2.Request], Any]


def job_doc(
    body: dict[str, Any], job_id: str = "job-1", status: str = "Submitted"
) -> dict[str, Any]:
    """The Job the API answers for a POST of ``body``."""
    return {
        "id": job_id,
        "user_id": 1,
        "experiment_id": body.get("experiment_id", "e"),
        "status": status,
        "job_type": body.get("job_type", "User local job"),
        "creation_date": "2026-01-01T00:00:00Z",
        "hash": body.get("hash", "h"),
        "backend_name": "Haiqu OS",
    }


def answer(status: int, data: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers ``status`` with ``data`` (bytes as they are, else JSON)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if isinstance(data, bytes):
            return httpx2.Response(status, content=data, headers=headers)
        return httpx2.Response(status, json=data if data is not None else {}, headers=headers)

    return handler


def raising(exc_type: type[httpx2.TransportError]) -> Handler:
    """A handler whose transport fails with ``exc_type`` (its message holds the URL: the key)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise exc_type(f"boom {request.url}", request=request)

    return handler
