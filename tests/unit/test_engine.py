"""The sync engine in-process: an ``httpx2.MockTransport`` plays the server.

Every run here ends with no entry left ``sending``: a run never reports
(or fails) while it still holds a claim.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import entries, seed_store, set_row, states

from logbook.client import ApiClient
from logbook.config import Config
from logbook.engine import (
    MAX_BACKOFF,
    MAX_STALLS,
    MAX_TIMEOUTS,
    AdaptiveLimit,
    SyncEngine,
    SyncReport,
    backoff,
    run_sync,
)
from logbook.errors import AuthError, Redirected, Unreachable
from logbook.store import Entry, Store
from logbook.store.worker import StoreWorker

from .apimock import ENDPOINT, KEY, Handler, answer, job_doc, raising


class FakeServer:
    """A tiny in-memory Jobs API for MockTransport."""

    def __init__(self, status: str = "Submitted") -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.post_status: int | None = None
        self.status = status
        self.seen: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        path = request.url.path
        self.requests.append((request.method, path))
        if request.method == "POST" and path == "/jobs":
            if self.post_status is not None:
                return httpx2.Response(self.post_status, json={"detail": "nope"})
            body = json.loads(request.content)
            doc = job_doc(body, f"srv-{len(self.jobs) + 1}", self.status)
            self.jobs[(body["experiment_id"], body["hash"])] = doc
            return httpx2.Response(200, json=doc)
        if request.method == "GET" and path.startswith("/experiments/"):
            _, _, exp, _, h = path.split("/")
            doc = self.jobs.get((exp, h))
            return httpx2.Response(200, json=doc) if doc else httpx2.Response(404, json={})
        if request.method == "GET" and path.startswith("/jobs/"):
            for doc in self.jobs.values():
                if doc["id"] == path.rsplit("/", 1)[1]:
                    return httpx2.Response(200, json=dict(doc, status="Done"))
            return httpx2.Response(404, json={})
        return httpx2.Response(405)

    def posts(self) -> list[str]:
        return [p for m, p in self.requests if m == "POST"]


def config(home: Path, auth: str = "query", **settings: Any) -> Config:
    return Config(
        home=home, db=home / "logbook.db", endpoint=ENDPOINT, api_key=KEY, auth=auth, **settings
    )


def sync(cfg: Config, handler: Handler, **options: Any) -> SyncReport:
    """``run_sync`` against ``handler``; whatever happens, nothing is left ``sending``."""
    try:
        return run_sync(cfg, transport=httpx2.MockTransport(handler), **options)
    finally:
        left = states(cfg.db)
        assert left["sending"] == 0, f"a run ended holding claims: {left}"


def stored(db: Path) -> list[Entry]:
    with Store(db) as store:
        return list(store.entries(newest_first=False))


# --- backoff and adaptive concurrency -----------------------------------------------------


class FakeClock:
    """A clock that moves only when the code under test sleeps (or the test moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _delays(attempts: int, retry_after: float | None = None, n: int = 300) -> list[float]:
    """The next-try delays of ``n`` entries (or machines) that failed alike."""
    return [backoff(attempts, retry_after, rng=random.Random(seed)) for seed in range(n)]


def test_backoff_is_bounded_grows_with_attempts_and_spreads_a_fleet() -> None:
    # Bounds: never negative, never past the longest back-off, however many failures.
    for attempts in (1, 2, 3, 8, 15, 40, 10_000):
        assert all(0.0 <= d <= MAX_BACKOFF for d in _delays(attempts)), attempts
    # The first retry comes soon; each failure makes the typical wait longer, until
    # the longest back-off caps it.
    assert max(_delays(1)) <= 2.0
    medians = [statistics.median(_delays(a)) for a in range(1, 10)]
    assert all(b > a for a, b in itertools.pairwise(medians)), medians
    capped = _delays(40)
    assert max(capped) > 0.9 * MAX_BACKOFF
    assert statistics.median(capped) < 0.75 * MAX_BACKOFF  # not pinned at the cap
    # Jitter: a fleet that failed together spreads over the whole range, from almost
    # at once to almost the longest wait, rather than coming back in lockstep.
    for attempts in (1, 5, 40):
        delays = _delays(attempts)
        assert len(set(delays)) > 0.95 * len(delays)
        assert min(delays) < 0.1 * max(delays)
    # The same random source gives the same delay (runs are reproducible in tests).
    assert backoff(5, rng=random.Random(7)) == backoff(5, rng=random.Random(7))


def test_retry_after_is_a_floor() -> None:
    for attempts in (1, 4, 12):
        assert all(d >= 30.0 for d in _delays(attempts, 30.0))
    assert all(d == 30.0 for d in _delays(1, 30.0))  # longer than any first back-off
    # a larger jittered delay wins over a small Retry-After: still spread above it
    delays = _delays(12, 0.5)
    assert all(d >= 0.5 for d in delays) and max(delays) > 10 * 0.5


def test_adaptive_limit_halves_once_per_burst_and_grows_back_on_success() -> None:
    clock = FakeClock()
    lim = AdaptiveLimit(64, random.Random(1), clock=clock, sleep=clock.sleep)
    lim.overload()
    assert lim.limit == 32
    lim.overload()  # the same burst of refusals: one cut
    clock.now += 0.1
    lim.overload()
    assert lim.limit == 32
    clock.now += 1.0  # a later burst
    lim.overload()
    assert lim.limit == 16
    for _ in range(5):
        clock.now += 1.0
        lim.overload()
    assert lim.limit == 1  # never below one
    clock.now += 1.0
    lim.overload()
    assert lim.limit == 1
    for _ in range(200):
        lim.success()
    assert 1 < lim.limit < 64  # it creeps back, not at once
    for _ in range(10_000):
        lim.success()
    assert lim.limit == 64  # never above the maximum
    assert clock.slept == []  # no Retry-After given: nothing paused


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


def test_first_send_posts_directly(tmp_path: Path) -> None:
    seed_store(tmp_path, 3)
    server = FakeServer()
    report = sync(config(tmp_path), server, refresh=False)
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
    report = sync(config(tmp_path), server, refresh=False)
    assert report.synced == 2 and report.reconciled == 1
    by_id = {e["id"]: e for e in entries(db)}
    assert by_id[first["id"]]["remote_id"] == "already-there"
    posts = server.posts()
    gets = [p for m, p in server.requests if m == "GET"]
    assert len(posts) == 1 and len(gets) == 2  # 200 -> no POST; 404 -> POST


def test_5xx_marks_maybe_sent_and_next_run_looks_up_first(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 1)
    server = FakeServer()
    server.post_status = 503
    report = sync(config(tmp_path), server, refresh=False, retry_window=0)
    assert report.pending == 1 and report.exit_code == 1
    (e,) = stored(db)
    assert (
        e.state == "pending"
        and e.maybe_sent
        and e.attempts >= 1  # a jittered back-off near 0 may run out within the run: tried again
        and "HTTP 503" in (e.last_error or "")
    )
    server.post_status = None
    server.requests.clear()
    report = sync(config(tmp_path), server, refresh=False)
    assert report.synced == 1
    assert [m for m, _ in server.requests] == ["GET", "POST"]


def test_auth_error_changes_nothing(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    before = entries(db)
    with pytest.raises(AuthError) as info:
        sync(config(tmp_path), answer(401, {"detail": "no"}))
    assert entries(db) == before
    assert info.value.exit_code == 3
    assert "no entry was changed" in str(info.value) and "HAIQU_API_KEY" in str(info.value)


def test_connect_error_changes_nothing(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    before = entries(db)
    with pytest.raises(Unreachable) as info:
        sync(config(tmp_path), raising(httpx2.ConnectError))
    assert entries(db) == before
    assert info.value.exit_code == 4
    assert "no entry was changed" in str(info.value)


def test_refresh_updates_unfinished_statuses(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 2)
    server = FakeServer()
    sync(config(tmp_path), server, refresh=False)
    assert {e["remote_status"] for e in entries(db)} == {"Submitted"}
    report = sync(config(tmp_path), server)
    assert report.refreshed == 2
    assert {e["remote_status"] for e in entries(db)} == {"Done"}


def test_a_status_outside_the_api_enum_is_stored_escaped(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 2)
    report = sync(config(tmp_path), FakeServer(status="Finished\x1b[31m\n"), refresh=False)
    assert report.synced == 2
    for e in entries(db):
        assert e["state"] == "synced"
        assert e["remote_status"] == "Unknown (Finished\\x1b[31m\\n)"


# --- runs that stop early leave every entry as it was ---------------------------------------


@pytest.mark.parametrize("maybe_sent", [False, True], ids=["post", "lookup"])
def test_a_redirect_stops_the_run_and_leaves_every_entry_pending(
    tmp_path: Path, maybe_sent: bool
) -> None:
    db = seed_store(tmp_path, 6)
    if maybe_sent:  # the first request is then a lookup (GET), not a POST
        for e in entries(db):
            set_row(db, e["id"], maybe_sent=1)
    before = entries(db)
    seen: list[httpx2.Request] = []
    location = "http://new.example:8443/v2/jobs?HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars%2B%2F%3D"

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(301, headers={"Location": location})

    with pytest.raises(Redirected) as info:
        sync(config(tmp_path), handler, concurrency=2)
    err = info.value
    assert err.exit_code == 2
    text = str(err)
    # A POST's Location ends in its route (/jobs): the base URL is what is left of it.
    moved = "http://new.example:8443/v2/jobs" if maybe_sent else "http://new.example:8443/v2"
    assert f"redirects to {moved};" in text and "HAIQU_EDGE_URI" in text
    assert "?" not in text and "HAIQU_API_KEY=" not in text and "k%2Bey" not in text
    assert "no entry was changed" in text
    after = entries(db)
    assert after == before
    assert all(e["state"] == "pending" and e["attempts"] == 0 for e in after)
    assert {r.url.host for r in seen} == {"api.test"}  # never followed
    assert len(seen) <= 2  # the run stopped at the first answers
    assert [e.maybe_sent for e in stored(db)] == [maybe_sent] * 6


def test_consecutive_timeouts_make_the_endpoint_unreachable(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 40)
    posted: list[str] = []

    async def never(request: httpx2.Request) -> httpx2.Response:
        posted.append(json.loads(request.content)["hash"])
        await asyncio.sleep(10)
        return httpx2.Response(500)

    cfg = config(tmp_path, request_timeout=0.05)
    with pytest.raises(Unreachable) as info:
        sync(cfg, never, concurrency=2, max_time=60, refresh=False)
    assert info.value.exit_code == 4
    assert f"timed out {MAX_TIMEOUTS} requests in a row" in str(info.value)
    assert MAX_TIMEOUTS <= len(posted) < 40  # it stopped, and did not try everything
    rows = stored(db)
    assert {e.state for e in rows} == {"pending"}
    for e in rows:
        if e.hash in posted:  # may have reached the server: looked up before the next POST
            assert e.maybe_sent and e.attempts == 1, e
        else:  # never sent: as it was
            assert not e.maybe_sent and e.attempts == 0 and e.last_error is None, e


def test_a_401_after_some_entries_were_synced_says_how_many_were_kept(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 10)
    server = FakeServer()

    def handler(request: httpx2.Request) -> httpx2.Response:
        if len(server.posts()) >= 3:
            return httpx2.Response(401, json={"detail": "key revoked"})
        return server(request)

    with pytest.raises(AuthError) as info:
        sync(config(tmp_path), handler, concurrency=1)
    text = str(info.value)
    assert info.value.exit_code == 3
    assert "no entry was changed" not in text
    assert "3 entries synced before that are kept" in text, text
    rows = entries(db)
    assert [e["state"] for e in rows] == ["synced"] * 3 + ["pending"] * 7
    assert all(e["attempts"] == 0 and e["last_error"] is None for e in rows[3:])


# --- an interrupted step leaves nothing 'sending' -------------------------------------


def _engine_run(
    db_path: Path,
    handler: Handler,
    body: Callable[[SyncEngine], Awaitable[None]],
    concurrency: int = 1,
) -> None:
    async def go() -> None:
        db = StoreWorker(str(db_path))
        client = ApiClient(ENDPOINT, KEY, transport=httpx2.MockTransport(handler), deadline=60)
        engine = SyncEngine(db, client, concurrency=concurrency)
        try:
            await body(engine)
        finally:
            engine.close()
            await client.aclose()
            db.close()

    asyncio.run(go())
    assert states(db_path)["sending"] == 0


def test_cancelled_step_marks_in_flight_maybe_sent_and_releases_the_rest(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    arrived: list[asyncio.Event] = []

    async def hang(request: httpx2.Request) -> httpx2.Response:
        arrived[0].set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async def body(engine: SyncEngine) -> None:
        arrived.append(asyncio.Event())
        step = asyncio.ensure_future(engine.sync_once(ignore_backoff=True))
        async with asyncio.timeout(30):
            await arrived[0].wait()  # the first POST is in flight
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step

    _engine_run(db, hang, body)
    rows = entries(db)
    assert [e["state"] for e in rows] == ["pending"] * 5
    flags = [e.maybe_sent for e in stored(db)]
    assert flags == [True, False, False, False, False]  # only the one whose POST started
    assert rows[0]["last_error"] == "interrupted while sending" and rows[1]["attempts"] == 0


def test_cancelled_while_claiming_releases_what_the_claim_took(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 4)
    posted: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        posted.append(request.url.path)
        return httpx2.Response(200, json=job_doc(json.loads(request.content)))

    async def body(engine: SyncEngine) -> None:
        real_claim = engine.leases.claim
        claiming, cancelled = threading.Event(), threading.Event()

        def slow_claim(*args: Any, **kwargs: Any) -> Any:
            claiming.set()
            assert cancelled.wait(30)  # on the store thread: the claim commits after the cancel
            return real_claim(*args, **kwargs)

        engine.leases.claim = slow_claim  # type: ignore[method-assign]
        step = asyncio.ensure_future(engine.sync_once(ignore_backoff=True))
        assert await asyncio.to_thread(claiming.wait, 30)
        step.cancel()
        cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await step

    _engine_run(db, handler, body, concurrency=4)
    assert {e["state"] for e in entries(db)} == {"pending"}
    assert all(e["attempts"] == 0 for e in entries(db))
    assert posted == []


def test_logbook_sync_stays_callable_after_the_engine_is_imported(
    logbook_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import logbook

    importlib.import_module("logbook.engine")
    importlib.import_module("logbook.api")
    assert callable(logbook.sync)
    db = seed_store(logbook_home, 2)
    monkeypatch.setenv("HAIQU_API_KEY", KEY)
    server = FakeServer()
    report = logbook.sync(endpoint=ENDPOINT, transport=httpx2.MockTransport(server))
    assert report.synced == 2
    assert logbook.sync(endpoint=ENDPOINT, transport=httpx2.MockTransport(server)).synced == 0
    assert states(db)["synced"] == 2 and states(db)["sending"] == 0


# --- a failing server: bounded, polite runs -------------------------------------------


def test_failing_server_gets_each_entry_once_per_step_and_the_run_ends(tmp_path: Path) -> None:
    """A 503 on everything: the first step tries each entry once (it does not
    re-claim what just failed), and the run gives up after a few steps without
    progress instead of retrying until the server recovers."""
    db = seed_store(tmp_path, 300)
    server = FakeServer()
    server.post_status = 503
    report = sync(config(tmp_path), server, refresh=False, concurrency=8)
    assert report.exit_code == 1 and report.pending == 300 and report.synced == 0
    posts = server.posts()
    # step 1: one POST each; later steps only re-send entries whose backoff ran out
    assert 300 <= len(posts) <= 300 * 3, len(posts)
    first_step = [json.loads(r.content)["hash"] for r in server.seen if r.method == "POST"][:300]
    assert len(set(first_step)) == 300  # every entry once before any is retried
    assert {e["state"] for e in entries(db)} == {"pending"}


def test_first_step_sends_every_entry_once_before_any_retry(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 100)
    server = FakeServer()
    server.post_status = 503
    sync(config(tmp_path), server, refresh=False, concurrency=4, retry_window=0)
    hashes = [json.loads(r.content)["hash"] for r in server.seen if r.method == "POST"]
    # the first step sends each entry once; only a retry whose (jittered) delay
    # has already run out may follow it, once per later step
    assert len(set(hashes[:100])) == 100
    assert max(Counter(hashes).values()) <= MAX_STALLS
    assert min(e["attempts"] for e in entries(db)) >= 1


def test_one_undecodable_answer_does_not_abort_the_run(tmp_path: Path) -> None:
    db = seed_store(tmp_path, 5)
    server = FakeServer()

    def handler(request: httpx2.Request) -> httpx2.Response:
        if not server.posts():
            server.requests.append(("POST", "/jobs"))
            return httpx2.Response(
                200, headers={"content-encoding": "gzip"}, stream=httpx2.ByteStream(b"not gzip")
            )
        return server(request)

    report = sync(config(tmp_path), handler, concurrency=1, refresh=False, retry_window=0)
    assert report.synced == 4 and report.pending == 1
    (odd,) = [e for e in stored(db) if e.state == "pending"]
    assert odd.maybe_sent  # a 2xx that could not be read may hide a stored job


def _refuse(lim: AdaptiveLimit, clock: FakeClock, n: int, retry_after: float | None) -> None:
    for _ in range(n):
        clock.now += 0.001
        lim.overload(retry_after)


def test_an_isolated_429_pauses_only_its_own_request() -> None:
    """One 429 among successes: fewer in flight, but no request of the run waits for it (its
    own entry waits its Retry-After: the engine's back-off)."""
    clock = FakeClock()
    told: list[tuple[float, str]] = []
    lim = AdaptiveLimit(64, random.Random(1), clock=clock, sleep=clock.sleep,
                        on_pause=lambda s, why: told.append((s, why)))  # fmt: skip
    for _ in range(30):
        clock.now += 0.001
        lim.success()
    lim.overload(retry_after=1.0)
    assert lim.paused_until == 0.0 and told == []
    assert lim.limit == 32


def test_random_429s_never_pause_the_run_and_keep_requests_in_flight() -> None:
    """The numbers behind the policy: 10% 429s at random over 20,000 answers (about 20 s at
    1,000 answers a second) pause the whole run at most once, and leave over half of the
    requests in flight on average (a cut at most once a second, regained on success)."""
    clock = FakeClock()
    rng = random.Random(7)
    told: list[tuple[float, str]] = []
    lim = AdaptiveLimit(64, random.Random(2), clock=clock, sleep=clock.sleep,
                        on_pause=lambda s, why: told.append((s, why)))  # fmt: skip
    limits = []
    for _ in range(20_000):
        clock.now += 0.001
        if rng.random() < 0.1:
            lim.overload(retry_after=1.0)
        else:
            lim.success()
        limits.append(lim.limit)
    assert len(told) <= 1, told
    assert sum(limits) / len(limits) > 32, sum(limits) / len(limits)  # over half: 38.6 here


def test_repeated_429s_pause_every_request_until_the_retry_after_with_jitter() -> None:
    """A real limit refuses most requests: the run pauses together, and a fleet does not come
    back in lockstep."""
    pauses = []
    for seed in range(40):
        clock = FakeClock()
        told: list[tuple[float, str]] = []
        lim = AdaptiveLimit(8, random.Random(seed), clock=clock, sleep=clock.sleep,
                            on_pause=lambda s, why, told=told: told.append((s, why)))  # fmt: skip
        _refuse(lim, clock, 9, 2.0)
        assert lim.paused_until == 0.0  # nine answers are no judgement yet
        _refuse(lim, clock, 1, 2.0)
        # Retry-After, plus up to half of it again as jitter
        assert clock.now + 2.0 <= lim.paused_until <= clock.now + 3.0
        assert told == [(pytest.approx(lim.paused_until - clock.now), "Retry-After")]
        pauses.append(lim.paused_until - clock.now)
    assert max(pauses) - min(pauses) > 0.5  # spread, not one instant for everyone

    async def acquire_after_pause() -> None:
        clock = FakeClock()
        lim = AdaptiveLimit(4, random.Random(1), clock=clock, sleep=clock.sleep)
        _refuse(lim, clock, 10, 0.2)
        await lim.acquire()
        assert clock.now >= lim.paused_until  # no request starts during the pause
        assert clock.slept and lim.in_flight == 1
        lim.release()
        await lim.acquire()  # once it has passed, nothing waits
        assert len(clock.slept) == 1

    asyncio.run(acquire_after_pause())


def test_half_refused_recent_answers_pause_without_a_retry_after_too() -> None:
    clock = FakeClock()
    lim = AdaptiveLimit(8, random.Random(3), clock=clock, sleep=clock.sleep)
    for i in range(20):
        clock.now += 0.001
        lim.overload(None) if i % 2 else lim.success()
    assert clock.now + 1.0 <= lim.paused_until <= clock.now + 1.5  # DEFAULT_PAUSE


def test_a_failing_server_cuts_the_requests_in_flight_but_never_pauses_the_run() -> None:
    """503s that ask for no wait: the server is broken, not asking this client to slow
    down; the run must end soon (a pause per window made a 300-entry run take minutes)."""
    clock = FakeClock()
    lim = AdaptiveLimit(8, random.Random(2), clock=clock, sleep=clock.sleep)
    for _ in range(40):
        clock.now += 0.05  # 20 in the window, every one refused
        lim.overload(None, rate_limited=False)
    assert lim.paused_until == 0.0 and lim.limit < 8  # cut (once a second), never paused
    for _ in range(20):  # the same answers as 429s: the rate limit is told, and kept
        clock.now += 0.001
        lim.overload(None)
    assert lim.paused_until > clock.now
