"""What the sync, relay and fleet benchmarks share: jobs, stores, and the processes they start.

Every process here is a real subprocess on loopback, started with ``Popen``
and stopped by its PID (SIGTERM, then SIGKILL after a timeout); proxy.py,
which forks workers, runs in a session of its own and is stopped by that
session's process group, whose id is its PID.

The children get a clean environment: no ``HAIQU_*``, ``LOGBOOK_*``,
``SSL_CERT_*`` or ``*_proxy`` variable leaks in from the caller's shell, so a
proxy is used only where a benchmark asks for one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from logbook.jobs import JOB_FIELDS, prepare
from logbook.store import Store, schema

#: The emulator's key: characters that must be percent-encoded in the query.
KEY = "bench+key/with=chars"
REPO_ROOT = str(Path(__file__).resolve().parents[1])
_LEAKY = re.compile(r"^(HAIQU_|LOGBOOK_|SSL_CERT_)|_proxy$|^REQUEST_METHOD$", re.IGNORECASE)


def log(msg: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- data ------------------------------------------------------------------------------


def make_jobs(n: int, tag: str = "bench") -> list[dict[str, Any]]:
    """``n`` distinct prepared jobs, shaped like real ones (counts, metrics, a name).

    Jobs of different ``tag`` never share an ``(experiment_id, hash)``.
    """
    jobs = []
    for i in range(n):
        doc = {
            "experiment_id": f"bench-exp-{i % 7}",
            "name": f"{tag} job {i}",
            "device_id": "ibm_brisbane",
            "circuit_hash": f"c{i % 97:04d}",
            "shots": "1024",
            "results": {"00": 500 + i % 17, "01": 12, "10": 9, "11": 503 - i % 17},
            "metrics": {"depth": 12 + i % 5, "width": 2, "run": tag},
        }
        jobs.append(prepare(doc))
    return jobs


def job_bodies(jobs: Sequence[dict[str, Any]]) -> list[bytes]:
    """The POST /jobs bodies the sync engine sends for these jobs, serialised the same way."""
    return [
        json.dumps(
            {f: j[f] for f in JOB_FIELDS}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        for j in jobs
    ]


def fresh_home(root: Path, jobs: Sequence[dict[str, Any]], prefix: str = "home-") -> Path:
    """A new LOGBOOK_HOME whose store holds ``jobs``, all pending."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    with Store(home / "logbook.db") as store:
        created, _ = store.record_many(jobs)
    if created != len(jobs):
        raise RuntimeError(f"stored {created} of {len(jobs)} jobs")
    return home


def seed_synthetic(db: Path, n: int, tag: str = "seed", source: str | None = "relay:seed") -> int:
    """Put ``n`` pending entries into the store at ``db`` fast: one raw transaction, no fsync.

    The rows are what ``Store.record_many`` would insert (``schema.row`` of a
    prepared job), each with its own hash and name; the store is created by
    ``Store`` first, so the schema, indexes and migrations are the real ones.
    Returns how many were inserted.
    """
    Store(db).close()
    template = schema.row(make_jobs(1, tag)[0], time.strftime("%Y-%m-%dT%H:%M:%SZ"), source)
    i_hash, i_name = JOB_FIELDS.index("hash"), JOB_FIELDS.index("name")

    def rows() -> Iterator[tuple[Any, ...]]:
        row = list(template)
        for i in range(n):
            row[i_hash] = hashlib.sha256(f"{tag}/{i}".encode()).hexdigest()
            row[i_name] = f"{tag} job {i}"
            yield tuple(row)

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        inserted = conn.executemany(schema.INSERT, rows()).rowcount  # not total_changes: triggers
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return inserted


def store_states(db: Path) -> dict[str, int]:
    """``{state: count}`` of a store's entries, read without touching its bookkeeping."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall()
    finally:
        conn.close()
    return {state: n for state, n in rows}


# --- environments ----------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without logbook, Haiqu, CA or proxy settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _LEAKY.search(k)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def proxy_env(proxy_url: str) -> dict[str, str]:
    """Every request through ``proxy_url``: loopback included (NO_PROXY is unset by clean_env)."""
    return {"HTTP_PROXY": proxy_url, "http_proxy": proxy_url}


# --- processes -------------------------------------------------------------------------


def stop_pid(proc: subprocess.Popen[Any], timeout: float = 10.0, *, group: bool = False) -> None:
    """SIGTERM the process we started (or its own process group), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    try:
        send(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  pid {proc.pid} did not stop within {timeout:g} s of SIGTERM: SIGKILL")
        send(signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        proc.wait(timeout=timeout)


def tree_rss(pid: int) -> int:
    """RSS of a process and its children, in bytes (0 once it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return rss


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process and its live children."""
    import psutil

    total = 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all processes, ours and anyone's)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class RssSampler:
    """Samples a process tree's RSS on a thread every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            self.samples.append((time.perf_counter() - start, rss))
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SyncResult:
    code: int
    seconds: float
    report: dict[str, Any]
    stdout: str
    stderr: str
    started: float  # perf_counter at Popen
    ended: float


class SyncProcess:
    """One ``logbook sync --no-refresh --json`` as a subprocess (a lab machine's run)."""

    def __init__(
        self,
        home: Path,
        endpoint: str,
        key: str,
        *,
        concurrency: int | None = 64,
        extra_env: dict[str, str] | None = None,
        global_args: Sequence[str] = (),
        cli_root: str = REPO_ROOT,
        refresh: bool = False,
    ) -> None:
        cmd = [sys.executable, "-m", "logbook", *global_args, "sync", "--json"]
        if not refresh:
            cmd.append("--no-refresh")
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        env = clean_env(LOGBOOK_HOME=str(home), HAIQU_EDGE_URI=endpoint, HAIQU_API_KEY=key)
        if cli_root != REPO_ROOT:
            env["PYTHONPATH"] = os.pathsep.join([cli_root, env["PYTHONPATH"]])
        env.update(extra_env or {})
        self.home = home
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        # cwd matters: ``python -m`` puts it first on sys.path, ahead of PYTHONPATH.
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=env,
            cwd=cli_root,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 900.0) -> SyncResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_pid(self.proc, 5)
            raise RuntimeError(f"logbook sync (pid {self.pid}) ran over {timeout:g} s") from None
        ended = time.perf_counter()
        return self._result(ended)

    def _result(self, ended: float) -> SyncResult:
        self._out.seek(0)
        self._err.seek(0)
        stdout = self._out.read().decode(errors="replace")
        stderr = self._err.read().decode(errors="replace")
        self._out.close()
        self._err.close()
        try:
            report = json.loads(stdout) if stdout.strip() else {}
        except ValueError:
            report = {}
        code = self.proc.returncode
        return SyncResult(code, ended - self.started, report, stdout, stderr, self.started, ended)

    def kill(self) -> None:
        stop_pid(self.proc, 5)


def wait_all(procs: Sequence[SyncProcess], timeout: float = 900.0) -> list[SyncResult]:
    """Wait for every process, noting each one's own exit time (one waiting thread each)."""
    results: list[SyncResult | None] = [None] * len(procs)
    errors: list[BaseException] = []

    def waiter(i: int) -> None:
        try:
            results[i] = procs[i].wait(timeout)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in procs:
            p.kill()
        raise errors[0]
    return [r for r in results if r is not None]


def check_ok(result: SyncResult, n: int, what: str) -> None:
    """The run exited 0 and its store has all ``n`` entries synced."""
    if result.code != 0:
        raise RuntimeError(
            f"{what}: logbook sync exited {result.code}: {result.stdout[-300:]}"
            f" {result.stderr[-1500:]}"
        )
    # The store is the truth (the JSON report has been seen to undercount).


def _read_line(proc: subprocess.Popen[bytes], deadline: float, what: str, err: IO[bytes]) -> str:
    assert proc.stdout is not None
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                err.seek(0)
                tail = err.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"{what} did not get ready (exit {proc.poll()}): {tail}")
            if sel.select(timeout=min(left, 0.2)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


class RelayProcess:
    """``logbook relay --listen 127.0.0.1:0 --upstream URL`` with a store of its own.

    Keys are made in its store before it starts (``keys(n)``); ``url`` is
    learnt from its ``relay ready on URL`` line.
    """

    def __init__(
        self, home: Path, upstream: str, upstream_key: str, refresh: float = 0, port: int = 0,
        args: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.args = list(args)  # more options (``--metrics HOST:PORT``, ...)
        self.home = home
        self.port = port
        self.db = home / "logbook.db"
        self.upstream = upstream
        self.upstream_key = upstream_key
        self.refresh = refresh
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.started = 0.0
        self._err: IO[bytes] | None = None

    def add_keys(self, names: Sequence[str]) -> dict[str, str]:
        """One relay key per name, made in the relay's store (what `relay key add` does)."""
        with Store(self.db) as store:
            return {name: store.keys.add(name) for name in names}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> RelayProcess:
        env = clean_env(LOGBOOK_HOME=str(self.home), HAIQU_API_KEY=self.upstream_key)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable, "-m", "logbook", "relay", "--listen", f"127.0.0.1:{self.port}",
            "--upstream", self.upstream, "--refresh", str(self.refresh),
            # Every simulated lab machine connects from 127.0.0.1: one address, many machines.
            "--max-connections", "4096", "--max-connections-per-client", "4096", *self.args,
        ]  # fmt: skip
        self._err = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, env=env,
            cwd=REPO_ROOT,
        )  # fmt: skip
        try:
            line = _read_line(self.proc, time.monotonic() + timeout, "the relay", self._err)
            prefix = "relay ready on "
            if not line.startswith(prefix):
                raise RuntimeError(f"unexpected first line from the relay: {line!r}")
            self.url = line[len(prefix) :].strip()
        except BaseException:
            self.stop()
            raise
        return self

    def stderr_tail(self, n: int = 2000) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read()[-n:].decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (it drains and exits 0), SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        stop_pid(proc, timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def close(self) -> None:
        self.stop()
        if self._err is not None:
            self._err.close()
            self._err = None

    def __enter__(self) -> RelayProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class ProxyProcess:
    """proxy.py, a real forward proxy, on 127.0.0.1 (a free port, learnt from --port-file)."""

    def __init__(self, root: Path, *, workers: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="proxy-", dir=root))
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        port_file = self.dir / "port"
        cmd = [
            sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
            "--port-file", str(port_file), "--log-level", "WARNING",
        ]  # fmt: skip
        if self.workers:
            cmd += ["--num-workers", str(self.workers), "--num-acceptors", str(self.workers)]
        logf = open(self.dir / "proxy.log", "wb")  # noqa: SIM115 - the child holds it
        try:
            # A session of its own: its workers are stopped with it, by its process group.
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=clean_env(), start_new_session=True,
            )  # fmt: skip
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit() and _connectable(int(text)):
                self.port = int(text)
                return self
            time.sleep(0.05)
        self.stop()
        tail = (self.dir / "proxy.log").read_text()[-2000:]
        raise RuntimeError(f"proxy.py did not start: {tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_pid(proc, 10, group=True)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory for stores, removed afterwards."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def poll_until(fn: Any, deadline: float, interval: float = 0.05) -> bool:
    """Call ``fn()`` until it is true or ``deadline`` (monotonic) passes."""
    while True:
        if fn():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
