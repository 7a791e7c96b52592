"""The sync engine and API client without a network: httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from sync_support import entries, seed_store, set_row

from logbook.client import RETRY_AFTER_CAP, ApiClient, parse_retry_after
from logbook.config import Config
from logbook.errors import AuthError, RequestFailed, Unreachable
from logbook.store import Store
from logbook.sync import BASE_BACKOFF, MAX_BACKOFF, AdaptiveLimit, backoff, run_sync

KEY = "k+ey/with=chars+/="
ENDPOINT = "http://api.test"
Handler = Callable[[httpx.Request], Any]


def job_doc(
    body: dict[str, Any], job_id: str = "job-1", status: str = "Submitted"
) -> dict[str, Any]:
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


BODY = {"experiment_id": "e", "hash": "h1", "status": "Done", "job_type": "User local job"}


def call(handler: Handler, fn: str, *args: Any, auth: str = "query", deadline: float = 5.0) -> Any:
    async def go() -> Any:
        async with ApiClient(
            ENDPOINT, KEY, auth=auth, transport=httpx.MockTransport(handler), deadline=deadline
        ) as client:
            return await getattr(client, fn)(*args)

    return asyncio.run(go())


def failure(handler: Handler, fn: str = "submit", *args: Any) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        call(handler, fn, *(args or (BODY,)))
    return info.value


def answer(status: int, data: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(data, bytes):
            return httpx.Response(status, content=data, headers=headers)
        return httpx.Response(status, json=data if data is not None else {}, headers=headers)

    return handler


# --- classification ----------------------------------------------------------------


def test_200_valid_job_is_returned() -> None:
    job = call(answer(200, job_doc(BODY, "srv-1")), "submit", BODY)
    assert job.id == "srv-1" and job.hash == "h1"


def test_200_job_for_another_hash_is_uncertain() -> None:
    other = dict(BODY, hash="other")
    err = failure(answer(200, job_doc(other)))
    assert err.kind == "retry" and err.maybe_sent


def test_2xx_bad_json_is_uncertain() -> None:
    err = failure(answer(200, b'{"id": "trunc'))
    assert err.kind == "retry" and err.maybe_sent
    err = failure(answer(201, {"not": "a job"}))
    assert err.kind == "retry" and err.maybe_sent


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
    assert err.kind == "retry" and err.maybe_sent and "not a Job" in str(err)


def test_2xx_reads_only_what_it_needs() -> None:
    """A server that drops or changes the fields logbook does not use still works."""
    job = call(
        answer(200, {"id": "srv-9", "hash": "h1", "status": "Quantum Queued"}), "submit", BODY
    )
    assert (job.id, job.status, job.hash) == ("srv-9", "Quantum Queued", "h1")


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_reject_with_the_reason(status: int) -> None:
    detail = [{"loc": ["body", "status"], "msg": "Input should be 'Done'", "type": "enum"}]
    err = failure(answer(status, {"detail": detail}))
    assert err.kind == "reject" and err.status == status and not err.maybe_sent
    assert "status: Input should be 'Done'" in str(err)
    assert f"HTTP {status}" in str(err)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors(status: int) -> None:
    err = failure(answer(status, {"detail": "Invalid or missing API key"}))
    assert err.kind == "auth" and err.status == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    err = failure(answer(status, {"detail": "busy"}, {"Retry-After": "7"}))
    assert err.kind == "retry" and err.status == status
    # Only a 5xx to a POST may have stored the job.
    assert err.maybe_sent == (status >= 500)
    assert err.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_on_a_get_is_not_maybe_sent(status: int) -> None:
    err = failure(answer(status, {"detail": "busy"}), "find_by_hash", "e", "h1")
    assert err.kind == "retry" and not err.maybe_sent


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"boom {request.url}", request=request)

    return handler


def test_connect_error_is_connect_failed_and_not_sent() -> None:
    err = failure(raising(httpx.ConnectError))
    assert err.connect_failed and not err.maybe_sent and err.kind == "retry"


def test_read_timeout_after_sending_a_post_is_maybe_sent() -> None:
    err = failure(raising(httpx.ReadTimeout))
    assert err.maybe_sent and not err.connect_failed
    err = failure(raising(httpx.ReadTimeout), "find_by_hash", "e", "h1")
    assert not err.maybe_sent


def test_dropped_connection_is_maybe_sent() -> None:
    err = failure(raising(httpx.RemoteProtocolError))
    assert err.maybe_sent and not err.connect_failed


def test_overall_deadline_bounds_a_slow_response() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=job_doc(BODY))

    started = time.monotonic()
    with pytest.raises(RequestFailed) as info:
        call(slow, "submit", BODY, deadline=0.2)
    assert time.monotonic() - started < 2
    assert info.value.maybe_sent and info.value.kind == "retry"


def test_find_by_hash_404_is_none_and_get_job_404_is_none() -> None:
    assert call(answer(404, {"detail": "Job not found"}), "find_by_hash", "e", "h") is None
    assert call(answer(404, {"detail": "Job not found"}), "get_job", "x") is None


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
    assert parse_retry_after("999999") == RETRY_AFTER_CAP
    assert parse_retry_after(formatdate(now + 10**6, usegmt=True), now=now) == RETRY_AFTER_CAP
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("1e3") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=0) == RETRY_AFTER_CAP


# --- backoff and adaptive concurrency -----------------------------------------------------


def test_backoff_full_jitter_grows_and_is_capped() -> None:
    for attempts in range(1, 15):
        cap = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (attempts - 1))
        samples = [backoff(attempts, rng=random.Random(seed)) for seed in range(200)]
        assert all(0 <= s <= cap for s in samples)
        # full jitter: spread over the whole range, not clustered at the cap
        assert min(samples) < cap * 0.1 and max(samples) > cap * 0.9
    # the same seed gives the same delay
    assert backoff(5, rng=random.Random(7)) == backoff(5, rng=random.Random(7))
    expected = random.Random(7).uniform(0, BASE_BACKOFF * 2**4)
    assert backoff(5, rng=random.Random(7)) == expected


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(3)
    assert all(backoff(1, 30.0, rng=rng) == 30.0 for _ in range(50))
    # a larger jittered delay wins over a small Retry-After
    delays = [backoff(12, 0.5, rng=random.Random(s)) for s in range(50)]
    assert all(d >= 0.5 for d in delays) and max(delays) > 0.5


def test_adaptive_limit_halves_on_overload_and_grows_on_success() -> None:
    lim = AdaptiveLimit(64)
    lim.overload()
    assert lim.limit == 32
    lim.overload()  # the same burst: one cut
    assert lim.limit == 32
    lim._last_cut -= 1.0
    lim.overload()
    assert lim.limit == 16
    for _ in range(5):
        lim._last_cut -= 1.0
        lim.overload()
    assert lim.limit == 1  # never below one
    for _ in range(200):
        lim.success()
    assert 1 < lim.limit < 64
    for _ in range(10_000):
        lim.success()
    assert lim.limit == 64  # never above the maximum


def test_adaptive_limit_bounds_requests_in_flight() -> None:
    async def go() -> int:
        lim = AdaptiveLimit(8)
        lim.limit = 3
        peak = 0

        async def one() -> None:
            nonlocal peak
            await lim.acquire()
            peak = max(peak, lim.in_flight)
            await asyncio.sleep(0.01)
            lim.release()

        await asyncio.gather(*(one() for _ in range(30)))
        return peak

    assert asyncio.run(go()) == 3


# --- the engine with a mock server --------------------------------------------------


class FakeServer:
    """A tiny in-memory Jobs API for MockTransport."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.post_status: int | None = None
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        self.requests.append((request.method, path))
        if request.method == "POST" and path == "/jobs":
            if self.post_status is not None:
                return httpx.Response(self.post_status, json={"detail": "nope"})
            body = json.loads(request.content)
            doc = job_doc(body, f"srv-{len(self.jobs) + 1}")
            self.jobs[(body["experiment_id"], body["hash"])] = doc
            return httpx.Response(200, json=doc)
        if request.method == "GET" and path.startswith("/experiments/"):
            _, _, exp, _, h = path.split("/")
            doc = self.jobs.get((exp, h))
            return httpx.Response(200, json=doc) if doc else httpx.Response(404, json={})
        if request.method == "GET" and path.startswith("/jobs/"):
            for doc in self.jobs.values():
                if doc["id"] == path.rsplit("/", 1)[1]:
                    return httpx.Response(200, json=dict(doc, status="Done"))
            return httpx.Response(404, json={})
        return httpx.Response(405)


def config(home: Path, auth: str = "query") -> Config:
    return Config(home=home, db=home / "logbook.db", endpoint=ENDPOINT, api_key=KEY, auth=auth)


def test_first_send_posts_directly(tmp_path: Path) -> None:
    seed_store(tmp_path, 3)
    server = FakeServer()
    report = run_sync(config(tmp_path), transport=httpx.MockTransport(server), refresh=False)
    assert report.synced == 3 and report.pending == 0 and report.exit_code == 0
    assert [m for m, _ in server.requests] == ["POST"] * 3


def test_maybe_sent_entry_found_on_server_is_not_posted(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 2)
    first, second = entries(db)
    server = FakeServer()
    server.jobs[(first["experiment_id"], first["hash"])] = job_doc(
        {"experiment_id": first["experiment_id"], "hash": first["hash"]}, "already-there"
    )
    set_row(db, first["id"], maybe_sent=1)
    set_row(db, second["id"], maybe_sent=1)
    report = run_sync(config(tmp_path), transport=httpx.MockTransport(server), refresh=False)
    assert report.synced == 2 and report.reconciled == 1
    by_id = {e["id"]: e for e in entries(db)}
    assert by_id[first["id"]]["remote_id"] == "already-there"
    posts = [p for m, p in server.requests if m == "POST"]
    gets = [p for m, p in server.requests if m == "GET"]
    assert len(posts) == 1 and len(gets) == 2  # 200 -> no POST; 404 -> POST


def test_5xx_marks_maybe_sent_and_next_run_looks_up_first(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 1)
    server = FakeServer()
    server.post_status = 503
    report = run_sync(
        config(tmp_path), transport=httpx.MockTransport(server), refresh=False, retry_window=0
    )
    assert report.pending == 1 and report.exit_code == 1
    with Store(db) as store:
        (e,) = store.list()
    assert (
        e.state == "pending"
        and e.maybe_sent
        and e.attempts == 1
        and "HTTP 503" in (e.last_error or "")
    )
    server.post_status = None
    server.requests.clear()
    report = run_sync(config(tmp_path), transport=httpx.MockTransport(server), refresh=False)
    assert report.synced == 1
    assert [m for m, _ in server.requests] == ["GET", "POST"]


def test_auth_error_changes_nothing(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    before = entries(db)
    with pytest.raises(AuthError):
        run_sync(config(tmp_path), transport=httpx.MockTransport(answer(401, {"detail": "no"})))
    assert entries(db) == before


def test_connect_error_changes_nothing(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    before = entries(db)
    with pytest.raises(Unreachable) as info:
        run_sync(config(tmp_path), transport=httpx.MockTransport(raising(httpx.ConnectError)))
    assert entries(db) == before
    assert "no entry was changed" in str(info.value)


def test_refresh_updates_unfinished_statuses(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 2)
    server = FakeServer()
    run_sync(config(tmp_path), transport=httpx.MockTransport(server), refresh=False)
    assert {e["remote_status"] for e in entries(db)} == {"Submitted"}
    report = run_sync(config(tmp_path), transport=httpx.MockTransport(server))
    assert report.refreshed == 2
    assert {e["remote_status"] for e in entries(db)} == {"Done"}


# --- the key on the wire ------------------------------------------------------------


def test_key_is_percent_encoded_in_the_query_and_absent_from_httpx_requests() -> None:
    server = FakeServer()
    job = call(server, "submit", BODY)
    (wire,) = server.seen
    assert b"HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars%2B%2F%3D" in wire.url.raw_path
    assert wire.url.params["HAIQU_API_KEY"] == KEY  # decodes back to the key exactly
    assert "authorization" not in wire.headers
    # what httpx hands back to its caller (and logs) never carries the key
    assert job.id


def test_key_absent_from_response_request_url() -> None:
    async def go() -> httpx.Response:
        async with ApiClient(ENDPOINT, KEY, transport=httpx.MockTransport(FakeServer())) as c:
            return await c.send("POST", "/jobs", json.dumps(BODY).encode())

    response = asyncio.run(go())
    url = str(response.request.url)
    assert "HAIQU_API_KEY" not in url and "k%2Bey" not in url and KEY not in url
    assert "HAIQU_API_KEY" not in repr(response.request)


def test_key_in_authorization_header_mode() -> None:
    server = FakeServer()
    call(server, "submit", BODY, auth="header")
    (wire,) = server.seen
    assert wire.headers["authorization"] == KEY
    assert b"HAIQU_API_KEY" not in wire.url.raw_path


def test_transport_error_message_is_key_free() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"failed on {request.url}", request=request)

    err = failure(handler)
    text = str(err) + repr(err)
    for form in (KEY, "k%2Bey%2Fwith%3Dchars%2B%2F%3D", "k ey/with=chars /="):
        assert form not in text


# --- an interrupted step leaves nothing 'sending' -------------------------------------


def _engine_run(
    db_path: Path, handler: Handler, body: Callable[[Any], Any], concurrency: int = 1
) -> None:
    from logbook.sync import StoreThread, SyncEngine

    async def go() -> None:
        db = StoreThread(str(db_path))
        client = ApiClient(ENDPOINT, KEY, transport=httpx.MockTransport(handler), deadline=10)
        engine = SyncEngine(db, client, concurrency=concurrency)
        try:
            await body(engine)
        finally:
            await client.aclose()
            db.close()

    asyncio.run(go())


def test_cancelled_step_marks_in_flight_maybe_sent_and_releases_the_rest(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(500)

    async def body(engine: Any) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.sync_once(ignore_backoff=True), 0.3)

    _engine_run(db, slow, body)
    rows = entries(db)
    assert [e["state"] for e in rows] == ["pending"] * 5
    with Store(db) as store:
        flags = [e.maybe_sent for e in store.iter_entries(newest_first=False)]
    assert flags == [True, False, False, False, False]  # only the one whose POST started
    assert rows[0]["last_error"] == "interrupted while sending" and rows[1]["attempts"] == 0


def test_cancelled_while_claiming_releases_what_the_claim_took(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 4)
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.url.path)
        return httpx.Response(200, json=job_doc(json.loads(request.content)))

    async def body(engine: Any) -> None:
        real_claim = engine.db.store.claim

        def slow_claim(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)  # on the store thread: the claim commits after the cancel
            return real_claim(*args, **kwargs)

        engine.db.store.claim = slow_claim
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.sync_once(ignore_backoff=True), 0.1)

    _engine_run(db, handler, body, concurrency=4)
    assert {e["state"] for e in entries(db)} == {"pending"}
    assert posted == []


def test_logbook_sync_stays_callable_after_the_module_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import logbook

    importlib.import_module("logbook.sync")  # sets the package attribute to the module
    assert callable(logbook.sync)
    seed_store(tmp_path, 2)
    monkeypatch.setenv("LOGBOOK_HOME", str(tmp_path))
    monkeypatch.setenv("HAIQU_API_KEY", KEY)
    server = FakeServer()
    report = logbook.sync(endpoint=ENDPOINT, transport=httpx.MockTransport(server))
    assert report.synced == 2
    assert logbook.sync(endpoint=ENDPOINT, transport=httpx.MockTransport(server)).synced == 0


# --- a failing server: bounded, polite runs -------------------------------------------


def test_failing_server_gets_each_entry_once_per_step_and_the_run_ends(tmp_path: Path) -> None:
    """A 503 on everything: the first step tries each entry once (it does not
    re-claim what just failed), and the run gives up after a few steps without
    progress instead of retrying until the server recovers."""
    db = seed_store(tmp_path, 300)
    server = FakeServer()
    server.post_status = 503
    started = time.monotonic()
    report = run_sync(
        config(tmp_path), transport=httpx.MockTransport(server), refresh=False, concurrency=8
    )
    assert time.monotonic() - started < 30
    assert report.exit_code == 1 and report.pending == 300 and report.synced == 0
    posts = [p for m, p in server.requests if m == "POST"]
    # step 1: one POST each; later steps only re-send entries whose backoff ran out
    assert 300 <= len(posts) <= 300 * 3, len(posts)
    first_step = [json.loads(r.content)["hash"] for r in server.seen if r.method == "POST"][:300]
    assert len(set(first_step)) == 300  # every entry once before any is retried
    states = {e["state"] for e in entries(db)}
    assert states == {"pending"}


def test_first_step_sends_every_entry_once_before_any_retry(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 100)
    server = FakeServer()
    server.post_status = 503
    run_sync(
        config(tmp_path), transport=httpx.MockTransport(server), refresh=False, concurrency=4,
        retry_window=0,
    )  # fmt: skip
    hashes = [json.loads(r.content)["hash"] for r in server.seen if r.method == "POST"]
    # the first step sends each entry once; only a retry whose (jittered) delay
    # has already run out may follow it
    assert len(set(hashes[:100])) == 100
    assert len(hashes) < 120
    assert min(e["attempts"] for e in entries(db)) == 1
