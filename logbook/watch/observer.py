"""watchdog, adapted: events become tuples on a queue, and an inotify overflow becomes a call.

This is the only module that imports watchdog.  The handler runs on
watchdog's thread and only puts ``(kind, src, dest, is_dir)`` on a queue: a
handler that raises kills the observer thread while the process goes on,
silently watching nothing.  The watcher supervises the observer and restarts
it when its thread dies.

An overflow of the kernel's inotify queue loses events; watchdog 7 tells no
handler, but calls ``on_queue_overflow`` on each of its watch groups.
``_OverflowEmitter`` hooks that call, so the watcher rescans.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("logbook.watch")

Event = tuple[str, str, str, bool]
#: Seconds between directory snapshots of the polling observer.
POLL_INTERVAL = 1.0


def _handler(events: queue.SimpleQueue[Event]) -> Any:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        """On watchdog's thread: only queue the event."""

        def dispatch(self, event: FileSystemEvent) -> None:
            try:
                events.put(
                    (
                        event.event_type,
                        os.fsdecode(event.src_path),
                        os.fsdecode(event.dest_path or ""),
                        event.is_directory,
                    )
                )
            except BaseException:  # noqa: BLE001 - never let anything reach watchdog's thread
                pass

    return Handler()


def _event_filter(polling: bool) -> list[Any]:
    """Only the events the watcher uses: fewer inotify events, later overflows."""
    from watchdog import events as ev

    kinds: list[Any] = [
        ev.FileCreatedEvent, ev.FileModifiedEvent, ev.FileMovedEvent, ev.FileDeletedEvent,
        ev.DirCreatedEvent, ev.DirMovedEvent, ev.DirDeletedEvent,
    ]  # fmt: skip
    if not polling:
        kinds.append(ev.FileClosedEvent)
    return kinds


def _inotify_observer(on_overflow: Callable[[], None]) -> Any:
    from watchdog.observers.api import BaseObserver
    from watchdog.observers.inotify import InotifyEmitter

    class _OverflowEmitter(InotifyEmitter):
        def on_thread_start(self) -> None:
            super().on_thread_start()
            group = self._inotify
            if group is None:
                return
            rebuild = group.on_queue_overflow

            def hooked() -> None:
                rebuild()
                try:
                    on_overflow()
                except Exception:  # noqa: BLE001 - watchdog's thread must survive
                    log.debug("overflow callback failed", exc_info=True)

            group.on_queue_overflow = hooked  # type: ignore[method-assign]

    return BaseObserver(_OverflowEmitter)


class Observer:
    """One watchdog observer on the watched directories that exist now."""

    def __init__(
        self,
        roots: Iterable[str],
        events: queue.SimpleQueue[Event],
        *,
        polling: bool,
        on_overflow: Callable[[], None],
    ) -> None:
        self.roots = list(roots)
        self.polling = polling
        self.on_overflow = on_overflow
        self.handler = _handler(events)
        self._observer: Any = None

    def start(self) -> None:
        """Start a fresh observer; raises ``OSError`` (an inotify limit) if it cannot."""
        self.stop()
        if self.polling:
            from watchdog.observers.polling import PollingObserver

            observer: Any = PollingObserver(timeout=POLL_INTERVAL)
        else:
            observer = _inotify_observer(self.on_overflow)
        for root in self.roots:
            if os.path.isdir(root):
                observer.schedule(
                    self.handler, root, recursive=True, event_filter=_event_filter(self.polling)
                )
        observer.daemon = True
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(1.0)
        except Exception:  # noqa: BLE001 - a broken observer is being replaced anyway
            log.debug("stopping the observer failed", exc_info=True)
