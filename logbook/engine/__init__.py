"""The sync engine: every entry reaches the server exactly once.

Rooms, one concern each (dependencies point down the list):

- ``background.py``: ``BackgroundSyncer``, the watcher's and the relay's
  repeated runs, with back-off;
- ``run.py``: one ``logbook sync`` (``run_sync``): steps while retries fall
  due soon, then the refresh; SIGINT/SIGTERM, the time budget, ``dry_run``;
- ``core.py``: the exactly-once core, ``SyncEngine`` and its step (claim,
  send, settle);
- ``policy.py``: what a failed request's verdict makes the run do;
- ``limits.py``: the jittered back-off and the adaptive limit on requests
  in flight;
- ``report.py``: what a run did.

The store thread (``store.worker.StoreWorker``) lives beside the store.

Exactly-once rests on these rules, and the file that enforces each:

1. An entry is claimed (``sending`` with a lease) in a short transaction,
   sent outside any transaction, and settled in another; no other run takes
   an entry that a live run holds (``store/leases.py``).
2. Right before each POST the run checks its lease still stands; once it has
   run out (the process was paused), it renews what it still holds and drops
   the rest unposted (``core.py``: ``_Step.still_ours`` and ``_Step.renew``).
3. Whenever an earlier send may have reached the server (timeout after
   sending, dropped connection, 5xx, unreadable 2xx, a run interrupted or
   killed mid-request), the entry carries ``maybe_sent`` and is looked up by
   ``(experiment_id, hash)`` before it is posted again (``core.py``:
   ``SyncEngine.deliver``); a look-up must answer with the same experiment
   and hash to count (``client``).
4. 401/403, a redirect, a 404 on ``POST /jobs``, a certificate that does not
   verify and an unreachable endpoint stop the run: entries not yet answered
   go back exactly as they were (``policy.py``).
5. Only an entry's own run settles it: an outcome changes an entry only while
   that run still holds it (``store/leases.py``: ``Leases.settle``).

The store lives on one thread of its own (sqlite3 connections are bound to
their thread) so its fsyncs never stall the event loop; outcomes are written
in batches, one transaction for many responses.  A busy store is retried.
"""

from __future__ import annotations

from .background import BackgroundSyncer
from .core import LEASE_SECONDS, SyncEngine
from .limits import BASE_BACKOFF, MAX_BACKOFF, AdaptiveLimit, backoff
from .policy import MAX_TIMEOUTS, Action, decide
from .report import SyncReport
from .run import MAX_STALLS, RETRY_WINDOW, dry_run, event_loop_factory, require, run_sync

__all__ = [
    "BASE_BACKOFF",
    "LEASE_SECONDS",
    "MAX_BACKOFF",
    "MAX_STALLS",
    "MAX_TIMEOUTS",
    "RETRY_WINDOW",
    "Action",
    "AdaptiveLimit",
    "BackgroundSyncer",
    "SyncEngine",
    "SyncReport",
    "backoff",
    "decide",
    "dry_run",
    "event_loop_factory",
    "require",
    "run_sync",
]
