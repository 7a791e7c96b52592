"""A store on a thread of its own, for code that runs on an event loop (the sync, the relay).

sqlite3 connections are bound to the thread that made them, and a commit's
fsync must never stall the loop: every call runs on the one store thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from ..errors import StoreBusy
from . import Store

log = logging.getLogger("logbook.store")
T = TypeVar("T")
P = ParamSpec("P")

#: How long a busy store is retried before a run gives up on it.
STORE_BUSY_PATIENCE = 120.0


class StoreWorker:
    """A Store on a thread of its own; the event loop calls it without blocking.

    A busy store (another process holding the write lock) is retried with
    back-off for up to ``patience`` seconds before the run gives up.
    """

    def __init__(self, path: str, patience: float = STORE_BUSY_PATIENCE) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logbook-store")
        self.store: Store = self._ex.submit(Store, path).result()
        self.patience = patience

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                return await loop.run_in_executor(self._ex, partial(fn, *args, **kwargs))
            except StoreBusy:
                if time.monotonic() > deadline:
                    raise
                log.info("the store is busy (another process holds it); retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        try:
            self._ex.submit(self.store.close).result()
        finally:
            self._ex.shutdown(wait=True)
