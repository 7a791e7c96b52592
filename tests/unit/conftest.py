"""Fixtures of the in-process tests: a store of their own, and a sync run's owner id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from logbook.store import Store
from logbook.store.leases import end_owner, new_owner


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def owner() -> Iterator[str]:
    o = new_owner()
    yield o
    end_owner(o)


class TierViolation(AssertionError):
    """A unit test reached for the kernel: it belongs in tests/integration."""


@pytest.fixture(autouse=True)
def in_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests stay in the process: no network socket, no watchdog observer thread.

    Sockets, proxies, TLS and inotify are tested in ``tests/integration``; an
    AF_UNIX socket pair (an event loop's self-pipe) is allowed.
    """
    import socket

    for attr in ("bind", "connect", "connect_ex"):
        original = getattr(socket.socket, attr)

        def guarded(self: socket.socket, *args: object, _o: object = original) -> object:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise TierViolation(
                    "a unit test opened a network socket: move it to tests/integration"
                )
            return _o(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(socket.socket, attr, guarded)

    try:
        from watchdog.observers.api import BaseObserver
    except ImportError:  # pragma: no cover
        return

    def no_observer(self: object) -> None:
        raise TierViolation("a unit test started a watchdog observer: move it to integration")

    monkeypatch.setattr(BaseObserver, "start", no_observer)
