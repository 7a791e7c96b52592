"""Keeping the API key out of everything we print, log or store."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"


def mask(key: str | None) -> str:
    """A key as ``doctor`` shows it: enough to recognise, never enough to use."""
    if not key:
        return "(not set)"
    if len(key) < 12:
        return "*" * 8
    return f"{key[:2]}{'*' * 8}{key[-2:]}"


def key_forms(key: str) -> list[str]:
    """Every spelling of ``key`` that may show up in a URL, header or message."""
    forms = {key, quote(key, safe=""), quote_plus(key), quote(key), key.replace("+", " ")}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, key: str | None) -> str:
    """``text`` with every form of ``key`` replaced by ``[REDACTED]``."""
    if not key or not text:
        return text
    for form in key_forms(key):
        text = text.replace(form, REDACTED)
    return text
