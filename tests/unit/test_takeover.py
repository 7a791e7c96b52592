"""A run whose lease ran out while it was paused, on a store another host also syncs from.

Another host's run is trusted only until its lease expires (``owner_alive`` cannot
see its process): then a run here takes its entries over, flagged ``maybe_sent``.
When the paused run resumes it must find out before each POST (``still_ours``) and
post nothing it no longer holds, and it must settle nothing of what was taken.

The pause is the wall clock jumping past the lease while the first POST is in
flight (an ``httpx2.MockTransport`` plays the server); the takeover is a real
claim through a second connection to the same store file.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx2
import pytest
from support import entries, seed_store

from logbook.client import ApiClient
from logbook.engine import SyncEngine
from logbook.store import Store
from logbook.store.worker import StoreWorker

from .apimock import ENDPOINT, KEY, job_doc

LEASE = 60.0
#: Runs on another machine sharing the store's disk: their processes cannot be seen here.
PAUSED_RUN = "lab-pc-a:4242:777:aaaaaaaa"
TAKER = "lab-pc-b:99:555:bbbbbbbb"


def test_a_resumed_run_posts_and_settles_nothing_another_host_took_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = seed_store(tmp_path, 5)
    ids = [int(e["id"]) for e in entries(db)]
    real_time = time.time
    skew = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + skew[0])
    posted: list[str] = []
    taken: list[int] = []

    async def server(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        posted.append(body["hash"])
        if len(posted) == 1:
            # The run is paused (SIGSTOP, a sleeping laptop) past its lease, and the
            # other host's run finds the lease expired and takes every entry over.
            skew[0] += 2 * LEASE
            with Store(db) as other:
                claim = other.leases.claim(TAKER, 10, lease_seconds=LEASE)
            taken.extend(e.id for e in claim.entries)
        return httpx2.Response(200, json=job_doc(body, f"srv-{len(posted)}"))

    async def run() -> int:
        store = StoreWorker(str(db))
        client = ApiClient(ENDPOINT, KEY, transport=httpx2.MockTransport(server), deadline=60)
        engine = SyncEngine(store, client, concurrency=1, lease_seconds=LEASE)
        engine.owner = PAUSED_RUN
        try:
            return await asyncio.wait_for(engine.sync_once(ignore_backoff=True), 60)
        finally:
            engine.close()
            await client.aclose()
            store.close()

    assert asyncio.run(run()) == 5  # the run claimed all five before its pause
    assert taken == ids  # the taker got every entry, the one in flight included
    first = entries(db)[0]["hash"]
    assert posted == [first]  # only the POST already under way when the run was paused
    with Store(db, readonly=True) as store:
        rows = {e.id: e for e in store.entries()}
    for entry_id in ids:
        e = rows[entry_id]
        # Still the taker's, untouched by the resumed run: not settled, not released.
        assert (e.state, e.lease_owner) == ("sending", TAKER), e
        assert e.remote_id is None and e.attempts == 0 and e.maybe_sent, e
