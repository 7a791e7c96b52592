"""Keeping secrets (the API key, proxy passwords) out of everything logbook prints, logs or stores.

A secret can reach a message in many spellings: a server may echo the request
target with its own percent-escapes (lowercase hex, ``+`` for a space,
escaped twice), a ``repr`` escapes a trailing CR, and a reason cut to 300
characters may end half-way through the key.  So ``redact`` matches every
spelling, case-insensitively, and any prefix of ten or more characters of
each, and callers redact *before* they cut a message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
#: A prefix of a secret this long is redacted too (a message cut mid-key).
MIN_PREFIX = 10


def mask(key: str | None) -> str:
    """A key as ``doctor`` and ``config`` show it: enough to recognise, never enough to use."""
    if not key:
        return "(not set)"
    if len(key) < 12:
        return "*" * 8
    return f"{key[:2]}{'*' * 8}{key[-2:]}"


def key_forms(key: str) -> list[str]:
    """Every spelling of ``key`` that may show up in a URL, header, repr or message."""
    once = quote(key, safe="")
    forms = {
        key,
        once,
        quote_plus(key),
        quote(key),
        quote(once, safe=""),  # escaped twice
        quote_plus(quote_plus(key)),
        key.replace("+", " "),
        repr(key)[1:-1],
        json.dumps(key)[1:-1],
        key.encode("unicode_escape").decode("ascii", "replace"),
    }
    return sorted((f for f in forms if f), key=len, reverse=True)


@functools.lru_cache(maxsize=16)
def _needles(secrets: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``(form, shortest match)`` for every spelling of every secret, lowercased."""
    out = set()
    for secret in secrets:
        shortest = MIN_PREFIX if len(secret) >= MIN_PREFIX else None
        for form in key_forms(secret):
            low = form.lower()
            out.add((low, min(shortest, len(low)) if shortest else len(low)))
    return tuple(sorted(out, key=lambda n: len(n[0]), reverse=True))


def _spans(low: str, needles: Iterable[tuple[str, int]]) -> list[tuple[int, int]]:
    spans = []
    for form, shortest in needles:
        head = form[:shortest]
        at = low.find(head)
        while at != -1:
            n = shortest
            while n < len(form) and at + n < len(low) and low[at + n] == form[n]:
                n += 1
            spans.append((at, at + n))
            at = low.find(head, at + 1)
    return spans


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every spelling of each secret (and long prefixes of them) replaced.

    Case is ignored: over-redacting a look-alike costs nothing, and percent-escapes
    come in either case.
    """
    present = tuple(s for s in secrets if s)
    if not text or not present:
        return text
    spans = sorted(_spans(text.lower(), _needles(present)))
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        if end <= pos:
            continue
        out.append(text[pos:start] if start > pos else "")
        if start >= pos:
            out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def url_secrets(url: str | None) -> list[str]:
    """The password (and user) in a URL's userinfo: secrets to redact wherever the URL goes."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        return [s for s in (parts.password, parts.username) if s]
    except ValueError:
        return []


def show_url(url: str, *, keep_query: bool = False) -> str:
    """A URL fit to print: the password masked, the query left out unless asked for."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username:
        netloc = f"{parts.username}:****@{netloc}" if parts.password else f"****@{netloc}"
    query = parts.query if keep_query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
