"""When a file is ready to read: pure bookkeeping, with the clocks passed in.

A file is read once its size and mtime (its *key*) have not changed for
``settle`` seconds, by our own observations or by the age of its mtime,
whichever shows it first.  A file that does not parse is held until
``grace`` seconds after its last change before it is called invalid: its
writer may have paused half-way.

No I/O here: the watcher stats files and tells ``Settler`` what it saw, so
the rules are tested in-process with a fake clock.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[int, int]  # (size, mtime_ns)


@dataclass
class Candidate:
    """A file that may need reading: what it looked like, and since when."""

    key: Key
    since: float  # clock time when ``key`` was first observed
    due: float = 0.0


class Settler:
    def __init__(
        self,
        settle: float,
        grace: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settle = max(0.0, settle)
        self.grace = max(grace, self.settle)
        self.clock = clock
        self.wall = wall
        self.candidates: dict[str, Candidate] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.candidates)

    def _quiet(self, cand: Candidate, mtime_ns: int) -> float:
        """How long the file has been unchanged, by our eyes or by its mtime."""
        return max(self.clock() - cand.since, self.wall() - mtime_ns / 1e9)

    def _schedule(self, path: str, cand: Candidate, due: float) -> None:
        if cand.due and cand.due <= due and cand.due > self.clock():
            return  # an earlier check is already queued; it reschedules if needed
        cand.due = due
        heapq.heappush(self._heap, (due, path))

    def touch(self, path: str, key: Key) -> None:
        """``path`` may have changed (an event or a scan saw it with ``key``)."""
        now = self.clock()
        cand = self.candidates.get(path)
        if cand is None or cand.key != key:
            cand = Candidate(key=key, since=now)
            self.candidates[path] = cand
        wait = min(max(self.settle - self._quiet(cand, key[1]), 0.0), self.settle)
        self._schedule(path, cand, now + wait)

    def backlog(self, since: float) -> int:
        """Candidates unchanged since before clock time ``since``: what a start-up scan found
        and is still to read, not files that are being written now."""
        return sum(1 for cand in self.candidates.values() if cand.since <= since)

    def forget(self, path: str) -> None:
        self.candidates.pop(path, None)

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self) -> str | None:
        """The next path whose check is due now, if any."""
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, path = heapq.heappop(self._heap)
            cand = self.candidates.get(path)
            if cand is not None and cand.due == due:
                cand.due = 0.0
                return path
        return None

    def ready(self, path: str, key: Key) -> bool:
        """Checked now with ``key``: True when the file has settled and may be read."""
        cand = self.candidates.get(path)
        if cand is None:
            return False
        if key != cand.key:
            self.touch(path, key)  # changed since the last look: settle again
            return False
        quiet = self._quiet(cand, key[1])
        if quiet < self.settle:
            self._schedule(path, cand, self.clock() + self.settle - quiet)
            return False
        return True

    def hold_invalid(self, path: str, key: Key) -> bool:
        """A file that did not parse: True (and rescheduled) while still within the grace."""
        cand = self.candidates.get(path)
        if cand is None:
            return False
        quiet = self._quiet(cand, key[1])
        if quiet >= self.grace:
            return False
        self._schedule(path, cand, self.clock() + self.grace - quiet)
        return True

    def done(self, path: str, key: Key) -> None:
        """The file was recorded as it was at ``key``: forget it unless it changed since."""
        cand = self.candidates.get(path)
        if cand is not None and cand.key == key:
            self.candidates.pop(path, None)
