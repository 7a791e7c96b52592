"""The refresh's rule: which answers say a relay lost a job (offered again), which say the
API no longer has it (noted), and which never say anything (an error for that entry).

In-process: an ``httpx2.MockTransport`` plays a relay that once accepted the entry
as ``relay-1``; the store is a real SQLite file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import seed_store, set_row

from logbook.client import GONE, JobRef
from logbook.engine.refresh import judge, moved
from logbook.errors import AuthError, Redirected, Unreachable
from logbook.store import Entry, Store

from .apimock import ENDPOINT, job_doc
from .test_engine import config, sync

RELAY_ID = "relay-1"


def relay_doc(entry: Entry, **info: Any) -> dict[str, Any]:
    doc = job_doc({"experiment_id": entry.experiment_id, "hash": entry.hash}, RELAY_ID)
    doc["info"] = {"relay": "queued", **info}
    return doc


def unconfirmed_entry(tmp_path: Path, via: str | None = ENDPOINT) -> Path:
    """One entry a relay at ``via`` accepted as relay-1 (``via`` None: the API itself)."""
    db = seed_store(tmp_path, 1)
    set_row(
        db, 1, state="synced", remote_id=RELAY_ID, remote_status="Submitted", via=via,
        synced_at="2026-01-01T00:00:00.000000Z",
    )  # fmt: skip
    return db


def entry(db: Path) -> Entry:
    with Store(db) as s:
        return s.get(1)


class Relay:
    """Answers the refresh with ``on_get``; then plays a relay that holds nothing (look-ups
    404) and takes a POST, noting whether it came marked as a re-offer.
    """

    def __init__(self, on_get: Callable[[httpx2.Request, Entry], httpx2.Response], e: Entry):
        self.on_get, self.entry = on_get, e
        self.posts: list[httpx2.Request] = []
        self.lookups = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "GET" and path.startswith("/jobs/"):
            return self.on_get(request, self.entry)
        if request.method == "GET" and path.startswith("/experiments/"):
            self.lookups += 1
            return httpx2.Response(404, json={"detail": "Job not found"})
        if request.method == "POST":
            self.posts.append(request)
            body = json.loads(request.content)
            doc = job_doc(body, "relay-77")
            doc["info"] = {"relay": "queued"}
            return httpx2.Response(200, json=doc)
        return httpx2.Response(405)


def json_answer(status: int, data: Any) -> Callable[[httpx2.Request, Entry], httpx2.Response]:
    return lambda request, e: httpx2.Response(status, json=data)


REOFFERED: dict[str, Callable[[httpx2.Request, Entry], httpx2.Response]] = {
    "a clean 404": json_answer(404, {"detail": "Job not found"}),
    "another hash under its id": lambda r, e: httpx2.Response(
        200, json={**relay_doc(e), "hash": "someone-else"}
    ),
    "another experiment under its id": lambda r, e: httpx2.Response(
        200, json={**relay_doc(e), "experiment_id": "other-exp"}
    ),
}


@pytest.mark.parametrize("case", REOFFERED, ids=list(REOFFERED))
def test_answers_that_say_the_relay_lost_it_offer_it_again_looked_up_first(
    case: str, tmp_path: Path
) -> None:
    db = unconfirmed_entry(tmp_path)
    relay = Relay(REOFFERED[case], entry(db))
    report = sync(config(tmp_path), relay)
    assert report.reoffered == 1 and report.exit_code == 0
    assert relay.lookups == 1 and len(relay.posts) == 1  # looked up, then posted, this run
    assert relay.posts[0].headers.get("x-logbook-reoffer") == "1"
    after = entry(db)
    assert (after.state, after.remote_id, after.via) == ("synced", "relay-77", ENDPOINT)
    assert not after.confirmed and not after.maybe_sent


NEVER: dict[str, Callable[[httpx2.Request, Entry], httpx2.Response]] = {
    "a 500": json_answer(500, {"detail": "boom"}),
    "a 503 with Retry-After": lambda r, e: httpx2.Response(503, headers={"Retry-After": "1"}),
    "not JSON": lambda r, e: httpx2.Response(200, content=b"<html>oops</html>"),
    "a JSON list": json_answer(200, [1, 2, 3]),
    "a job without an id": lambda r, e: httpx2.Response(
        200, json={k: v for k, v in relay_doc(e).items() if k != "id"}
    ),
    "a 404 that is a web page": lambda r, e: httpx2.Response(404, content=b"<h1>Not Found</h1>"),
    "a 422": json_answer(422, {"detail": "bad id"}),
}


@pytest.mark.parametrize("case", NEVER, ids=list(NEVER))
def test_answers_that_say_nothing_never_offer_it_again(case: str, tmp_path: Path) -> None:
    db = unconfirmed_entry(tmp_path)
    relay = Relay(NEVER[case], entry(db))
    report = sync(config(tmp_path), relay, retry_window=0)
    assert report.reoffered == 0 and relay.posts == [] and relay.lookups == 0
    after = entry(db)
    assert (after.state, after.remote_id, after.via) == ("synced", RELAY_ID, ENDPOINT)


@pytest.mark.parametrize("status, error", [(401, AuthError), (403, AuthError), (307, Redirected)])
def test_a_refused_key_or_a_redirect_stops_the_run_and_offers_nothing(
    status: int, error: type[Exception], tmp_path: Path
) -> None:
    db = unconfirmed_entry(tmp_path)

    def on_get(request: httpx2.Request, e: Entry) -> httpx2.Response:
        return httpx2.Response(status, headers={"location": "http://elsewhere.test/"})

    relay = Relay(on_get, entry(db))
    with pytest.raises(error):
        sync(config(tmp_path), relay)
    assert relay.posts == [] and entry(db).remote_id == RELAY_ID


def test_a_timeout_offers_nothing(tmp_path: Path) -> None:
    db = unconfirmed_entry(tmp_path)

    def on_get(request: httpx2.Request, e: Entry) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=request)

    relay = Relay(on_get, entry(db))
    try:
        sync(config(tmp_path), relay, retry_window=0)
    except Unreachable:
        pass  # every request timed out: the endpoint is unreachable, which is no verdict
    assert relay.posts == [] and entry(db).remote_id == RELAY_ID


def test_the_api_id_coming_back_confirms_the_entry(tmp_path: Path) -> None:
    db = unconfirmed_entry(tmp_path)
    relay = Relay(
        lambda r, e: httpx2.Response(
            200, json=relay_doc(e, relay="forwarded", upstream_id="api-9", upstream_status="Done")
        ),
        entry(db),
    )
    report = sync(config(tmp_path), relay)
    assert report.reoffered == 0 and report.refreshed == 1
    after = entry(db)
    assert after.confirmed and after.api_id == "api-9" and after.remote_status == "Done"
    # and a confirmed entry with a final status is not asked about again
    again = Relay(json_answer(404, {}), after)
    assert sync(config(tmp_path), again).reoffered == 0


def test_a_relay_that_says_the_api_refused_it_makes_it_rejected(tmp_path: Path) -> None:
    db = unconfirmed_entry(tmp_path)
    refused = relay_doc(entry(db), relay="rejected", error="HTTP 422: name: too long")
    relay = Relay(json_answer(200, {**refused, "status": "Error"}), entry(db))
    report = sync(config(tmp_path), relay)
    after = entry(db)
    assert after.state == "rejected" and "name: too long" in str(after.last_error)
    assert report.rejected == 1 and report.exit_code == 1 and relay.posts == []


def test_straight_to_the_api_a_clean_404_is_missing_and_never_resent(tmp_path: Path) -> None:
    db = unconfirmed_entry(tmp_path, via=None)
    relay = Relay(json_answer(404, {"detail": "Job not found"}), entry(db))
    report = sync(config(tmp_path), relay)
    assert report.missing == 1 and report.reoffered == 0 and relay.posts == []
    after = entry(db)
    assert after.state == "synced" and after.missing_at and after.confirmed


# --- the rule itself, answer by answer -------------------------------------------------------


def test_judge_and_moved_answer_by_answer(tmp_path: Path) -> None:
    e = entry(unconfirmed_entry(tmp_path))
    same = JobRef(RELAY_ID, "Queued", e.hash, e.experiment_id, {"relay": "forwarding"})
    assert judge(e, GONE).kind == "reoffer"  # type: ignore[union-attr]
    assert judge(e, same._replace(hash="x")).kind == "reoffer"  # type: ignore[union-attr]
    assert judge(e, same._replace(id="relay-2")).kind == "reoffer"  # type: ignore[union-attr]
    kept = judge(e, same)
    assert kept is not None and (kept.kind, kept.status, kept.upstream_id) == (
        "status", "Queued", None
    )  # fmt: skip
    assert moved(e, ENDPOINT) is None
    assert moved(e, "http://other.test").kind == "reoffer"  # type: ignore[union-attr]
    direct = Entry(**{**e.__dict__, "via": None})
    assert judge(direct, GONE).kind == "missing"  # type: ignore[union-attr]
    assert judge(direct, same._replace(hash="x")) is None  # not the job: nothing learnt
    assert moved(direct, "http://other.test") is None


# --- clocks ------------------------------------------------------------------------------


def a_year_ahead() -> str:
    return (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_an_entry_synced_under_a_clock_since_set_back_is_still_asked_about(
    tmp_path: Path,
) -> None:
    """The clock was a year ahead when the relay accepted the entry, then corrected: the
    entry is still asked about (a relay that lost it is noticed now, not in a year).
    """
    db = unconfirmed_entry(tmp_path)
    set_row(db, 1, synced_at=a_year_ahead())
    relay = Relay(json_answer(404, {"detail": "Job not found"}), entry(db))
    report = sync(config(tmp_path), relay)
    assert report.reoffered == 1 and len(relay.posts) == 1


def test_a_status_synced_under_a_clock_since_set_back_is_still_refreshed(
    tmp_path: Path,
) -> None:
    db = unconfirmed_entry(tmp_path, via=None)
    set_row(db, 1, synced_at=a_year_ahead())
    doc = {**relay_doc(entry(db)), "status": "Done"}
    doc.pop("info")  # the API's own answer
    report = sync(config(tmp_path), Relay(json_answer(200, doc), entry(db)))
    assert report.refreshed == 1 and entry(db).remote_status == "Done"


def test_a_relays_job_of_the_identity_with_other_content_is_another_job(tmp_path: Path) -> None:
    """A fresh relay may give the id an entry once had to a job of its identity with other
    content (another lab's): that is a loss, never a confirmation.
    """
    from logbook.jobs import content_key

    e = entry(unconfirmed_entry(tmp_path))
    ours = content_key(e.post_body())
    same = JobRef(RELAY_ID, "Queued", e.hash, e.experiment_id, {"relay": "queued"})
    held = same._replace(info={"relay": "queued", "content_key": ours})
    assert judge(e, held._replace(info={"relay": "queued", "content_key": "0" * 64})).kind == (  # type: ignore[union-attr]
        "reoffer"
    )
    assert judge(e, held).kind == "status"  # type: ignore[union-attr]
    assert judge(e, same).kind == "status"  # type: ignore[union-attr]  # an older relay
    # a circuit hash only one of them carries is no difference (the SDK sends it, a Result
    # file does not hold it); two that differ are
    assert judge(e, held._replace(circuit_id="c-1")).kind == "status"  # type: ignore[union-attr]
    with_circuit = Entry(**{**e.__dict__, "circuit_hash": "c-2"})
    assert judge(with_circuit, held).kind == "status"  # type: ignore[union-attr]
    assert judge(with_circuit, held._replace(circuit_id="c-1")).kind == "reoffer"  # type: ignore[union-attr]
    # taken as the relay stores it: an entry an older logbook wrote without metrics (None)
    # is the relay's job with {} (the relay's 409 says the same: else a loop of re-offers)
    bare = Entry(**{**e.__dict__, "metrics": None})
    stored = content_key(Entry(**{**e.__dict__, "metrics": {}}).post_body())
    assert content_key(bare.post_body()) != stored
    assert judge(bare, held._replace(info={"relay": "queued", "content_key": stored})).kind == (  # type: ignore[union-attr]
        "status"
    )
