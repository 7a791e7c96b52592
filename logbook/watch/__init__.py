"""``logbook watch``: the only package that touches watchdog.

``observer`` adapts watchdog (events onto a queue, an inotify overflow
hook), ``settle`` decides when a file is ready to read (pure, clocks passed
in), and ``watcher`` is the loop that scans, settles, reads and records.
"""

from __future__ import annotations

from .watcher import DEFAULT_RESCAN, INVALID_GRACE, Watcher, WatchError, WatchOptions, check_dirs

__all__ = ["DEFAULT_RESCAN", "INVALID_GRACE", "WatchError", "WatchOptions", "Watcher", "check_dirs"]
