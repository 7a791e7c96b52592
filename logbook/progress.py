"""Live counters of long work (a sync, an import, a watcher's catch-up), for whoever shows them.

The library only counts; the CLI reads these on a timer and draws a bar on
a terminal or prints a stats line.  Plain attributes, written by one thread
and read by another: a torn read shows a number one tick old, nothing worse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    phase: str = "starting"  # sending | refreshing | importing | catching up | done
    total: int = 0
    done: int = 0
    retries: int = 0
    throttled: int = 0
    started: float = field(default_factory=time.monotonic)
    phase_started: float = field(default_factory=time.monotonic)

    #: Where each phase that ended got to, so its bar can end there and not at its
    #: last tick (a bar samples; a short phase may begin and end between two samples).
    ended: dict[str, int] = field(default_factory=dict)
    #: The run is waiting (nothing is sent) until this ``time.monotonic()``, and why
    #: ("Retry-After", "back-off"); how long it has waited so in all.
    paused_until: float = 0.0
    pause_reason: str = ""
    paused_total: float = 0.0

    def pause(self, seconds: float, reason: str) -> None:
        """The run waits ``seconds`` from now (a server's Retry-After, a back-off); overlapping
        pauses count once in ``paused_total``."""
        now = time.monotonic()
        until = now + max(0.0, seconds)
        if until > self.paused_until:
            self.paused_total += until - max(now, self.paused_until)
            self.paused_until = until
        self.pause_reason = reason

    def pausing(self) -> float:
        """Seconds left of the current pause (0: not paused)."""
        return max(0.0, self.paused_until - time.monotonic())

    def begin(self, phase: str, total: int) -> None:
        self.ended[self.phase] = self.done
        self.phase, self.total, self.done = phase, total, 0
        self.phase_started = time.monotonic()

    def end(self) -> None:
        """The run is over; ``done`` keeps its count (the watcher goes on counting files)."""
        self.ended[self.phase] = self.done
        self.phase = "done"

    def rate(self) -> float:
        elapsed = time.monotonic() - self.phase_started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if rate <= 0 or self.total <= self.done:
            return None
        return (self.total - self.done) / rate
