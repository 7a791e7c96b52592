"""Helpers for the sync tests: a store in a temp home, the real CLI as a process.

Every process started here is waited for (or killed by its PID) before the
helper returns, so no test leaves a ``logbook sync`` running.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from logbook.jobs import prepare
from logbook.store import Store

CLI_TIMEOUT = 60.0


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def base_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: our LOGBOOK_HOME, no HAIQU_* unless given."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HAIQU_", "LOGBOOK_")) and k != "PYTHONWARNINGS"
    }
    env["LOGBOOK_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "logbook", *args]


def _spawn(
    home: Path, args: tuple[str, ...], env: Mapping[str, str] | None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_cmd(*args),
        env=base_env(home, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def run_cli(
    home: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Run:
    """Run ``logbook ARGS`` to completion; killed by PID if it overruns."""
    proc = _spawn(home, args, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"logbook {' '.join(args)} did not finish in {timeout} s\n{out}\n{err}"
        ) from None
    return Run(proc.returncode, out, err)


@contextmanager
def started(
    home: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A ``logbook`` process running in the background; killed by PID on the way out."""
    proc = _spawn(home, args, env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def make_jobs(n: int, experiment: str = "exp-sync", start: int = 0) -> list[dict[str, Any]]:
    return [
        prepare(
            {
                "experiment_id": experiment,
                "name": f"job-{i}",
                "device_id": "sim",
                "results": json.dumps({"00": i, "11": 100 - i % 100}),
                "shots": json.dumps([100]),
                "metrics": {"i": i},
            }
        )
        for i in range(start, start + n)
    ]


def seed_store(home: Path, n: int, experiment: str = "exp-sync") -> Path:
    """Record ``n`` distinct jobs into ``$home/logbook.db``; returns the db path."""
    home.mkdir(parents=True, exist_ok=True)
    db = home / "logbook.db"
    with Store(db) as store:
        created, _ = store.record_many(make_jobs(n, experiment))
    assert created == n
    return db


def entries(db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        return [e.to_dict() for e in store.iter_entries(newest_first=False)]


def states(db: Path) -> dict[str, int]:
    with Store(db) as store:
        return store.counts()


def sync_until_done(
    home: Path, env: Mapping[str, str], *extra: str, rounds: int = 8, timeout: float = 60.0
) -> list[Run]:
    """Run ``logbook sync`` until it exits 0 (at most ``rounds`` times)."""
    runs = []
    for _ in range(rounds):
        run = run_cli(home, "sync", "--json", *extra, env=env, timeout=timeout)
        runs.append(run)
        assert run.code in (0, 1), f"sync exited {run.code}: {run.err}"
        if run.code == 0:
            return runs
    raise AssertionError(f"still not synced after {rounds} runs: {[r.out for r in runs]}")


def assert_exactly_once(db: Path, emulator: Any) -> None:
    """Every entry synced once, no duplicates, and remote_id is the server's id."""
    local = entries(db)
    stats = emulator.stats()
    assert stats["duplicates"] == 0, stats
    assert stats["jobs_created"] == len(local), stats
    server = {(j["experiment_id"], j["hash"]): j for j in emulator.jobs()}
    assert len(server) == len(local)
    for e in local:
        assert e["state"] == "synced", e
        job = server[(e["experiment_id"], e["hash"])]
        assert e["remote_id"] == job["id"], (e, job)


def key_forms(key: str) -> list[str]:
    """Every spelling of the key that must never show up anywhere."""
    forms = {key, quote(key, safe=""), quote_plus(key), quote(key), key.replace("+", " ")}
    return sorted(forms, key=len, reverse=True)


def assert_no_key(text: str, key: str, where: str = "") -> None:
    for form in key_forms(key):
        assert form not in text, f"the key ({form!r}) leaked in {where}: {text[:2000]!r}"


def dump_db(db: Path) -> str:
    """Every value of every table (and the WAL's content via the connection) as text."""
    conn = sqlite3.connect(db)
    try:
        parts = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in conn.execute(f'SELECT * FROM "{t}"'):
                parts.append(repr(row))
                parts.extend(str(v) for v in row)
        return "\n".join(parts)
    finally:
        conn.close()


def set_row(db: Path, entry_id: int | str, **values: Any) -> None:
    conn = sqlite3.connect(db)
    try:
        cols = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE entries SET {cols} WHERE id = ?", (*values.values(), int(entry_id)))
        conn.commit()
    finally:
        conn.close()


def write_config(home: Path, lines: Sequence[str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("\n".join(lines) + "\n")
