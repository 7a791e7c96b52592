"""How fast to go: the jittered back-off and the adaptive limit on requests in flight.

Both are pure of I/O: the limit takes an injected clock and sleep, so its
pause is tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ..vocab import MAX_RETRY_DELAY

log = logging.getLogger("logbook.sync")

BASE_BACKOFF = 0.5
#: The longest back-off, and so the furthest ahead a next attempt is ever written
#: (a Retry-After is capped to it too): a retry time further ahead than this was
#: written under a clock that has since been set back, and is due now (``store.leases``).
MAX_BACKOFF = MAX_RETRY_DELAY


def backoff(
    attempts: int,
    retry_after: float | None = None,
    *,
    base: float = BASE_BACKOFF,
    cap: float = MAX_BACKOFF,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next try: exponential with full jitter, at least Retry-After.

    Full jitter spreads a fleet's retries after a shared failure (an entry's
    next try, and a watcher's next background run, both use it).
    """
    r = rng or random
    # The cap is reached long before 2**64; a larger power overflows a float (an entry
    # that has failed a thousand times must still get a delay, not an OverflowError).
    delay = r.uniform(0, min(cap, base * 2 ** min(max(0, attempts - 1), 64)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class AdaptiveLimit:
    """How many requests may be in flight, and when the next may start.

    Halves on 429/503 and creeps back up on success, and a 429 pauses every
    request of the run until its ``Retry-After`` (plus jitter) has passed: a
    fleet of lab machines coming online together backs off together instead
    of hammering the server, and does not come back in lockstep.
    """

    def __init__(
        self,
        maximum: int,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.rng = rng or random.Random()
        self.clock, self.sleep = clock, sleep  # injectable: tests run the pause on a fake clock
        self.paused_until = 0.0
        self._waiters: list[asyncio.Future[None]] = []
        self._last_cut = 0.0

    async def acquire(self) -> None:
        while True:
            pause = self.paused_until - self.clock()
            if pause > 0:
                await self.sleep(pause)
                continue
            if self.in_flight < max(1, int(self.limit)):
                break
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = max(1, int(self.limit)) - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / max(1.0, self.limit))
            self._wake()

    def overload(self, retry_after: float | None = None) -> None:
        now = self.clock()
        if retry_after:
            until = now + retry_after * self.rng.uniform(1.0, 1.5)
            self.paused_until = max(self.paused_until, until)
        if now - self._last_cut > 0.25:  # one cut per burst of refusals
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = now
            log.info("server overloaded: %d requests in flight at most", int(self.limit))
