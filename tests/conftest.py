"""Shared fixtures: every test runs against its own LOGBOOK_HOME, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

pytest_plugins = ["fixtures_emulator"]

#: Environment variables that would let a test reach the user's store or the network.
ISOLATED_VARS = ("LOGBOOK_DB", "HAIQU_API_KEY", "HAIQU_EDGE_URI", "LOGBOOK_HTTP_ENGINE")
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def logbook_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LOGBOOK_HOME for every test; no store, key or endpoint inherited."""
    home = tmp_path_factory.mktemp("logbook-home")
    monkeypatch.setenv("LOGBOOK_HOME", str(home))
    for name in ISOLATED_VARS:
        monkeypatch.delenv(name, raising=False)
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


RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_cli(logbook_home: Path) -> RunCli:
    """Run ``python -m logbook ARGS`` as a real process with the test's environment."""

    def run(
        *args: str | os.PathLike[str],
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p
        )
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "logbook", *map(str, args)],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    return run


@pytest.fixture
def cli_runner() -> Iterator[Callable[..., Result]]:
    """Run the click command in-process; stdout and stderr are kept apart."""
    from logbook.cli import cli

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2 always keeps them apart
        runner = CliRunner()

    def invoke(*args: str | os.PathLike[str], input: str | None = None) -> Result:
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    yield invoke
