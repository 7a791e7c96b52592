"""The API key never shows in output, logs, errors or the store, whatever fails.

The emulator's key holds ``+``, ``/`` and ``=``, so the raw form, both
percent-encodings and the ``+``-as-space form all differ and are all checked.
(``tests/unit/test_redact.py`` checks ``redact`` and the client's messages
one spelling and one cut at a time.)
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from adversary import closed_port
from support import (
    assert_no_key,
    assert_no_traceback,
    cli,
    dump_db,
    entries,
    key_forms,
    seed_store,
    set_row,
    write_config,
)

import logbook
from logbook.emulator.testing import EmulatorProcess
from logbook.errors import LogbookError

UNREACHABLE = "unreachable"
BAD_ROW = "422"

MODES: dict[str, dict[str, Any]] = {
    "500": {"error_rate": 1.0, "error_status": 500},
    "503-everywhere": {"error_rate": 1.0, "error_status": 503, "routes": ["*"]},
    "429-seconds": {"rate_limit_rate": 1.0, "retry_after": 30},
    "429-date": {"rate_limit_rate": 1.0, "retry_after": 30, "retry_after_format": "date"},
    "drop": {"drop_rate": 1.0, "routes": ["*"]},
    "bad-json": {"bad_json_rate": 1.0, "routes": ["*"]},
    "trickle": {"trickle_seconds": 3.0, "routes": ["*"]},
    "401": {"unauthorized": True},
    BAD_ROW: {},
    UNREACHABLE: {},
}


def _prepare(home: Path, emulator: EmulatorProcess, mode: str) -> tuple[Path, dict[str, str]]:
    db = seed_store(home, 4)
    write_config(home, ["request_timeout = 0.3"])
    env = emulator.env()
    if mode == UNREACHABLE:
        env["HAIQU_EDGE_URI"] = f"http://127.0.0.1:{closed_port()}"  # nothing listens
    elif mode == BAD_ROW:
        set_row(db, entries(db)[0]["id"], status="Bogus")
    else:
        emulator.set_faults(**MODES[mode])
    return db, env


def _check_store(db: Path, key: str) -> None:
    assert_no_key(dump_db(db), key, "the store")
    for suffix in ("-wal", "-journal"):
        side = Path(str(db) + suffix)
        if side.exists():
            raw = side.read_bytes()
            for form in key_forms(key):
                assert form.encode() not in raw, f"the key ({form!r}) is in {side.name}"


CLI_CASES = [(m, "query") for m in MODES] + [(m, "header") for m in ("500", "drop", "401")]


@pytest.mark.parametrize(("mode", "auth"), CLI_CASES, ids=[f"{m}-{a}" for m, a in CLI_CASES])
def test_cli_never_prints_or_stores_the_key(
    logbook_home: Path, emulator: EmulatorProcess, mode: str, auth: str
) -> None:
    home = logbook_home
    db, env = _prepare(home, emulator, mode)
    key = env["HAIQU_API_KEY"]
    common = ("--auth", auth, "--max-time", "5")
    debug = cli(home, "-vv", "sync", *common, env=env)
    as_json = cli(home, "sync", "--json", *common, env=env)
    listing = cli(home, "list", "--limit", "0", "--json", env=env)
    for run in (debug, as_json):
        # every mode fails somehow (a 422 from an earlier run is not counted again)
        assert run.code in (1, 3, 4) or (mode == BAD_ROW and run is as_json), run
        assert_no_traceback(run.err)
        assert_no_key(run.out, key, "stdout")
        assert_no_key(run.err, key, "stderr")
    assert_no_key(listing.out, key, "list --json")
    # The failure itself must have been shown, or the test would prove nothing (a sync
    # prints its summary, with the last error, on stdout; -vv adds a line per request).
    assert (debug.out + debug.err).strip(), "-vv printed nothing: the test would prove nothing"
    if mode not in (UNREACHABLE, "401"):
        # The summary's last error, or (a server that never finishes an answer) the
        # line that says it timed out request after request.
        assert "last error" in debug.out or "timed out" in debug.err, (debug.out, debug.err)
    _check_store(db, key)
    if mode not in (UNREACHABLE, "401"):
        # the failure was recorded, so the key had a chance to leak into last_error
        assert any(e["last_error"] for e in entries(db))


@pytest.mark.parametrize("auth", ["query", "header"])
def test_a_server_that_echoes_the_request_never_shows_the_key(
    logbook_home: Path, emulator: EmulatorProcess, auth: str
) -> None:
    """The emulator's echo fault: a 500 whose body holds the request target and headers."""
    home = logbook_home
    db = seed_store(home, 6)
    emulator.set_faults(echo_rate=1.0, routes=["*"])
    key = emulator.key
    for args in (("-vv", "sync", "--max-time", "5"), ("sync", "--json", "--max-time", "5")):
        run = cli(home, *args, "--auth", auth, env=emulator.env())
        assert run.code == 1, run
        assert_no_traceback(run.err)
        assert_no_key(run.out, key, "stdout")
        assert_no_key(run.err, key, "stderr")
    errors = [e["last_error"] for e in entries(db)]
    assert all(errors) and all("HTTP 500" in e for e in errors), errors
    for text in errors:
        assert_no_key(text, key, "last_error")
    _check_store(db, key)
    shown = cli(home, "show", entries(db)[0]["id"], "--json")
    assert_no_key(shown.out, key, "show --json")


def _exception_text(err: BaseException) -> str:
    parts = ["".join(traceback.format_exception(err))]
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:  # the whole chain, suppressed or not
        seen.add(id(e))
        parts += [str(e), repr(e), repr(getattr(e, "args", ()))]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


LIB_MODES = ["500", "drop", "bad-json", "trickle", "401", BAD_ROW, UNREACHABLE]


@pytest.mark.parametrize("mode", LIB_MODES)
def test_library_logs_and_errors_never_hold_the_key(
    logbook_home: Path,
    emulator: EmulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    db, env = _prepare(logbook_home, emulator, mode)
    key = env["HAIQU_API_KEY"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # logbook.client sets httpx2/httpcore2/aiohttp to WARNING on import: import it first,
    # then turn every logger up to DEBUG, as a user debugging their setup might.
    importlib.import_module("logbook.client")
    caplog.set_level(logging.DEBUG)
    for name in ("httpx2", "httpcore2", "httpx", "httpcore", "aiohttp", "asyncio", "logbook"):
        caplog.set_level(logging.DEBUG, logger=name)
    error: BaseException | None = None
    try:
        logbook.sync(db=db, max_time=0.8)
    except LogbookError as err:
        error = err
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert_no_key(text, key, "log records")
    assert_no_key(caplog.text, key, "formatted logs")
    if error is not None:
        assert_no_key(_exception_text(error), key, "the exception")
    if mode in ("401", UNREACHABLE):
        assert error is not None
    _check_store(db, key)


@pytest.mark.parametrize("auth", ["query", "header"])
def test_responses_from_the_real_transport_carry_no_key(
    emulator: EmulatorProcess, auth: str
) -> None:
    from logbook.client import ApiClient

    key = emulator.key
    body = json.dumps({"experiment_id": "e", "hash": "h"}).encode()

    async def go() -> list[Any]:
        async with ApiClient(emulator.url, key, auth=auth) as client:
            ok = await client.send("POST", "/jobs", body)
            missing = await client.send("GET", "/jobs/nope")
            return [ok, missing]

    for response in asyncio.run(go()):
        assert response.status_code in (200, 404), response.text  # the key was accepted
        text = " ".join(
            [str(response.request.url), repr(response.request), repr(response)]
            + [f"{k}: {v}" for k, v in response.request.headers.items()]
        )
        assert_no_key(text, key, "the response's request")
