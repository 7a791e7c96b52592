"""Fixtures of the end-to-end tier: an upstream emulator of a test's own, and a relay in
front of it (both real processes on loopback, stopped by PID).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from relaysupport import UP_KEY, RelayProcess, free_port

from logbook.emulator.testing import EmulatorProcess


@pytest.fixture
def upstream() -> Iterator[EmulatorProcess]:
    """The API a relay forwards to: an emulator of this test's own, on a port it may restart on
    (``emu.extra_args``) after a test stopped it."""
    emu = EmulatorProcess(UP_KEY, progress_seconds=0.5, extra_args=("--port", str(free_port())))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def relay(tmp_path: Path, upstream: EmulatorProcess) -> Iterator[RelayProcess]:
    """A relay (not started) whose upstream is ``upstream``, its home in the test's tmp."""
    r = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    try:
        yield r
    finally:
        r.stop()
