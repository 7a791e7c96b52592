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
import re
from contextvars import ContextVar
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
#: A prefix of a secret this long is redacted too (a message cut mid-key).
MIN_PREFIX = 10
#: A relay key, however a client spelled it (``lbr_`` then URL-safe base64), wherever it
#: shows: a relay knows only its keys' hashes, so it finds them by their shape.
RELAY_KEY = re.compile(r"lbr(?:_|%5f)[A-Za-z0-9_%-]+", re.IGNORECASE)
#: The key the request being handled presented (a server sets it): redacted from
#: anything logged about that request, whether or not it is a key the server knows.
presented: ContextVar[tuple[str, ...]] = ContextVar("presented", default=())


def mask(key: str | None) -> str:
    """A key as ``doctor`` and ``config`` show it: enough to recognise, never enough to use."""
    if not key:
        return "(not set)"
    if len(key) < 12:
        return "*" * 8
    return f"{key[:2]}{'*' * 8}{key[-2:]}"


#: The ``safe`` sets URL encoders use: Python's, JavaScript's encodeURIComponent,
#: RFC 3986's unreserved characters, and none at all.
_SAFE_SETS = ("", "/", "-_.!~*'()", "-_.~")


def key_forms(key: str) -> list[str]:
    """Every spelling of ``key`` that may show up in a URL, header, repr or message."""
    forms = {key, key.replace("+", " "), repr(key)[1:-1], json.dumps(key)[1:-1]}
    forms.add(json.dumps(key)[1:-1].replace("/", "\\/"))  # JSON with escaped slashes (PHP)
    forms.add(key.encode("unicode_escape").decode("ascii", "replace"))
    for safe in _SAFE_SETS:
        for once in (quote(key, safe=safe), quote_plus(key, safe=safe)):
            forms.update({once, once.replace("~", "%7E"), quote(once, safe=""), quote_plus(once)})
    return sorted((f for f in forms if f), key=len, reverse=True)


@functools.lru_cache(maxsize=16)
def _needles(secrets: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """Whole spellings of short secrets, and every ``MIN_PREFIX``-character window of long ones."""
    whole: set[str] = set()
    windows: set[str] = set()
    for secret in secrets:
        for form in key_forms(secret):
            low = form.lower()
            if len(secret) < MIN_PREFIX or len(low) < MIN_PREFIX:
                whole.add(low)
            else:
                windows.update(low[i : i + MIN_PREFIX] for i in range(len(low) - MIN_PREFIX + 1))
    return frozenset(whole), frozenset(windows)


def _spans(low: str, whole: frozenset[str], windows: frozenset[str]) -> list[tuple[int, int]]:
    """Where a secret shows: a whole short spelling, or any run of text whose every
    ``MIN_PREFIX`` characters belong to some spelling (so a prefix, a suffix, or a
    spelling that changes half-way through, are all caught)."""
    spans = []
    for form in whole:
        at = low.find(form)
        while at != -1:
            end = at + len(form)
            # A short secret counts only on its own, not inside a word ("k" in "networks").
            if not _alnum(low, at - 1) and not _alnum(low, end):
                spans.append((at, end))
            at = low.find(form, at + 1)
    if windows:
        for i in range(len(low) - MIN_PREFIX + 1):
            if low[i : i + MIN_PREFIX] in windows:
                spans.append((i, i + MIN_PREFIX))
    return spans


def _alnum(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isalnum()


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every spelling of each secret (and any ten characters of one) replaced,
    and every relay key.

    Case is ignored: over-redacting a look-alike costs nothing, and percent-escapes
    come in either case.
    """
    if text and "lbr" in text.lower():
        text = RELAY_KEY.sub(REDACTED, text)
    present = tuple(s for s in secrets if s)
    if not text or not present:
        return text
    spans = sorted(_spans(text.lower(), *_needles(present)))
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        if end <= pos:
            continue
        if start >= pos:
            out.append(text[pos:start])
            out.append(REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def url_secrets(url: str | None) -> list[str]:
    """The password (and user) in a URL's userinfo: secrets to redact wherever the URL goes.

    The password as written, and decoded both ways (``%20`` and ``+`` as a space): a
    library shows it decoded, and each decoded form brings its own spellings.
    """
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    password = parts.password or ""
    decoded = [unquote(password), unquote_plus(password)] if password else []
    return list(dict.fromkeys(s for s in (password, *decoded, parts.username) if s))


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
