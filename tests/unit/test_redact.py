"""``logbook.redact``: the key never survives in any spelling, whole or cut.

The spellings are written out here (not taken from logbook), and a leak is
checked with ``support.key_forms`` plus every 10-character run of each
spelling: a message cut half-way through the key must not keep a usable
piece of it either.  The last tests drive the same keys through the real
message-building paths of ``ApiClient``.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import assert_no_key, key_forms

from logbook.client import ApiClient
from logbook.config import Network
from logbook.errors import RequestFailed, Verdict
from logbook.redact import REDACTED, mask, redact, show_url, url_secrets

KEY = "k+ey/with=chars+/="
LONG_KEY = "Ab+Cd/Ef=Gh+Ij/Kl=Mn+Op/Qr=St~Uv!Wx*Yz'(01)"
MIN_RUN = 10
KEYS = st.text(
    alphabet=string.ascii_letters + string.digits + "+/=-_.~!*'()", min_size=12, max_size=60
)


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def spellings(key: str) -> dict[str, str]:
    """Every spelling of ``key`` a message may carry (as it appears in the message)."""
    once = quote(key, safe="")
    twice = quote(once, safe="")
    return {
        "raw": key,
        "percent-upper": once,
        "percent-lower": _lower_escapes(once),
        "quote-keeping-slash": quote(key),
        "quote_plus": quote_plus(key),
        "plus-as-space": key.replace("+", " "),
        "double-encoded": twice,
        "double-encoded-lower": _lower_escapes(twice),
        "double-quote_plus": quote_plus(quote_plus(key)),
        "repr": repr(key + "\r"),
        "json": json.dumps(key),
        "json-ascii-CR": json.dumps(key + "\r"),
    }


def _runs(form: str) -> set[str]:
    """Every run of MIN_RUN characters of ``form`` (lowercased), or the whole if shorter."""
    low = form.lower()
    if len(low) < MIN_RUN:
        return {low} if low else set()
    return {low[i : i + MIN_RUN] for i in range(len(low) - MIN_RUN + 1)}


def pieces(key: str) -> set[str]:
    """What must never survive: MIN_RUN-character runs of support.key_forms and our spellings."""
    forms = set(key_forms(key)) | {s.strip("'\"") for s in spellings(key).values()}
    out: set[str] = set()
    for form in forms:
        if len(form) >= MIN_RUN:
            out |= _runs(form)
    return out


def leaks(text: str, key: str, context: str = "") -> list[str]:
    """Runs of the key found in ``text`` (ignoring those that are part of ``context`` itself)."""
    low, ctx = text.lower(), context.lower()
    return sorted(p for p in pieces(key) if p in low and p not in ctx)


def assert_clean(text: str, key: str, context: str = "", where: str = "") -> None:
    found = leaks(text, key, context)
    assert not found, f"{where}: the key leaked as {found[:3]} in {text!r}"


def message(enc: str) -> tuple[str, str]:
    """A message carrying ``enc`` the way a server echo does, and its text without it."""
    head, tail = "POST /jobs?HAIQU_API_KEY=", " HTTP/1.1: 500 cannot handle this request"
    return head + enc + tail, head + tail


# --- fixed keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, LONG_KEY, "plainalphanumerickey0123456789"])
@pytest.mark.parametrize("kind", list(spellings(KEY)))
def test_every_spelling_is_removed(key: str, kind: str) -> None:
    enc = spellings(key)[kind]
    text, context = message(enc)
    out = redact(text, key)
    assert REDACTED in out
    assert_clean(out, key, context, kind)
    assert_no_key(out, key, kind)
    assert out.startswith("POST /jobs?HAIQU_API_KEY=") and out.endswith(
        "cannot handle this request"
    )


def test_percent_escapes_in_either_case_and_mixed() -> None:
    once = quote(KEY, safe="")
    mixed = "".join(
        c.lower() if i % 2 else c for i, c in enumerate(once)
    )  # %2B, %2f, ... alternating
    for enc in (once, once.lower(), once.upper(), mixed):
        assert_clean(redact(f"target={enc}&x=1", KEY), KEY, "target=&x=1", enc)


def test_repr_of_a_key_with_a_trailing_cr() -> None:
    """A key read from a Windows file keeps its CR; its repr escapes it."""
    text = f"bad header value {repr(KEY + chr(13))} in request"
    assert "\\r" in text
    out = redact(text, KEY)
    assert_clean(out, KEY, "bad header value  in request")
    assert KEY not in out


def test_json_escaped_key() -> None:
    key = 'ab"cd\\ef/gh+ij=kl\r'
    text = json.dumps({"detail": f"bad key {key}"})
    out = redact(text, key)
    assert_clean(out, key, '{"detail": "bad key "}')
    assert_no_key(json.loads(out)["detail"], key, "the decoded detail")


def test_several_secrets_and_overlapping_spellings() -> None:
    other = "proxy-password-0123456789"
    text = f"{KEY} {quote(KEY, safe='')} {other} {quote_plus(KEY)}{KEY}"
    out = redact(text, KEY, other)
    assert_clean(out, KEY, "   ")
    assert_clean(out, other, "   ")
    assert out.count(REDACTED) >= 4


def test_nothing_to_hide_changes_nothing() -> None:
    assert redact("plain text", KEY) == "plain text"
    assert redact("", KEY) == ""
    assert redact("k+ey/with", None) == "k+ey/with"
    assert redact(f"a {KEY} b") == f"a {KEY} b"  # no secret given


@pytest.mark.parametrize("kind", list(spellings(LONG_KEY)))
def test_a_300_char_cut_half_way_through_the_key_leaks_no_prefix(kind: str) -> None:
    """The reason is cut to 300 characters; the cut may land inside the key."""
    enc = spellings(LONG_KEY)[kind]
    for inside in range(1, len(enc)):
        head = "x" * (300 - inside)
        cut = (head + enc + " trailing words")[:300]
        assert len(cut) == 300 and cut.endswith(enc[:inside])
        assert_clean(redact(cut, LONG_KEY), LONG_KEY, head, f"{kind} cut after {inside}")


def test_mask_and_show_url() -> None:
    assert mask(None) == "(not set)" and mask("") == "(not set)"
    assert mask("short") == "********"
    assert mask(KEY) == "k+********/="
    assert_clean(mask(LONG_KEY), LONG_KEY)
    shown = show_url(
        f"http://user:{quote(KEY, safe='')}@proxy.example:3128/path?HAIQU_API_KEY={quote(KEY)}#f"
    )
    assert shown == "http://user:****@proxy.example:3128/path"
    assert show_url("http://h:99999999/") == "(an invalid URL)"


# --- the property: random keys, every spelling, every cut ---------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEYS)
def test_random_keys_in_every_spelling_and_every_cut_never_leave_ten_chars(key: str) -> None:
    for kind, enc in spellings(key).items():
        text, context = message(enc)
        assert_clean(redact(text, key), key, context, kind)
        for cut in range(len(text) + 1):
            part = text[:cut]
            assert_clean(redact(part, key), key, context, f"{kind} cut at {cut}")


# --- the real message-building paths of ApiClient ----------------------------------------


def _echoes(request: httpx2.Request) -> list[str]:
    """The request target as servers echo it: raw, lower-cased escapes, decoded, re-encoded."""
    target = request.url.raw_path.decode("ascii")
    key = request.url.params.get("HAIQU_API_KEY", "")
    return [
        f"{request.method} {request.url}",
        target,
        _lower_escapes(target),
        unquote(target),
        quote(target, safe=""),  # escaped twice
        f"HAIQU_API_KEY={quote_plus(key)}",
        f"HAIQU_API_KEY={key.replace('+', ' ')}",
        repr(key + "\r"),
    ]


def _respond(mode: str, pad: int) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        echoes = _echoes(request)
        if mode == "echo-500":
            return httpx2.Response(500, text="cannot handle: " + " | ".join(echoes))
        if mode == "echo-500-json":
            return httpx2.Response(500, json={"detail": echoes})
        if mode == "detail-422":
            # padded so that the 300-character cut falls ``pad`` characters into the key
            head = "x" * (300 - len("POST /jobs?HAIQU_API_KEY=") - pad)
            return httpx2.Response(422, json={"detail": f"{head}{echoes[0].split(' ', 1)[1]}"})
        if mode == "detail-422-list":
            head = "y" * (290 - pad)
            detail = [{"loc": ["body", "hash"], "msg": f"{head}{e}"} for e in echoes]
            return httpx2.Response(422, json={"detail": detail})
        if mode == "text-300":
            return httpx2.Response(
                400, text=("z" * (300 - len("GET ") - pad)) + echoes[0].split(" ", 1)[1]
            )
        if mode == "redirect":
            query = request.url.query.decode("ascii")
            return httpx2.Response(
                307,
                headers={"Location": f"http://other.example/jobs?{query}&again={query}"},
                text=echoes[0],
            )
        if mode == "redirect-relative":
            return httpx2.Response(302, headers={"Location": echoes[1]})
        if mode == "redirect-in-path":
            return httpx2.Response(301, headers={"Location": f"/moved/{echoes[1]}"})
        if mode == "connect-error":
            raise httpx2.ConnectError(f"cannot connect to {request.url}", request=request)
        if mode == "read-error":
            raise httpx2.ReadError(f"lost {echoes[0]} ({echoes[2]})", request=request)
        if mode == "timeout":
            raise httpx2.ReadTimeout(f"timed out on {request.url}", request=request)
        raise AssertionError(mode)

    return handler


MODES = [
    "echo-500", "echo-500-json", "detail-422", "detail-422-list", "text-300", "redirect",
    "redirect-relative", "redirect-in-path", "connect-error", "read-error", "timeout",
]  # fmt: skip


def _failures(key: str, mode: str, pad: int, auth: str = "query") -> list[RequestFailed]:
    async def go() -> list[RequestFailed]:
        out: list[RequestFailed] = []
        transport = httpx2.MockTransport(_respond(mode, pad))
        async with ApiClient("http://api.test", key, auth=auth, transport=transport) as client:
            calls: list[Any] = [
                client.submit({"experiment_id": "e", "hash": "h1"}),
                client.find_by_hash("e", "h1"),
                client.get_job("srv-1"),
            ]
            for coro in calls:
                try:
                    await coro
                except RequestFailed as err:
                    out.append(err)
        return out

    return asyncio.run(go())


def _failure_texts(err: RequestFailed) -> list[str]:
    return [str(err), repr(err), repr(err.args), err.location or ""]


@pytest.mark.parametrize("mode", MODES)
def test_client_failures_never_hold_the_key(mode: str) -> None:
    for key in (KEY, LONG_KEY):
        for pad in range(0, 40, 3):
            errs = _failures(key, mode, pad)
            assert len(errs) == 3, (mode, errs)  # every call failed, and was classified
            for err in errs:
                for text in _failure_texts(err):
                    assert_clean(text, key, where=f"{mode} pad {pad}")
                    assert_no_key(text, key, f"{mode} pad {pad}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=KEYS,
    mode=st.sampled_from(MODES),
    pad=st.integers(min_value=0, max_value=200),
)
def test_random_keys_through_the_client_never_leak(key: str, mode: str, pad: int) -> None:
    for err in _failures(key, mode, pad):
        for text in _failure_texts(err):
            assert_clean(text, key, where=f"{mode} pad {pad}")


def test_the_redirect_location_is_shown_without_its_query() -> None:
    (post, lookup, get) = _failures(KEY, "redirect", 0)
    for err in (post, lookup, get):
        assert err.verdict is Verdict.STOP_REDIRECT
    # The POST's Location ends in its own route: what is left is the base URL to use.
    assert post.location == "http://other.example"
    assert lookup.location == get.location == "http://other.example/jobs"


def test_header_auth_errors_never_hold_the_key() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        sent = request.headers["authorization"]
        return httpx2.Response(500, text=f"bad authorization header {sent!r} / {quote(sent)}")

    async def go() -> RequestFailed:
        async with ApiClient(
            "http://api.test", LONG_KEY, auth="header", transport=httpx2.MockTransport(handler)
        ) as client:
            with pytest.raises(RequestFailed) as info:
                await client.submit({"experiment_id": "e", "hash": "h1"})
            return info.value

    err = asyncio.run(go())
    assert "HTTP 500" in str(err)
    for text in _failure_texts(err):
        assert_clean(text, LONG_KEY)


# --- spellings of other encoders ------------------------------------------------------------

OTHER_ENCODERS: dict[str, Callable[[str], str]] = {
    # JavaScript's encodeURIComponent (a Node.js gateway re-encoding the decoded query)
    "encodeURIComponent": lambda k: quote(k, safe="-_.!~*'()"),
    # Java's URLEncoder.encode: '~' as %7E, '*' kept, space as '+'
    "java-URLEncoder": lambda k: quote_plus(k, safe="*").replace("~", "%7E"),
    # a strict encoder that escapes every non-alphanumeric character ('~' as %7E, '*' as %2A)
    "encode-everything": lambda k: "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in k),
    # PHP's json_encode escapes '/' as '\/'
    "php-json": lambda k: k.replace("/", "\\/"),
}


@pytest.mark.parametrize("encoder", list(OTHER_ENCODERS))
def test_spellings_of_other_encoders_are_removed(encoder: str) -> None:
    enc = OTHER_ENCODERS[encoder](LONG_KEY)
    text, context = message(enc)
    assert_clean(redact(text, LONG_KEY), LONG_KEY, context, encoder)


def _chain(err: BaseException) -> list[BaseException]:
    """The exception and everything it chains to, suppressed (``from None``) or not."""
    out: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not seen for seen in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


@pytest.mark.parametrize("mode", ["connect-error", "read-error", "timeout"])
def test_the_whole_exception_chain_holds_no_key(mode: str) -> None:
    for err in _failures(KEY, mode, 0):
        for e in _chain(err):
            texts = [str(e), repr(e), repr(e.args)]
            request = getattr(e, "_request", None)
            if request is not None:
                texts += [str(request.url), repr(dict(request.headers))]
            for text in texts:
                assert_clean(text, KEY, where=f"{mode}: {type(e).__name__} in the chain")


# --- every window, the end of the key included ------------------------------------------------


def _plain_spellings(key: str) -> dict[str, str]:
    """Spellings made only of the key's own characters, escaped (no quotes or CR around)."""
    once = quote(key, safe="")
    return {
        "raw": key, "percent": once, "percent-lower": _lower_escapes(once),
        "quote-keeping-slash": quote(key), "quote_plus": quote_plus(key),
        "plus-as-space": key.replace("+", " "), "double-encoded": quote(once, safe=""),
        "double-quote_plus": quote_plus(quote_plus(key)), "json": json.dumps(key)[1:-1],
    }  # fmt: skip


@pytest.mark.parametrize("key", [KEY, LONG_KEY, "plainalphanumerickey0123456789"])
def test_every_ten_character_window_and_the_end_of_the_key_are_removed(key: str) -> None:
    """A message may hold any piece of the key: its last ten characters (a reason cut
    from the front), or the key at the very end of the text (nothing after it)."""
    for kind, enc in _plain_spellings(key).items():
        assert redact(f"<<{enc}>>", key) == f"<<{REDACTED}>>", kind
        assert redact(f"ends with {enc}", key) == f"ends with {REDACTED}", kind
        assert redact(enc, key) == REDACTED, kind
        for i in range(len(enc) - MIN_RUN + 1):
            window = enc[i : i + MIN_RUN]
            assert redact(f"<<{window}>>", key) == f"<<{REDACTED}>>", (kind, i, window)
        for n in range(MIN_RUN, len(enc) + 1):  # every suffix, at the end of the text too
            assert redact(f"<<{enc[-n:]}", key) == f"<<{REDACTED}", (kind, n)
    # The last character goes with the rest: nothing of the key is left after the mark.
    out = redact(f"key={key};", key)
    assert out == f"key={REDACTED};" and not out.endswith(key[-1] + ";")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEYS)
def test_random_keys_lose_every_window_and_their_last_character(key: str) -> None:
    for kind, enc in _plain_spellings(key).items():
        assert redact(f"<<{enc}>>", key) == f"<<{REDACTED}>>", kind
        assert redact(f"<<{enc[-MIN_RUN:]}", key) == f"<<{REDACTED}", kind


# --- a proxy password with a space ----------------------------------------------------------

PROXY_PASSWORD = "correct horse battery staple"


def _password_spellings(password: str) -> dict[str, str]:
    once = quote(password, safe="")
    return {
        "decoded": password, "quote": once, "quote-keeping-slash": quote(password),
        "quote_plus": quote_plus(password), "double-encoded": quote(once, safe=""),
        "double-quote_plus": quote_plus(quote_plus(password)),
    }  # fmt: skip


@pytest.mark.parametrize("written", ["quote", "quote_plus"])
def test_a_proxy_password_with_a_space_is_removed_in_every_spelling(written: str) -> None:
    """The user writes the password in the proxy URL with ``quote`` (%20) or ``quote_plus``
    (+); a library may show it decoded or encoded either way: none survives, nor any ten
    characters of one."""
    encode = quote if written == "quote" else quote_plus
    url = f"http://lab-user:{encode(PROXY_PASSWORD, safe='')}@127.0.0.1:3128"
    secrets = url_secrets(url)
    for kind, enc in _password_spellings(PROXY_PASSWORD).items():
        assert redact(f"<<{enc}>>", *secrets) == f"<<{REDACTED}>>", kind
        for i in range(len(enc) - MIN_RUN + 1):
            window = enc[i : i + MIN_RUN]
            assert redact(f"<<{window}>>", *secrets) == f"<<{REDACTED}>>", (kind, window)


@pytest.mark.parametrize("written", ["quote", "quote_plus"])
def test_the_client_removes_every_spelling_of_a_proxy_password_with_a_space(
    written: str,
) -> None:
    encode = quote if written == "quote" else quote_plus
    proxy = f"http://lab-user:{encode(PROXY_PASSWORD, safe='')}@127.0.0.1:3128"
    said = " | ".join(_password_spellings(PROXY_PASSWORD).values())

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError(f"proxy refused lab-user: {said}", request=request)

    async def go() -> RequestFailed:
        async with ApiClient(
            "http://api.test", KEY, network=Network(proxy=proxy),
            transport=httpx2.MockTransport(handler),
        ) as client:  # fmt: skip
            with pytest.raises(RequestFailed) as info:
                await client.submit({"experiment_id": "e", "hash": "h1"})
            return info.value

    err = asyncio.run(go())
    for text in _failure_texts(err):
        for kind, enc in _password_spellings(PROXY_PASSWORD).items():
            assert_clean(text, enc, where=f"{written}: {kind}")
        assert "horse" not in text and "battery" not in text, text


def test_relay_keys_are_redacted_by_their_shape_in_any_text() -> None:
    """A relay knows only its keys' hashes, so a key a client presented (a live one, a
    revoked one, a mistyped one) is found by its ``lbr_`` shape, in any spelling."""
    key = "lbr_3TnotiOS3MKPEvTeZH5DMueQE4IJybPD2ubTcRvdeHQ"
    for text in (
        f"b'GET /jobs/1?HAIQU_API_KEY={key} HTTP/1.1 x'",
        f"Authorization: {key}\\x7f",
        f"HAIQU_API_KEY={quote(key, safe='')}".replace("_", "%5F"),
        "Authorization: lbr_not-a-key",
    ):
        out = redact(text)
        assert "lbr_" not in out.lower() and "lbr%5f" not in out.lower(), out
        assert_no_key(out, key)
        assert REDACTED in out


def test_the_key_a_request_presented_is_redacted_from_what_is_logged_about_it() -> None:
    from logbook.cli.output import redacted
    from logbook.redact import presented

    token = presented.set(("hunter2-not-a-relay-key",))
    try:
        assert "hunter2" not in redacted("401 for hunter2-not-a-relay-key from 10.0.0.7")
    finally:
        presented.reset(token)
    assert "hunter2" in redacted("hunter2 is not a secret outside that request")
