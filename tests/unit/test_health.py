"""Whether logbook delivers: the verdict, the figures behind it, and their Prometheus text.

The rules: readiness follows the age of the oldest entry the API does not
have yet (an entry a relay accepted without passing the API's id back is not
delivered); the last delivery is when an entry reached the API, whichever
process delivered it; the metrics hold counts, ages and names, never a job.
"""

from __future__ import annotations

import html
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import prepared_job as job

from logbook.health import Figures, Snapshot, exposition, summary, verdict, write_textfile
from logbook.server.metrics import render
from logbook.store import Store
from logbook.store.leases import Outcome, Refreshed


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


NOW = 1_800_000_000.0


def figures(pending: int = 0, oldest_age: float | None = None, **kw: object) -> Figures:
    f = Figures(**kw)  # type: ignore[arg-type]
    f.counts["pending"] = pending
    if oldest_age is not None:
        f.oldest_undelivered = iso(NOW - oldest_age)
    return f


# --- the verdict -----------------------------------------------------------------------------


def test_nothing_undelivered_is_ready() -> None:
    v = verdict(figures(), max_lag=60, now=NOW)
    assert v.ready and v.line == "ready: nothing undelivered"


def test_ready_while_the_oldest_is_younger_than_the_max_lag() -> None:
    v = verdict(figures(3, oldest_age=59), max_lag=60, now=NOW)
    assert v.ready and v.line.startswith("ready: 3 undelivered, the oldest 59s old")


def test_not_ready_once_the_oldest_is_older_than_the_max_lag() -> None:
    f = figures(3, oldest_age=7300, last_contact=iso(NOW - 7500))
    v = verdict(f, max_lag=3600, now=NOW)
    assert not v.ready
    assert v.line == (
        "not ready: 3 undelivered, the oldest 2h 1m old, over the max lag of 1h 0m;"
        " last upstream contact 2h 5m ago"
    )


def test_not_ready_when_something_waits_behind_an_upstream_silent_past_the_max_lag() -> None:
    f = figures(1, oldest_age=10, last_contact=iso(NOW - 7500))  # a fresh job, a silent API
    v = verdict(f, max_lag=3600, now=NOW)
    assert not v.ready
    assert v.line == (
        "not ready: 1 undelivered, the oldest 10s old; last upstream contact 2h 5m ago,"
        " over the max lag of 1h 0m"
    )
    assert verdict(figures(1, oldest_age=10, last_contact=iso(NOW - 30)), 3600, NOW).ready
    # a delivery is an answer: a long run delivering as it goes is not silent
    f = figures(1, oldest_age=10, last_contact=iso(NOW - 7500), last_delivery=iso(NOW - 5))
    assert verdict(f, 3600, NOW).ready
    # nothing waiting: an idle daemon that has asked nothing for a day is ready
    assert verdict(figures(last_contact=iso(NOW - 86400)), 3600, NOW).ready


def test_an_entry_a_relay_holds_without_the_apis_id_is_undelivered() -> None:
    f = Figures(unconfirmed=2, oldest_undelivered=iso(NOW - 100))
    v = verdict(f, max_lag=60, now=NOW)
    assert not v.ready and "2 undelivered" in v.line and "no upstream contact yet" in v.line


def test_systemds_status_line_changes_only_when_something_happens() -> None:
    f = figures(4, oldest_age=30, last_delivery=iso(NOW - 10))
    first = summary(f, verdict(f, 60, NOW))
    later = summary(f, verdict(f, 60, NOW + 5))
    assert first == later
    assert first.startswith("ready: 4 undelivered (oldest recorded ")
    assert "last delivery 2027-01-15 08:00:00Z" in summary(
        f := figures(last_delivery="2027-01-15T08:00:00.123456Z"), verdict(f, 60, NOW)
    )
    late = summary(g := figures(1, oldest_age=100), verdict(g, 60, NOW))
    assert late.startswith("NOT READY: 1 undelivered")


# --- the store's figures -----------------------------------------------------------------------


def settle_all(store: Store, owner: str, **outcome: object) -> None:
    claim = store.leases.claim(owner, 100, lease_seconds=60)
    store.leases.settle(owner, [Outcome(e.id, "synced", **outcome) for e in claim.entries])  # type: ignore[arg-type]


def test_a_delivery_is_kept_in_the_store_for_every_process(store: Store, owner: str) -> None:
    assert store.figures().last_delivery is None
    store.record(job(1))
    before = time.time()
    settle_all(store, owner, remote_id="r1", remote_status="Submitted")
    f = store.figures()
    assert f.last_delivery is not None and f.counts["synced"] == 1
    assert datetime.fromisoformat(f.last_delivery).timestamp() >= before - 1


def test_an_entry_a_relay_accepted_is_delivered_when_its_api_id_comes_back(
    store: Store, owner: str
) -> None:
    entry, _ = store.record(job(1))
    # what the sync records for an entry a relay accepted
    settle_all(store, owner, remote_id="relay-5", remote_status="Submitted", via="http://relay")
    f = store.figures()
    assert f.last_delivery is None, "a relay holding it is not the API having it"
    assert f.unconfirmed == 1 and f.undelivered == 1 and f.oldest_undelivered == entry.created_at
    store.leases.refreshed([Refreshed(entry.id, "status", "Submitted", "api-77")])
    f = store.figures()
    assert f.unconfirmed == 0 and f.undelivered == 0 and f.last_delivery is not None
    first = f.last_delivery
    time.sleep(0.01)
    store.leases.refreshed([Refreshed(entry.id, "status", "Done", "api-77")])  # a later refresh
    assert store.figures().last_delivery == first, "only the first confirmation is a delivery"


def test_the_oldest_undelivered_is_the_oldest_of_pending_and_unconfirmed(
    store: Store, owner: str
) -> None:
    first, _ = store.record(job(1))
    store.record(job(2))
    assert store.figures().oldest_undelivered == first.created_at
    claim = store.leases.claim(owner, 1, lease_seconds=60)
    store.leases.settle(
        owner, [Outcome(claim.entries[0].id, "synced", remote_id="relay-1", via="http://relay")]
    )
    f = store.figures()
    assert f.counts["pending"] == 1 and f.unconfirmed == 1
    assert f.oldest_undelivered == first.created_at


# --- the Prometheus text -----------------------------------------------------------------------


def snapshot(**kw: object) -> Snapshot:
    f = figures(2, oldest_age=90, last_delivery=iso(NOW - 5), last_contact=iso(NOW - 3))
    f.counts["synced"] = 7
    base: dict[str, object] = {
        "role": "relay", "version": "9.9.9", "figures": f, "max_lag": 60.0, "now": NOW,
        "requests": {"200": 7, "503": 2, "error": 1},
        "relay_requests": {("lab-1", "200"): 5, ("", "401"): 1}, "clients_seen": {"lab-1": NOW},
    }  # fmt: skip
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_have_the_contracts_names() -> None:
    body, content_type = exposition(snapshot())
    assert content_type.startswith("text/plain")
    got = samples(body.decode())
    assert got[("logbook_entries", (("state", "pending"),))] == 2
    assert got[("logbook_entries", (("state", "synced"),))] == 7
    assert got[("logbook_unconfirmed_entries", ())] == 0
    assert got[("logbook_oldest_undelivered_age_seconds", ())] == 90
    assert got[("logbook_last_delivery_timestamp_seconds", ())] == NOW - 5
    assert got[("logbook_http_requests_total", (("code", "503"),))] == 2
    assert got[("logbook_http_requests_total", (("code", "error"),))] == 1
    assert got[("logbook_build_info", (("version", "9.9.9"),))] == 1
    assert got[("logbook_relay_requests_total", (("client", "lab-1"), ("code", "200")))] == 5
    assert got[("logbook_relay_upstream_last_contact_timestamp_seconds", ())] == NOW - 3
    assert got[("logbook_ready", ())] == 0  # 90 s old, 60 s allowed
    # before any request: the requests counter has a sample all the same
    fresh = samples(exposition(snapshot(requests={}))[0].decode())
    assert fresh[("logbook_http_requests_total", (("code", "error"),))] == 0


def test_a_watcher_has_no_relay_metrics() -> None:
    text = exposition(snapshot(role="watch", relay_requests=None))[0].decode()
    assert "logbook_relay_" not in text and "logbook_entries" in text


def test_the_textfile_is_the_same_text_written_atomically(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "logbook.prom"  # type: ignore[operator]
    write_textfile(str(path), snapshot(role="sync", relay_requests=None))
    assert samples(path.read_text())[("logbook_entries", (("state", "synced"),))] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["logbook.prom"]  # type: ignore[attr-defined]


# --- the status page ---------------------------------------------------------------------------


def test_the_page_shows_the_verdict_figures_and_clients() -> None:
    page = render(snapshot())
    assert "<script" not in page.lower()
    assert html.escape(snapshot().verdict.line) in page
    assert 'class="verdict bad"' in page
    assert "lab-1" in page and "no valid key" in page
    assert ">503</span>" in page


def test_the_page_escapes_what_it_shows() -> None:
    """A file name in a warning is shown, never run: it may hold markup."""
    evil = '<img src=x onerror="alert(1)">.json'
    page = render(snapshot(errors=[(NOW, "warning", f"invalid {evil}: not JSON")],
                           relay_requests={("<b>x</b>", "200"): 1}))  # fmt: skip
    assert evil not in page and "<b>x</b>" not in page
    assert html.escape(evil) in page


@pytest.mark.parametrize("extra", [{}, {"role": "watch", "relay_requests": None}])
def test_nothing_of_a_job_reaches_the_metrics_or_the_page(
    store: Store, owner: str, extra: dict[str, object]
) -> None:
    """Only counts, ages, times and client names: no experiment, name, result or hash."""
    store.record(job("SECRETNAME", experiment="SECRETEXP", results='{"SECRETRESULT": 1}'))
    settle_all(store, owner, remote_id="SECRETREMOTEID", remote_status="Done")
    entry = store.get(1)
    snap = snapshot(figures=store.figures(), **extra)
    shown = exposition(snap)[0].decode() + render(snap) + json.dumps(snap.verdict.line)
    for word in ("SECRETNAME", "SECRETEXP", "SECRETRESULT", "SECRETREMOTEID", entry.hash):
        assert word not in shown


def test_a_scraper_that_asks_for_openmetrics_gets_it() -> None:
    body, content_type = exposition(snapshot(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert "logbook_relay_requests_total" in body.decode()


class SlowStore:
    """A store whose figures take ``cost`` seconds of the monitor's clock to read."""

    def __init__(self, cost: float, clock: list[float]) -> None:
        self.cost, self.clock, self.reads = cost, clock, 0
        self.store = self

    def figures(self) -> Figures:
        self.reads += 1
        self.clock[0] += self.cost
        return Figures()

    async def run(self, fn: Any) -> Any:
        return fn()


@pytest.mark.parametrize("cost, reads", [(0.001, 4), (0.2, 1)])
def test_a_slow_read_of_the_figures_is_reused_for_a_while(
    monkeypatch: pytest.MonkeyPatch, cost: float, reads: int
) -> None:
    """Scraped every second, a monitor whose figures take 200 ms to read (a great many
    unconfirmed entries) reuses them for 20 times that (4 s), not a fast read."""
    import asyncio

    from logbook import monitor
    from logbook.config import load_config
    from logbook.notify import Notifier

    clock = [1000.0]
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    m = monitor.Monitor(load_config(), role="watch", version="x", notifier=Notifier())
    m._db = SlowStore(cost, clock)  # type: ignore[assignment]

    async def scrapes() -> None:
        for _ in range(4):  # 0, 1, 2, 3 s: within the 4 s a slow read is kept
            await m.snapshot()
            clock[0] += 1.0

    asyncio.run(scrapes())
    assert m._db.reads == reads  # type: ignore[union-attr]
