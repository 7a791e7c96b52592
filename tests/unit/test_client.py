"""The API client without a network: every answer classified, the key kept off everything.

Requests go to an ``httpx2.MockTransport``; the handler sees the request as it
would leave for the wire (the key already added below httpx2).
"""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import formatdate
from typing import Any

import httpx2
import pytest
from support import assert_no_key

from logbook.client import GONE, RETRY_AFTER_CAP, ApiClient, parse_retry_after, remote_status
from logbook.errors import RequestFailed, Verdict
from logbook.vocab import STATUSES

from .apimock import ENDPOINT, KEY, Handler, answer, job_doc, raising

BODY = {"experiment_id": "e", "hash": "h1", "status": "Done", "job_type": "User local job"}
LOOKUP = ("find_by_hash", "e", "h1")


def call(handler: Handler, fn: str, *args: Any, auth: str = "query", deadline: float = 5.0) -> Any:
    async def go() -> Any:
        async with ApiClient(
            ENDPOINT, KEY, auth=auth, transport=httpx2.MockTransport(handler), deadline=deadline
        ) as client:
            return await getattr(client, fn)(*args)

    return asyncio.run(go())


def failure(handler: Handler, fn: str = "submit", *args: Any, **kwargs: Any) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        call(handler, fn, *(args or (BODY,)), **kwargs)
    return info.value


# --- classification ----------------------------------------------------------------


def test_200_valid_job_is_returned() -> None:
    job = call(answer(200, job_doc(BODY, "srv-1")), "submit", BODY)
    assert job.id == "srv-1" and job.hash == "h1"
    assert job.experiment_id == "e" and job.status == "Submitted"


def test_200_job_for_another_hash_is_uncertain() -> None:
    other = dict(BODY, hash="other")
    err = failure(answer(200, job_doc(other)))
    assert err.verdict is Verdict.MAYBE_SENT


def test_200_job_for_another_experiment_is_uncertain() -> None:
    other = dict(BODY, experiment_id="another-experiment")
    err = failure(answer(200, job_doc(other)))
    assert err.verdict is Verdict.MAYBE_SENT


@pytest.mark.parametrize(
    "other",
    [{"hash": "other-hash"}, {"experiment_id": "other-experiment"}],
    ids=["hash", "experiment"],
)
def test_lookup_answered_with_another_job_is_never_taken_for_ours(other: dict[str, str]) -> None:
    """A lookup (find_by_hash) that answers 200 with a job of another hash or
    experiment must not reconcile the entry with it: uncertain, never a JobRef."""
    doc = job_doc(dict(BODY, **other), "srv-other")
    err = failure(answer(200, doc), *LOOKUP)
    assert isinstance(err, RequestFailed)
    assert err.verdict is Verdict.MAYBE_SENT


def test_lookup_with_the_same_job_is_a_jobref() -> None:
    job = call(answer(200, job_doc(BODY, "srv-7")), *LOOKUP)
    assert (job.id, job.hash, job.experiment_id) == ("srv-7", "h1", "e")


def test_lookup_without_experiment_id_in_the_answer_is_taken_by_hash() -> None:
    doc = job_doc(BODY, "srv-8")
    del doc["experiment_id"]
    job = call(answer(200, doc), *LOOKUP)
    assert job.id == "srv-8" and job.experiment_id is None


def test_2xx_bad_json_is_uncertain() -> None:
    err = failure(answer(200, b'{"id": "trunc'))
    assert err.verdict is Verdict.MAYBE_SENT
    err = failure(answer(201, {"not": "a job"}))
    assert err.verdict is Verdict.MAYBE_SENT


@pytest.mark.parametrize(
    "body",
    [
        [],
        "job-1",
        {"id": "", "hash": "h1", "status": "Done"},
        {"id": 7, "hash": "h1", "status": "Done"},
        {"id": "j", "hash": "h1"},
        {"id": "j", "status": "Done"},
        {"id": "j", "hash": "h1", "status": None},
    ],
)
def test_2xx_without_id_hash_and_status_is_uncertain(body: Any) -> None:
    err = failure(answer(200, body))
    assert err.verdict is Verdict.MAYBE_SENT and "not a Job" in str(err)


def test_2xx_reads_only_what_it_needs() -> None:
    """A server that drops or changes the fields logbook does not use still works;
    a status outside the API's enum is kept as ``Unknown (...)``."""
    job = call(answer(200, {"id": "srv-9", "hash": "h1", "status": "Queued"}), "submit", BODY)
    assert (job.id, job.status, job.hash) == ("srv-9", "Queued", "h1")
    job = call(
        answer(200, {"id": "srv-9", "hash": "h1", "status": "Quantum Queued"}), "submit", BODY
    )
    assert (job.id, job.status, job.hash) == ("srv-9", "Unknown (Quantum Queued)", "h1")


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_client_errors_reject_with_the_reason(status: int) -> None:
    detail = [{"loc": ["body", "status"], "msg": "Input should be 'Done'", "type": "enum"}]
    err = failure(answer(status, {"detail": detail}))
    assert err.verdict is Verdict.REJECTED and err.status == status and not err.maybe_sent
    assert "status: Input should be 'Done'" in str(err)
    assert f"HTTP {status}" in str(err)


def test_a_404_to_post_jobs_says_the_endpoint_is_wrong() -> None:
    """The route is not there (a base path the API does not serve): no job is to blame."""
    err = failure(answer(404, {"detail": "Not Found"}))
    assert err.verdict is Verdict.STOP_ENDPOINT and err.status == 404
    assert "HAIQU_EDGE_URI" in str(err) and ENDPOINT in str(err)


@pytest.mark.parametrize("status", [400, 405, 413, 414, 422])
def test_a_4xx_on_a_lookup_is_no_verdict(status: int) -> None:
    """A proxy may refuse a long lookup URL: that says nothing about the job."""
    err = failure(answer(status, {"detail": "URI too long"}), *LOOKUP)
    assert err.verdict is Verdict.RETRY_LATER, err.verdict
    assert err.status == status and f"HTTP {status}" in str(err)
    # what last_error keeps names the method once (it said "GET GET /experiments/...")
    assert str(err).startswith("GET /experiments/{experiment_id}/jobs/{hash}: HTTP"), str(err)
    assert str(err).count("GET") == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors(status: int) -> None:
    err = failure(answer(status, {"detail": "Invalid or missing API key"}))
    assert err.verdict is Verdict.STOP_AUTH and err.status == status
    err = failure(answer(status, {"detail": "Invalid or missing API key"}), *LOOKUP)
    assert err.verdict is Verdict.STOP_AUTH and err.status == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    err = failure(answer(status, {"detail": "busy"}, {"Retry-After": "7"}))
    # Only a 5xx to a POST may have stored the job.
    assert err.verdict is (Verdict.MAYBE_SENT if status >= 500 else Verdict.RETRY_LATER)
    assert err.status == status
    assert err.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_on_a_get_is_not_maybe_sent(status: int) -> None:
    err = failure(answer(status, {"detail": "busy"}), *LOOKUP)
    assert err.verdict is Verdict.RETRY_LATER


REDIRECT_TARGET = "http://other.example:8443/v2/jobs"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "call_args", [("submit", BODY), LOOKUP, ("get_job", "srv-1")], ids=["POST", "lookup", "GET"]
)
def test_a_redirect_is_never_followed_and_names_where_without_the_query(
    status: int, call_args: tuple[Any, ...]
) -> None:
    seen: list[httpx2.Request] = []
    location = f"{REDIRECT_TARGET}?HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars%2B%2F%3D&x=1"

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(status, headers={"Location": location})

    err = failure(handler, *call_args)
    assert err.verdict is Verdict.STOP_REDIRECT and err.status == status
    # The base URL to set HAIQU_EDGE_URI to: the route asked for and the query taken off.
    moved = "http://other.example:8443/v2" if call_args[0] == "submit" else REDIRECT_TARGET
    assert err.location == moved
    assert len(seen) == 1 and seen[0].url.host == "api.test"  # not followed
    for text in (str(err), repr(err), err.location or ""):
        assert_no_key(text, KEY, "the redirect failure")
        assert "HAIQU_API_KEY" not in text


def test_a_relative_redirect_names_the_base_url_on_the_same_host() -> None:
    err = failure(answer(307, b"", {"Location": "/v2/jobs?HAIQU_API_KEY=k%2Bey%2Fwith%3Dch"}))
    assert err.verdict is Verdict.STOP_REDIRECT and err.location == "http://api.test/v2"


def test_connect_error_is_connect_failed_and_not_sent() -> None:
    err = failure(raising(httpx2.ConnectError))
    assert err.verdict is Verdict.NOT_SENT


def test_read_timeout_after_sending_a_post_is_maybe_sent() -> None:
    err = failure(raising(httpx2.ReadTimeout))
    assert err.verdict is Verdict.MAYBE_SENT and err.timed_out
    err = failure(raising(httpx2.ReadTimeout), *LOOKUP)
    assert not err.maybe_sent


def test_dropped_connection_is_maybe_sent() -> None:
    err = failure(raising(httpx2.RemoteProtocolError))
    assert err.verdict is Verdict.MAYBE_SENT


def test_overall_deadline_bounds_a_slow_response() -> None:
    """The handler would answer 200 after 30 s: only the deadline makes this a failure."""

    async def slow(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(30)
        return httpx2.Response(200, json=job_doc(BODY))

    err = failure(slow, "submit", BODY, deadline=0.2)
    assert err.verdict is Verdict.MAYBE_SENT and err.timed_out


def test_find_by_hash_404_is_none_and_get_job_404_is_none() -> None:
    assert call(answer(404, {"detail": "Job not found"}), *LOOKUP) is None
    assert call(answer(404, {"detail": "Job not found"}), "get_job", "x") == GONE


# --- statuses the API does not know ------------------------------------------------------


def test_remote_status_keeps_the_enum_and_escapes_anything_else() -> None:
    for status in STATUSES:
        assert remote_status(status) == status
    assert remote_status("Finished") == "Unknown (Finished)"
    shown = remote_status("Done\x1b[31m\r\nforged line\x00")
    assert shown.startswith("Unknown (") and shown.endswith(")")
    assert not any(ord(c) < 32 or ord(c) == 127 for c in shown), repr(shown)
    assert "\\x1b" in shown and "\\r\\n" in shown
    assert remote_status("done") == "Unknown (done)"  # the enum is case-sensitive
    assert len(remote_status("x" * 10_000)) < 100  # bounded


def test_an_unknown_status_from_the_server_comes_back_escaped() -> None:
    doc = job_doc(BODY, "srv-1", status="Finished\x1b[2J\n")
    job = call(answer(200, doc), "submit", BODY)
    assert job.status == "Unknown (Finished\\x1b[2J\\n)"
    job = call(answer(200, doc), "get_job", "srv-1")
    assert job.status == "Unknown (Finished\\x1b[2J\\n)"


# --- Retry-After ---------------------------------------------------------------------


def test_retry_after_seconds_date_garbage_and_cap() -> None:
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-4") is None
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon, maybe") is None
    assert parse_retry_after("Mon, 99 Foo 2026 xx:yy:zz GMT") is None
    when = formatdate(now + 10, usegmt=True)
    assert parse_retry_after(when, now=now) == pytest.approx(10, abs=1.01)
    past = formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    # A server whose clock is a day off: its date is read against its own Date header.
    for off in (86400, -86400):
        date, server_now = (
            formatdate(now + off + 10, usegmt=True),
            formatdate(now + off, usegmt=True),
        )
        assert parse_retry_after(date, now=now, server_date=server_now) == 10.0
    assert parse_retry_after(when, now=now, server_date="not a date") == pytest.approx(10, abs=1.01)
    assert parse_retry_after("999999") == RETRY_AFTER_CAP
    assert parse_retry_after(formatdate(now + 10**6, usegmt=True), now=now) == RETRY_AFTER_CAP
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("1e3") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=0) == RETRY_AFTER_CAP


# --- the key on the wire ------------------------------------------------------------


class Recorder:
    """Answers every POST with the job it was sent; keeps the requests as they left."""

    def __init__(self) -> None:
        self.seen: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        return httpx2.Response(200, json=job_doc(json.loads(request.content)))


def test_key_is_percent_encoded_in_the_query_and_absent_from_returned_requests() -> None:
    server = Recorder()
    job = call(server, "submit", BODY)
    (wire,) = server.seen
    assert b"HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars%2B%2F%3D" in wire.url.raw_path
    assert wire.url.params["HAIQU_API_KEY"] == KEY  # decodes back to the key exactly
    assert "authorization" not in wire.headers
    assert job.id


@pytest.mark.parametrize("auth", ["query", "header"])
def test_key_absent_from_response_request(auth: str) -> None:
    """``send`` promises that the response's request holds no key.

    The handler hands back the request it was given, as ``AiohttpTransport``
    (the real transport) does for every response.
    """

    def handler(request: httpx2.Request) -> httpx2.Response:
        doc = job_doc(json.loads(request.content))
        return httpx2.Response(200, json=doc, request=request)

    async def go() -> httpx2.Response:
        async with ApiClient(
            ENDPOINT, KEY, auth=auth, transport=httpx2.MockTransport(handler)
        ) as c:
            return await c.send("POST", "/jobs", json.dumps(BODY).encode())

    response = asyncio.run(go())
    url = str(response.request.url)
    assert "HAIQU_API_KEY" not in url and "k%2Bey" not in url and KEY not in url
    assert "HAIQU_API_KEY" not in repr(response.request)
    assert "authorization" not in response.request.headers


def test_key_in_authorization_header_mode() -> None:
    server = Recorder()
    call(server, "submit", BODY, auth="header")
    (wire,) = server.seen
    assert wire.headers["authorization"] == KEY
    assert b"HAIQU_API_KEY" not in wire.url.raw_path


def test_transport_error_message_is_key_free() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadError(f"failed on {request.url}", request=request)

    err = failure(handler)
    text = str(err) + repr(err)
    for form in (KEY, "k%2Bey%2Fwith%3Dchars%2B%2F%3D", "k ey/with=chars /="):
        assert form not in text
    assert_no_key(text, KEY, "a transport error")


# --- answers the client must still classify -----------------------------------------------


@pytest.mark.parametrize("call_args", [("submit", BODY), LOOKUP], ids=["POST", "lookup"])
def test_an_undecodable_body_is_a_classified_failure(call_args: tuple[Any, ...]) -> None:
    """The server ignored ``Accept-Encoding: identity`` and sent a broken gzip body."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
            stream=httpx2.ByteStream(b"this is not gzip"),
        )

    err = failure(handler, *call_args)
    post = call_args[0] == "submit"
    assert err.verdict is (Verdict.MAYBE_SENT if post else Verdict.RETRY_LATER)


@pytest.mark.parametrize("status", [200, 422, 500])
def test_a_deeply_nested_json_body_is_a_classified_failure(status: int) -> None:
    err = failure(answer(status, b"[" * 5000))
    assert err.status == status
    assert (
        err.verdict
        is {200: Verdict.MAYBE_SENT, 422: Verdict.REJECTED, 500: Verdict.MAYBE_SENT}[status]
    )


def test_a_status_already_marked_unknown_is_never_wrapped_twice() -> None:
    once = remote_status("Weird\x1b[31m")
    assert once.startswith("Unknown (") and "\x1b" not in once
    assert remote_status(once) == once  # a relay's answer passed on: not Unknown (Unknown (...))


def test_a_relays_upstream_status_outside_the_enum_is_not_taken() -> None:
    doc = {
        **job_doc({"experiment_id": "e", "hash": "h"}, "relay-1", "Queued"),
        "info": {"relay": "forwarded", "upstream_status": "Weird", "upstream_id": "a-1"},
    }
    job = call(answer(200, doc), "get_job", "relay-1")
    assert job.status == "Queued" and job.upstream_id == "a-1"  # the enum value it served
