"""What the tests share: running logbook as a real process, seeding stores, checking outcomes.

One way to spawn ``logbook`` (``cli``/``spawn``), one clean environment
(``base_env``: the test's LOGBOOK_HOME, no HAIQU_*, LOGBOOK_*, proxy or CA
variables from the outer shell, this checkout on PYTHONPATH), and one way to
wait for something (``wait_until``: a condition with a generous deadline,
never a fixed sleep).  Every process started here is waited for, or killed
by its PID, before the helper returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from logbook.jobs import prepare
from logbook.store import Store
from logbook.store.schema import ENTRY_KEYS

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 60.0
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
#: Outer-shell variables that would point a test at the user's store, network or CAs.
_LEAKY = re.compile(r"^(HAIQU_|LOGBOOK_|SSL_CERT_)|_proxy$|^PYTHONWARNINGS$", re.IGNORECASE)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def base_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: our LOGBOOK_HOME and this checkout; nothing else of logbook's."""
    env = {k: v for k, v in os.environ.items() if not _LEAKY.search(k)}
    env["LOGBOOK_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def cli_cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "logbook", *map(str, args)]


def spawn(
    home: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        cli_cmd(*args), env=base_env(home, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=stdin, text=True, errors="replace",
    )  # fmt: skip


def cli(
    home: Path,
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = CLI_TIMEOUT,
) -> Run:
    """Run ``logbook ARGS`` to completion as a real process; killed by PID if it overruns."""
    proc = spawn(
        home, *args, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"logbook {args} did not finish in {timeout} s\n{out}\n{err}"
        ) from None
    return Run(proc.returncode, out, err)


@contextmanager
def started(
    home: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A ``logbook`` process running in the background; killed by PID on the way out."""
    proc = spawn(home, *args, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_until(
    condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition"
) -> Any:
    """Poll ``condition`` until it is truthy (returning its value); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# --- stores ------------------------------------------------------------------------------


def make_jobs(n: int, experiment: str = "exp-sync", start: int = 0) -> list[dict[str, Any]]:
    return [
        prepare(
            {
                "experiment_id": experiment, "name": f"job-{i}", "device_id": "sim",
                "results": json.dumps({"00": i, "11": 100 - i % 100}),
                "shots": json.dumps([100]), "metrics": {"i": i},
            }
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def prepared_job(i: int | str, experiment: str = "exp", **fields: Any) -> dict[str, Any]:
    """A small checked job, distinct for each ``i``."""
    doc = {"experiment_id": experiment, "name": f"job {i}", "results": f'{{"n": "{i}"}}'}
    return prepare({**doc, **fields})


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
        return [e.to_dict() for e in store.entries(newest_first=False)]


def states(db: Path) -> dict[str, int]:
    with Store(db) as store:
        return store.counts()


def set_row(db: Path, entry_id: int | str, **values: Any) -> None:
    conn = sqlite3.connect(db)
    try:
        cols = ", ".join(f"{k} = ?" for k in values)
        conn.execute(f"UPDATE entries SET {cols} WHERE id = ?", (*values.values(), int(entry_id)))
        conn.commit()
    finally:
        conn.close()


def dump_db(db: Path) -> str:
    """Every value of every table (the WAL's content included) as text."""
    conn = sqlite3.connect(db)
    try:
        parts = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in conn.execute(f'SELECT * FROM "{t}"'):
                parts.append(repr(row))
                parts.extend(
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row
                )
        return "\n".join(parts)
    finally:
        conn.close()


def write_config(home: Path, lines: Sequence[str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("\n".join(lines) + "\n")


# --- what a user checks ------------------------------------------------------------------


def sync_until_done(home: Path, env: Mapping[str, str], *extra: str, rounds: int = 8) -> list[Run]:
    """Run ``logbook sync`` until it exits 0 (at most ``rounds`` times)."""
    runs = []
    for _ in range(rounds):
        run = cli(home, "sync", "--json", *extra, env=env)
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
    """Spellings of the key that must never show up anywhere (written here, not taken from
    logbook).
    """
    once = quote(key, safe="")
    forms = {
        key, once, once.lower(), quote_plus(key), quote(key), key.replace("+", " "),
        quote(once, safe=""), repr(key)[1:-1],
    }  # fmt: skip
    if len(key) >= 10:
        forms.add(key[:10])
    return sorted((f for f in forms if f), key=len, reverse=True)


def assert_no_key(text: str, key: str, where: str = "") -> None:
    low = text.lower()
    for form in key_forms(key):
        found = form in text or ("%" in form and form.lower() in low)
        assert not found, f"the key ({form!r}) leaked in {where}: {text[:2000]!r}"


def assert_no_traceback(*texts: str | bytes | None) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        assert "Traceback" not in (text or ""), text


def assert_one_line_error(stderr: str) -> None:
    """An error is one clear line on stderr, never a traceback."""
    assert_no_traceback(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "error" in lines[0].lower(), stderr


def assert_entry_shape(entry: dict[str, Any]) -> None:
    """Exactly the contract's keys, with the contract's types."""
    assert tuple(entry) == ENTRY_KEYS
    assert isinstance(entry["id"], str) and entry["id"].isdigit()
    assert isinstance(entry["metrics"], dict)
    for key in ("results", "shots"):
        if entry[key]:
            json.loads(entry[key])  # JSON text, as in the API
    assert ISO_UTC.match(entry["created_at"]), entry["created_at"]
    if entry["synced_at"] is not None:
        assert ISO_UTC.match(entry["synced_at"])


def backup(db: Path, to: Path) -> Path:
    """A consistent copy of a store, even while a process writes it (SQLite's backup API)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return to


def put_back(copy: Path, db: Path) -> None:
    """A store's file replaced by an older copy; its -wal and -shm belong to the newer one."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, db)
