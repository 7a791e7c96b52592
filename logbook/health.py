"""Whether logbook delivers: the figures, the one verdict, and the Prometheus text of both.

A daemon that is up but has delivered nothing for a week is the failure that
matters, so readiness follows the age of the oldest entry the API does not
have yet (pending, being sent, or accepted by a relay whose API id has not
come back), never the process being alive.  The same verdict line is what
``/readyz`` answers, what ``status`` and ``relay status`` print, and what
systemd's status line starts with: ``verdict()`` computes it, once.

The Prometheus text (for ``/metrics`` and for node_exporter's textfile
collector) is written by ``prometheus_client``; nothing here formats it by
hand.  It holds counts, ages, times and client names: never a job's content.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import DEFAULT_MAX_LAG
from .vocab import STATES

__all__ = ["DEFAULT_MAX_LAG", "Figures", "Snapshot", "Verdict", "summary", "verdict"]


@dataclass
class Figures:
    """What the store says about delivery (``Store.figures()``: a few indexed reads)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    #: Synced through a relay whose API id has not come back: not delivered yet.
    unconfirmed: int = 0
    #: When the oldest undelivered entry was recorded (ISO 8601 UTC), if there is one.
    oldest_undelivered: str | None = None
    last_delivery: str | None = None
    last_contact: str | None = None
    last_sync: str | None = None
    #: Synced entries the API no longer has.
    missing: int = 0

    @property
    def undelivered(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("sending", 0) + self.unconfirmed


@dataclass(frozen=True)
class Verdict:
    ready: bool
    line: str


def timestamp(iso: str | None) -> float | None:
    """Seconds since the epoch of a time the store keeps (ISO 8601 UTC), or None."""
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def age_text(seconds: float) -> str:
    """``45s``, ``3m 20s``, ``2h 5m``, ``3d 4h``: an age a person reads at a glance."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def oldest_age(f: Figures, now: float) -> float:
    """Seconds the oldest undelivered entry has waited (0: nothing waits)."""
    oldest = timestamp(f.oldest_undelivered)
    return 0.0 if oldest is None or not f.undelivered else max(0.0, now - oldest)


def verdict(f: Figures, max_lag: float = DEFAULT_MAX_LAG, now: float | None = None) -> Verdict:
    """Ready while the oldest undelivered entry is younger than ``max_lag`` seconds, and the
    upstream has answered within that time whenever something waits.

    A fresh entry behind an upstream silent for hours is not delivered soon, whatever its
    own age; with nothing waiting, a quiet upstream is no fault (an idle daemon asks nothing).
    """
    now = time.time() if now is None else now
    if not f.undelivered:
        return Verdict(True, "ready: nothing undelivered")
    age = oldest_age(f, now)
    said = f"{f.undelivered} undelivered, the oldest {age_text(age)} old"
    # a delivery is an answer too: a run's contact is stored when it ends, its deliveries
    # as they settle (a run forwarding a great backlog for hours is not silent)
    heard = [t for t in (timestamp(f.last_contact), timestamp(f.last_delivery)) if t is not None]
    silent = max(0.0, now - max(heard)) if heard else None
    if age <= max_lag and (silent is None or silent <= max_lag):
        return Verdict(True, f"ready: {said} (max lag {age_text(max_lag)})")
    upstream = (
        f"last upstream contact {age_text(silent)} ago" if silent is not None
        else "no upstream contact yet"
    )  # fmt: skip
    if age <= max_lag:
        return Verdict(
            False, f"not ready: {said}; {upstream}, over the max lag of {age_text(max_lag)}"
        )
    return Verdict(False, f"not ready: {said}, over the max lag of {age_text(max_lag)}; {upstream}")


def _clock(iso: str | None) -> str:
    """A stored time as ``2026-11-29 12:03:04Z`` (to the second), or ``never``."""
    when = timestamp(iso)
    if when is None:
        return "never"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def summary(f: Figures, v: Verdict) -> str:
    """systemd's one-line status: the verdict, the backlog, the oldest, the last delivery.

    Times, not ages, so that the line changes only when something happens.
    """
    head = "ready" if v.ready else "NOT READY"
    backlog = (
        f"{f.undelivered} undelivered (oldest recorded {_clock(f.oldest_undelivered)})"
        if f.undelivered
        else "nothing undelivered"
    )
    return f"{head}: {backlog}; last delivery {_clock(f.last_delivery)}"


# --- the Prometheus text --------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything one scrape, status page or textfile shows, read at one moment."""

    role: str  # watch, relay or sync
    version: str
    figures: Figures
    max_lag: float = DEFAULT_MAX_LAG
    now: float = field(default_factory=time.time)
    #: The client's requests by status code ("error": no answer), this process's.
    requests: Mapping[str, int] = field(default_factory=dict)
    #: The relay's requests by (client name, status code).
    relay_requests: Mapping[tuple[str, str], int] | None = None
    #: The relay's clients: when each last sent a request (epoch seconds).
    clients_seen: Mapping[str, float] = field(default_factory=dict)
    #: The last warnings and errors logged: (epoch seconds, level, redacted message).
    errors: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        return verdict(self.figures, self.max_lag, self.now)


class _Collector:
    """prometheus_client's custom-collector shape over one snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        s, f = self.snap, self.snap.figures
        entries = GaugeMetricFamily("logbook_entries", "Entries in the store by state.",
                                    labels=["state"])  # fmt: skip
        for state in STATES:
            entries.add_metric([state], f.counts.get(state, 0))
        yield entries
        yield GaugeMetricFamily(
            "logbook_unconfirmed_entries",
            "Entries a relay accepted whose API id has not come back (not delivered yet).",
            value=f.unconfirmed,
        )
        yield GaugeMetricFamily(
            "logbook_missing_entries", "Synced entries the API no longer has.", value=f.missing
        )
        yield GaugeMetricFamily(
            "logbook_oldest_undelivered_age_seconds",
            "Age of the oldest entry the API does not have yet (0: none).",
            value=oldest_age(f, s.now),
        )
        yield GaugeMetricFamily(
            "logbook_last_delivery_timestamp_seconds",
            "When an entry last reached the API (0: never).",
            value=timestamp(f.last_delivery) or 0.0,
        )
        yield GaugeMetricFamily(
            "logbook_last_sync_timestamp_seconds",
            "When the last sync run ended (0: never).",
            value=timestamp(f.last_sync) or 0.0,
        )
        yield GaugeMetricFamily(
            "logbook_ready",
            "1 while the oldest undelivered entry is younger than the max lag (what /readyz says).",
            value=1.0 if s.verdict.ready else 0.0,
        )
        codes = CounterMetricFamily(
            "logbook_http_requests", "Requests to the API (or upstream) by status code"
            " (error: no answer).", labels=["code"],
        )  # fmt: skip
        # "error" (no answer) is always there, at 0 until one happens: a counter with a sample
        # from the start, so a rate() or an alert on it never sees an absent series
        for code, n in sorted({"error": 0, **s.requests}.items()):
            codes.add_metric([code], n)
        yield codes
        yield InfoMetricFamily("logbook_build", "logbook's version.", value={"version": s.version})
        if s.relay_requests is not None:
            yield from self._relay(f)

    def _relay(self, f: Figures) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        assert self.snap.relay_requests is not None
        by_client = CounterMetricFamily(
            "logbook_relay_requests", "Requests lab machines sent the relay, by client (a relay"
            " key's name; empty: no valid key) and status code.", labels=["client", "code"],
        )  # fmt: skip
        for (client, code), n in sorted(self.snap.relay_requests.items()):
            by_client.add_metric([client, code], n)
        yield by_client
        yield GaugeMetricFamily(
            "logbook_relay_upstream_last_contact_timestamp_seconds",
            "When the upstream last answered the relay's forwarding (0: never).",
            value=timestamp(f.last_contact) or 0.0,
        )


def registry(snap: Snapshot) -> Any:
    """A prometheus_client registry holding this snapshot alone."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(snap))  # type: ignore[arg-type]
    return reg


def exposition(snap: Snapshot, accept: str | None = None) -> tuple[bytes, str]:
    """A snapshot in the format the scraper's ``Accept`` asks for (Prometheus text, or
    OpenMetrics), and its content type: prometheus_client chooses and writes it."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry(snap)), content_type


def write_textfile(path: str, snap: Snapshot) -> None:
    """For node_exporter's textfile collector: written aside, then renamed (atomic)."""
    from prometheus_client import write_to_textfile

    write_to_textfile(path, registry(snap))
