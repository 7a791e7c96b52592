"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
import re
from typing import Any

from logbook.store import ENTRY_KEYS

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def assert_no_traceback(*texts: str | bytes | None) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        assert "Traceback" not in (text or ""), text


def assert_one_line_error(stderr: str) -> None:
    """An error is one clear line on stderr, never a traceback."""
    assert_no_traceback(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "error" in lines[0].lower(), stderr


def assert_entry_shape(entry: dict[str, Any]) -> None:
    """Exactly the contract's keys, with the contract's types."""
    assert tuple(entry) == ENTRY_KEYS
    assert isinstance(entry["id"], str) and entry["id"].isdigit()
    assert isinstance(entry["metrics"], dict)
    for key in ("results", "shots"):
        if entry[key]:
            json.loads(entry[key])  # JSON text, as in the API
    assert ISO_UTC.match(entry["created_at"]), entry["created_at"]
    if entry["synced_at"] is not None:
        assert ISO_UTC.match(entry["synced_at"])
