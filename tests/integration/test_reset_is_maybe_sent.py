"""A connection lost once the request went out is "maybe sent", through the whole stack.

A real socket server (``adversary.py``) reads the POST and resets the connection
(a read error), or resets while the body is still being written (a write error).
``ApiClient`` over its default transport must call either one ``MAYBE_SENT`` (the
job may be stored), never ``NOT_SENT``; and the sync engine must then look the
entry up before it posts it again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from adversary import Adversary
from support import entries, seed_store

from logbook.client import ApiClient
from logbook.engine import SyncEngine
from logbook.errors import RequestFailed, Verdict
from logbook.store import Store
from logbook.store.worker import StoreWorker

KEY = "k+ey/with=chars+/="
#: The read error: the whole request was read, then RST.  The write error: RST after
#: the head, while a body too large for the socket buffers is still being written.
RESETS = {"reset": 0, "reset_before_body": 32 * 1024 * 1024}


@pytest.fixture
def adv() -> Iterator[Adversary]:
    with Adversary() as a:
        yield a


@pytest.mark.parametrize("mode", list(RESETS))
def test_a_reset_after_the_request_went_out_is_maybe_sent(adv: Adversary, mode: str) -> None:
    adv.mode = mode
    body = {"experiment_id": "e", "hash": "h1", "results": "x" * RESETS[mode]}

    async def post() -> RequestFailed:
        async with ApiClient(adv.url(""), KEY, deadline=30) as client:
            with pytest.raises(RequestFailed) as info:
                await client.submit(body)
            return info.value

    failure = asyncio.run(post())
    assert adv.count("POST") == 1  # it reached the server
    assert failure.verdict is Verdict.MAYBE_SENT, (failure.verdict, str(failure))
    assert failure.maybe_sent
    assert KEY not in str(failure)


def test_after_a_reset_the_next_sync_looks_the_entry_up_before_posting_again(
    adv: Adversary, tmp_path: Path
) -> None:
    db = seed_store(tmp_path, 1)
    (entry,) = entries(db)
    # The POST is reset; then the look-up finds nothing (404) and the POST goes through.
    adv.mode = ["reset", "not_found", "ok"]

    async def one_run() -> None:
        store = StoreWorker(str(db))
        client = ApiClient(adv.url(""), KEY, deadline=30)
        engine = SyncEngine(store, client, concurrency=1)
        try:
            await engine.sync_once(ignore_backoff=True)
        finally:
            engine.close()
            await client.aclose()
            store.close()

    asyncio.run(one_run())
    (after_reset,) = entries(db)
    assert after_reset["state"] == "pending" and after_reset["attempts"] == 1
    with Store(db, readonly=True) as store:
        assert store.get(entry["id"]).maybe_sent  # it may be on the server
    asyncio.run(one_run())
    (done,) = entries(db)
    assert done["state"] == "synced" and done["remote_id"] == "job-1"
    methods = [(r.method, r.target.split("?")[0]) for r in adv.requests]
    lookup = f"/experiments/{entry['experiment_id']}/jobs/{entry['hash']}"
    assert methods == [("POST", "/jobs"), ("GET", lookup), ("POST", "/jobs")]
    assert json.loads(adv.requests[-1].body)["hash"] == entry["hash"]
