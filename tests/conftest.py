"""Shared fixtures: every test runs against its own LOGBOOK_HOME, never the user's.

``emulator`` is one real emulator process for the whole session (started on
loopback, stopped by its PID), emptied before each test that asks for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Run, cli  # noqa: E402

from logbook.emulator.testing import EmulatorProcess  # noqa: E402

# A key with "+", "/" and "=": a client that forgets to percent-encode it in the
# query string sends a space instead of "+" and is refused.
EMULATOR_KEY = "k+ey/with=chars+/="
# Short enough for a test to wait for Done, long enough that a fresh job is
# reliably still "Submitted" when its POST answers.
EMULATOR_PROGRESS_SECONDS = 1.0
EMULATOR_SEED = 12345


@pytest.fixture(autouse=True)
def logbook_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LOGBOOK_HOME for every test; no store, key, endpoint, proxy or CA
    inherited.
    """
    home = tmp_path_factory.mktemp("logbook-home")
    for name in list(os.environ):
        if name.startswith(("HAIQU_", "LOGBOOK_", "SSL_CERT_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOGBOOK_HOME", str(home))
    # logbook.api caches one Store per thread and path: forget the previous test's.
    api = sys.modules.get("logbook.api")
    if api is not None:
        for store in (getattr(api._local, "stores", None) or {}).values():
            store.close()
        api._local.stores = {}
    return home


@pytest.fixture
def db_path(logbook_home: Path) -> Path:
    """Where the default store of this test lives."""
    return logbook_home / "logbook.db"


@pytest.fixture
def run_cli(logbook_home: Path) -> Callable[..., Run]:
    """Run ``python -m logbook ARGS`` as a real process in the test's home."""

    def run(*args: str | os.PathLike[str], **kwargs: object) -> Run:
        return cli(logbook_home, *args, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture
def cli_runner() -> Iterator[Callable[..., Result]]:
    """Run the click command in-process; stdout and stderr are kept apart."""
    from logbook.cli import cli as command

    runner = CliRunner()

    def invoke(*args: str | os.PathLike[str], input: str | None = None) -> Result:
        return runner.invoke(command, [str(a) for a in args], input=input, catch_exceptions=False)

    yield invoke


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


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA, like a lab's TLS-inspecting firewall's (import it into a test module)."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The private CA's certificate, as the PEM file SSL_CERT_FILE or ca_bundle would name."""
    path = tmp_path_factory.mktemp("ca") / "lab-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)
