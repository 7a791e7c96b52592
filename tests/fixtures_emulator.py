"""pytest fixtures that run the emulator as a real process on loopback.

Load with ``pytest_plugins = ["fixtures_emulator"]`` in ``tests/conftest.py``.
One process serves the whole session (starting one costs about half a
second); ``emulator`` resets it before each test so tests do not see each
other's jobs, counters or faults.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from logbook.emulator.testing import EmulatorProcess

# A key with "+", "/" and "=": a client that forgets to percent-encode it in the
# query string sends a space instead of "+" and is refused.
EMULATOR_KEY = "k+ey/with=chars+/="
# Short enough for a test to wait for Done, long enough that a fresh job is
# reliably still "Submitted" when its POST answers.
EMULATOR_PROGRESS_SECONDS = 1.0
EMULATOR_SEED = 12345


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorProcess]:
    """One emulator process for the session; stopped by PID at the end."""
    emu = EmulatorProcess(
        EMULATOR_KEY,
        progress_seconds=EMULATOR_PROGRESS_SECONDS,
        extra_args=("--seed", str(EMULATOR_SEED)),
    )
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator(emulator_server: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The session's emulator, emptied: no jobs, zero counters, no faults."""
    if not emulator_server.running():  # a test stopped it: bring it back
        emulator_server.start()
    emulator_server.reset()
    yield emulator_server
