"""How fast to go: the jittered back-off and the adaptive limit on requests in flight.

Both are pure of I/O: the limit takes an injected clock and sleep, so its
pause is tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
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


#: A whole run pauses only when the server refuses this share of the recent answers (a real
#: limit, or an overload): a 429 here and there pauses only the request that got it.
PAUSE_SHARE = 0.5
#: The recent answers that share is judged over: at most this many...
WINDOW_ANSWERS = 20
#: ...within this many seconds, and at least this many of them (fewer: no judgement yet).
WINDOW_SECONDS = 2.0
MIN_ANSWERS = 10
#: At most one concurrency cut per this many seconds: a burst of refusals is one signal,
#: and random ones must not grind the limit down to one request at a time.
CUT_INTERVAL = 1.0
#: A pause asked for with no Retry-After lasts this long (plus jitter).
DEFAULT_PAUSE = 1.0


class AdaptiveLimit:
    """How many requests may be in flight, and when the next may start.

    The policy, measured (``bench/bench_throttle.py``, ``bench/fleet.py``):

    - A 429 (or 503) pauses the request that got it: its entry waits at least
      the Retry-After (the engine's back-off).  It also halves the requests in
      flight, at most once per ``CUT_INTERVAL``; they creep back up on success.
    - The whole run pauses only when refusals repeat: ``PAUSE_SHARE`` of the
      recent answers (``WINDOW_ANSWERS`` within ``WINDOW_SECONDS``).  Then no
      request starts until the longest Retry-After seen (plus up to half again
      as jitter) has passed: a fleet coming online together against a real
      rate limit backs off together, and does not come back in lockstep.

    Before, every 429 paused the whole run: 10% random 429s with a one-second
    Retry-After made a 5,000-entry sync take ten minutes.

    ``on_pause(seconds, why)`` is told of each pause of the run (the progress
    line shows it).  Pure of I/O: the clock and sleep are injected, so the
    pause is tested on a fake clock.
    """

    def __init__(
        self,
        maximum: int,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_pause: Callable[[float, str], None] | None = None,
    ) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.rng = rng or random.Random()
        self.clock, self.sleep = clock, sleep  # injectable: tests run the pause on a fake clock
        self.on_pause = on_pause
        self.paused_until = 0.0
        #: When the last refusal came (the run's own waits say "Retry-After" after one).
        self.last_overload = -1e9
        self._waiters: list[asyncio.Future[None]] = []
        self._last_cut = -1e9
        #: The recent answers: (when, refused, its Retry-After).
        self._recent: deque[tuple[float, bool, float | None]] = deque(maxlen=WINDOW_ANSWERS)

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
        self._recent.append((self.clock(), False, None))
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / max(1.0, self.limit))
            self._wake()

    def overload(self, retry_after: float | None = None, *, rate_limited: bool = True) -> None:
        """The server refused a request (429, 503): fewer in flight, and, when refusals
        repeat, a pause of the whole run.

        A 503 that asks for no wait (``rate_limited=False``, no Retry-After) says the
        server is failing, not that it wants this client slower: it cuts the requests
        in flight but never pauses the run, so a run against a broken server ends soon.
        """
        now = self.clock()
        self.last_overload = now
        self._recent.append((now, rate_limited or retry_after is not None, retry_after))
        if now - self._last_cut >= CUT_INTERVAL:
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = now
            log.info("server overloaded: %d requests in flight at most", int(self.limit))
        recent = [r for r in self._recent if r[0] >= now - WINDOW_SECONDS]
        refused = [r for r in recent if r[1]]
        if len(recent) < MIN_ANSWERS or len(refused) < PAUSE_SHARE * len(recent):
            return
        asked = [r[2] for r in refused if r[2]]
        wait = max(asked, default=DEFAULT_PAUSE)
        until = now + wait * self.rng.uniform(1.0, 1.5)
        if until <= self.paused_until:
            return
        if self.on_pause is not None:
            why = "Retry-After" if asked else "server overloaded"
            self.on_pause(until - max(now, self.paused_until), why)
        log.info(
            "server overloaded: %d of the last %d answers refused; pausing every request %.1f s",
            len(refused), len(recent), until - now,
        )  # fmt: skip
        self.paused_until = until
        self._recent.clear()  # judged afresh after the pause
