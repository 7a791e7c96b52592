"""The status refresh, and what each answer says about where a job is.

A synced entry is asked about again (``GET /jobs/{id}``) while its server
status is unfinished, and, when a relay accepted it, until the API's id comes
back through the relay (``info.upstream_id``): until then it is not
confirmed.  ``judge`` is the rule, kept pure so that every answer is tested:

- the relay no longer holds the job (a clean 404, or a well-formed job that is
  another one under that id: its disk was replaced, its store restored from an
  older backup, a fresh relay on the same address), or the endpoint is no
  longer that relay: the entry is offered again, as an uncertain one (looked
  up by ``(experiment_id, hash)`` first, posted only if not found);
- the relay says the API refused it: ``rejected`` with the API's reason;
- straight to the API, a clean 404 means the API no longer has the job: it is
  noted (``status``, ``doctor``), never re-sent on its own (a person may have
  deleted it; ``logbook retry --missing`` sends it again);
- anything else (a 5xx, a timeout, a 401, a redirect, an answer that is not a
  job) is an error for that entry, never a re-offer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..client import GONE, JobRef
from ..errors import RequestFailed
from ..store import Entry
from ..store.leases import Refreshed
from .policy import Action

if TYPE_CHECKING:
    from .core import SyncEngine

log = logging.getLogger("logbook.sync")

PAGE = 500
#: The ``-v`` line of each kind of news, with how many entries and which relay.
_SAID = {
    "moved": "offering %d entries again: the relay at %s that accepted them is no longer the"
    " endpoint (each is looked up first)",
    "reoffer": "offering %d entries again: the relay at %s no longer holds them (each is"
    " looked up first)",
    "rejected": "%d entries rejected: the API refused them, says the relay at %s",
    "missing": "%d synced jobs are no longer at the API%s: they are never re-sent on their own"
    " (`logbook retry --missing`)",
}


def unconfirmed(entry: Entry) -> bool:
    return entry.state == "synced" and entry.via is not None and entry.upstream_id is None


def moved(entry: Entry, endpoint: str) -> Refreshed | None:
    """An unconfirmed entry whose relay is no longer the endpoint: offered again, unasked."""
    if unconfirmed(entry) and entry.via != endpoint:
        where = f"the relay at {entry.via}" if entry.via else "a relay"
        return Refreshed(
            entry.id, "reoffer",
            reason=f"offered again: accepted by {where}, which is no longer the endpoint"
            f" ({endpoint}); looked up there first",
        )  # fmt: skip
    return None


def judge(entry: Entry, answer: JobRef | str) -> Refreshed | None:
    """What a refresh answer means for ``entry`` (None: nothing to learn from it)."""
    relayed = unconfirmed(entry)
    if answer == GONE:
        if relayed:
            return _reoffer(entry, f"the relay at {entry.via} no longer has {entry.remote_id}")
        return Refreshed(entry.id, "missing")
    assert isinstance(answer, JobRef)
    same = (
        answer.id == entry.remote_id
        and answer.hash == entry.hash
        and answer.experiment_id in (None, entry.experiment_id)
        and not (relayed and answer.holds_other_content(entry.post_body()))
    )
    if not same:
        if relayed:
            return _reoffer(
                entry, f"the relay at {entry.via} holds another job under {entry.remote_id}"
            )
        return None  # not the job asked for: nothing to learn from it
    refused = answer.refused_upstream
    if relayed and refused is not None:
        return Refreshed(
            entry.id, "rejected", status=answer.status,
            reason=f"the API refused it (the relay at {entry.via} says): {refused}",
        )  # fmt: skip
    return Refreshed(entry.id, "status", status=answer.status, upstream_id=answer.upstream_id)


def _reoffer(entry: Entry, why: str) -> Refreshed:
    return Refreshed(entry.id, "reoffer", reason=f"offered again: {why}; looked up first")


class Refresher:
    """One refresh pass of a run: confirmed entries with unfinished statuses, then every
    unconfirmed one.
    """

    def __init__(self, engine: SyncEngine, synced_before: str) -> None:
        self.e = engine
        self.synced_before = synced_before
        self.news: Counter[tuple[str, str]] = Counter()

    async def run(self) -> int:
        """Ask, write what was learnt; returns how many statuses were refreshed."""
        e, before = self.e, self.synced_before
        leases = e.leases
        due = await e.db.run(leases.count_unfinished_remote, before)
        due += await e.db.run(leases.count_unconfirmed, before)
        e.progress.begin("refreshing", due)
        refreshed = 0
        # Each walks its pages from where the last one ended: by id, and by the order a
        # relay accepted them (``unconfirmed`` walks its partial index).
        passes: tuple[tuple[Callable[..., list[Entry]], Callable[[Entry], Any], Any], ...] = (
            (leases.unfinished_remote, lambda x: x.id, 0),
            (leases.unconfirmed, lambda x: (x.synced_at, x.id), ("", 0)),
        )
        for pick, cursor, after in passes:
            while not e.stopped:
                entries = await e.db.run(pick, PAGE, after, before)
                if not entries:
                    break
                after = cursor(entries[-1])
                found = await asyncio.gather(*(self._one(x) for x in entries))
                written = await e.db.run(leases.refreshed, [f for f in found if f is not None])
                refreshed += written.get("status", 0)
                e.report.reoffered += written.get("reoffer", 0)
                e.report.missing += written.get("missing", 0)
                e.report.rejected += written.get("rejected", 0)
                e.progress.done += len(entries)
        for (kind, via), n in sorted(self.news.items()):
            log.info(_SAID[kind], n, via)
        return refreshed

    async def _one(self, entry: Entry) -> Refreshed | None:
        e = self.e
        if e.stopped:
            return None
        found = moved(entry, e.client.endpoint)
        if found is not None:
            self.news["moved", entry.via or "(an unknown address)"] += 1
        else:
            await e.limit.acquire()
            try:
                answer = await e.client.get_job(str(entry.remote_id))
            except RequestFailed as failure:
                if e.judge(failure) is not Action.STOP:
                    e.report.add_error(str(failure))
                return None
            finally:
                e.limit.release()
            e.any_success = True
            found = judge(entry, answer)
            if found is not None and found.kind != "status":
                self.news[found.kind, entry.via or ""] += 1
        if found is not None and found.kind != "status":
            log.debug("entry %d: %s", entry.id, found.reason or found.kind)
        return found
