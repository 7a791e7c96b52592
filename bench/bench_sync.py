"""How fast ``logbook sync`` drains a backlog, against the clients it must beat.

Runs the real CLI (``python -m logbook sync``) as a subprocess against the
emulator on loopback, with 50 ms added latency and with none, on a fresh
store of 5,000 entries per measurement, and compares it with two clients
measured in the same run on the same server with the same bodies:

- the Haiqu SDK's pattern: one ``requests`` POST after another on one
  ``requests.Session`` (key in the query string);
- a raw reference that only posts: aiohttp, one ``ClientSession``,
  ``TCPConnector(limit=64)``, 64 workers.

Targets: at 50 ms, ``--concurrency 64`` >= 40x the SDK and >= 0.8x the
reference; with no latency, >= 0.6x the reference.  Then the peak RSS
(process and children, sampled every 50 ms) of syncing 100,000 entries:
<= 150 MB.

The machine may be shared and noisy, so every figure is the best of
``--repeats`` runs, and the runs of the different clients are interleaved.

    python -m bench.bench_sync [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from logbook.emulator.testing import EmulatorProcess
from logbook.jobs import JOB_FIELDS, prepare
from logbook.store import Store

KEY = "bench+key/with=chars"
LATENCIES = (50, 0)
SDK_RATIO_TARGET = 40.0  # at 50 ms
REF_RATIO_TARGETS = {50: 0.8, 0: 0.6}
RSS_TARGET_MB = 150.0
REPO_ROOT = str(Path(__file__).resolve().parents[1])
#: Where the CLI under test imports ``logbook`` from (``--logbook DIR`` to try a scratch copy).
CLI_ROOT = REPO_ROOT


# --- data --------------------------------------------------------------------------


def make_jobs(n: int, tag: str = "bench") -> list[dict[str, Any]]:
    """``n`` distinct prepared jobs, shaped like real ones (counts, metrics, a name)."""
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


def fresh_home(root: Path, jobs: Sequence[dict[str, Any]]) -> Path:
    """A new LOGBOOK_HOME whose store holds ``jobs``, all pending."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=root))
    with Store(home / "logbook.db") as store:
        created, _ = store.record_many(jobs)
    if created != len(jobs):
        raise RuntimeError(f"stored {created} of {len(jobs)} jobs")
    return home


# --- clients -----------------------------------------------------------------------


@dataclass
class CliRun:
    seconds: float
    report: dict[str, Any]
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None


def _tree_rss(proc: Any) -> int:
    import psutil

    rss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return rss


def run_cli(
    emu: EmulatorProcess,
    home: Path,
    *,
    concurrency: int | None = 64,
    engine: str | None = None,
    sample_rss: bool = False,
    extra_env: dict[str, str] | None = None,
    timeout: float = 900.0,
) -> CliRun:
    """``logbook sync --no-refresh --json`` as a subprocess; wall clock, report, peak RSS."""
    cmd = [sys.executable, "-m", "logbook", "sync", "--no-refresh", "--json"]
    if concurrency is not None:
        cmd[4:4] = ["--concurrency", str(concurrency)]
    env = dict(os.environ)
    env.update(emu.env())
    env["LOGBOOK_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CLI_ROOT, env.get("PYTHONPATH")) if p)
    env.pop("LOGBOOK_HTTP_ENGINE", None)
    if engine:
        env["LOGBOOK_HTTP_ENGINE"] = engine
    env.update(extra_env or {})
    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        # cwd matters: ``python -m`` puts it first on sys.path, ahead of PYTHONPATH.
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=CLI_ROOT
        )
        if sample_rss:
            import psutil

            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    peak = max(peak, _tree_rss(ps))
                except psutil.Error:
                    pass
                time.sleep(0.05)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(
            f"logbook sync exited {proc.returncode}: {stdout[-500:]} {stderr[-2000:]}"
        )
    report = json.loads(stdout)
    # Only this child was waited for in between: the delta is its CPU (and its children's).
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return CliRun(seconds, report, peak / 2**20 if sample_rss else None, cpu)


def sdk_pattern(url: str, bodies: Sequence[bytes]) -> float:
    """One requests POST after another on one Session, key in the query; seconds taken."""
    import requests

    target = f"{url}/jobs?HAIQU_API_KEY={quote(KEY, safe='')}"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    with requests.Session() as s:
        start = time.perf_counter()
        for body in bodies:
            r = s.post(target, data=body, headers=headers, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"SDK pattern: HTTP {r.status_code}: {r.text[:200]}")
        return time.perf_counter() - start


async def _reference(url: str, bodies: Sequence[bytes], workers: int) -> float:
    import aiohttp

    params = {"HAIQU_API_KEY": KEY}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    it = iter(bodies)
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in it:
                async with session.post(
                    url + "/jobs", params=params, data=body, headers=headers
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"reference: HTTP {resp.status}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - start


def reference(url: str, bodies: Sequence[bytes], workers: int = 64) -> float:
    """A raw aiohttp client, ``workers`` requests in flight, that only posts; seconds taken."""
    return asyncio.run(_reference(url, bodies, workers))


# --- measuring ---------------------------------------------------------------------


@dataclass
class Series:
    """Jobs/s of one client at one latency, over several runs."""

    name: str
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # client CPU per job
    server_us: list[float] = field(default_factory=list)  # emulator CPU per job

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else float("nan")

    def show(self) -> str:
        return " ".join(f"{r:,.0f}" for r in self.rates)

    def cpu(self) -> str:
        """Least client and server CPU per job over the runs (noise only adds)."""
        if not self.cpu_us:
            return ""
        return f"cpu/job: client {min(self.cpu_us):4.0f} us, server {min(self.server_us):4.0f} us"


def _proc_cpu(pid: int | None) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _in_process(fn: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """Wrap an in-process client: (wall seconds, this process's CPU seconds)."""

    def run() -> tuple[float, float]:
        cpu0 = time.process_time()
        seconds = fn()
        return seconds, time.process_time() - cpu0

    return run


def _check_server(emu: EmulatorProcess, expected: int, what: str) -> None:
    stats = emu.stats()
    if stats["jobs_created"] != expected or stats["duplicates"] != 0:
        raise RuntimeError(
            f"{what}: the emulator got {stats['jobs_created']} jobs"
            f" ({stats['duplicates']} duplicates), expected {expected} and 0"
        )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_latency(
    emu: EmulatorProcess,
    root: Path,
    latency: int,
    jobs: list[dict[str, Any]],
    bodies: list[bytes],
    *,
    repeats: int,
    sdk_jobs: int,
) -> dict[str, Series]:
    """Interleaved runs of every client at one latency; returns jobs/s per client."""
    n = len(jobs)
    cli_variants: list[tuple[str, dict[str, Any]]] = [
        ("logbook --concurrency 64", {"concurrency": 64}),
        ("logbook (default concurrency)", {"concurrency": None}),
        ("logbook --concurrency 64, httpx engine", {"concurrency": 64, "engine": "httpx"}),
    ]
    series = {name: Series(name) for name in ["reference (aiohttp, 64 in flight)"]}
    series.update({name: Series(name) for name, _ in cli_variants})
    series["SDK pattern (requests, serial)"] = Series("SDK pattern (requests, serial)")

    def fresh() -> None:
        emu.reset()  # forgets faults too: set the latency after it
        emu.set_faults(latency_ms=latency)
        if emu.faults()["latency_ms"] != latency:
            raise RuntimeError(f"the emulator did not take latency_ms={latency}")

    for rep in range(repeats):
        # reference, then each logbook variant, then the reference again: the
        # reference brackets the logbook runs so a noisy spell hits both.
        order: list[tuple[str, Callable[[], tuple[float, float]]]] = []
        order.append(
            (
                "reference (aiohttp, 64 in flight)",
                _in_process(lambda: reference(emu.url, bodies)),
            )
        )
        for name, kw in cli_variants:
            order.append((name, _cli_measure(emu, root, jobs, kw)))
        if rep % 2 == 1:  # alternate which comes first
            order = order[::-1]
        for name, fn in order:
            fresh()
            server0 = _proc_cpu(emu.pid)
            seconds, cpu = fn()
            server = _proc_cpu(emu.pid) - server0
            _check_server(emu, n, name)
            series[name].rates.append(n / seconds)
            series[name].cpu_us.append(cpu / n * 1e6)
            series[name].server_us.append(server / n * 1e6)
            _log(f"  {latency:>2} ms  run {rep + 1}  {name}: {n / seconds:,.0f} jobs/s")
    # The SDK pattern is serial: slow at 50 ms, so time a subset and keep the rate.
    subset = bodies[:sdk_jobs]
    for rep in range(min(2, repeats)):
        fresh()
        server0 = _proc_cpu(emu.pid)
        seconds, cpu = _in_process(lambda: sdk_pattern(emu.url, subset))()
        server = _proc_cpu(emu.pid) - server0
        _check_server(emu, len(subset), "SDK pattern")
        sdk = series["SDK pattern (requests, serial)"]
        sdk.rates.append(len(subset) / seconds)
        sdk.cpu_us.append(cpu / len(subset) * 1e6)
        sdk.server_us.append(server / len(subset) * 1e6)
        _log(f"  {latency:>2} ms  run {rep + 1}  SDK pattern: {len(subset) / seconds:,.1f} jobs/s")
    return series


def _cli_measure(
    emu: EmulatorProcess, root: Path, jobs: list[dict[str, Any]], kw: dict[str, Any]
) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        home = fresh_home(root, jobs)
        try:
            result = run_cli(emu, home, **kw)
            check_store(home, len(jobs), result.report)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return result.seconds, result.cpu_seconds or 0.0

    return run


#: Runs whose JSON report counted fewer synced entries than the store holds.
REPORT_UNDERCOUNTS: list[str] = []
#: Runs that left entries ``sending`` in the store although the server had them all.
STUCK_SENDING: list[str] = []


def check_store(home: Path, n: int, report: dict[str, Any]) -> None:
    """Every entry must be ``synced`` in the store; a short report count is noted, not fatal.

    The store and the server are the truth; ``report["synced"]`` has been seen
    short of it (outcomes settled by a flush that was cancelled before counting).
    """
    import sqlite3

    conn = sqlite3.connect(home / "logbook.db")
    try:
        states = dict(conn.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())
    finally:
        conn.close()
    if sum(states.values()) != n or states.get("pending") or states.get("rejected"):
        raise RuntimeError(f"store after sync: {states}, expected {n} synced")
    if states.get("sending"):
        # The server has every job (checked by the caller), yet the store still
        # holds some as claimed: a settle was lost.  Timing stands; noted as a bug.
        STUCK_SENDING.append(f"store {states} after a run that reported {report}")
        _log(f"  BUG: store {states} after a run that reported {report}")
    elif report.get("synced") != n or report.get("pending") != 0:
        REPORT_UNDERCOUNTS.append(f"report {report} but the store has {n} synced")
        _log(f"  note: report {report} but the store has all {n} synced")


def startup_cost(emu: EmulatorProcess, root: Path) -> tuple[float, float]:
    """Wall clock and CPU of ``logbook sync`` with nothing to send: in every CLI figure."""
    best, cpu = float("inf"), float("inf")
    for _ in range(3):
        home = fresh_home(root, [])
        try:
            run = run_cli(emu, home)
            best, cpu = min(best, run.seconds), min(cpu, run.cpu_seconds or 0.0)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return best, cpu


# --- reporting ---------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not figures)")
    p.add_argument("--backlog", type=int, help="entries per sync run (default 5,000)")
    p.add_argument("--big", type=int, help="entries for the RSS run (default 100,000)")
    p.add_argument("--sdk-jobs", type=int, help="jobs the serial SDK pattern sends at 50 ms")
    p.add_argument("--repeats", type=int, help="runs per client and latency (best is kept)")
    p.add_argument("--skip-rss", action="store_true", help="skip the 100,000-entry RSS run")
    p.add_argument(
        "--logbook",
        metavar="DIR",
        help="run the CLI from the logbook package in DIR (a scratch copy to try a change);"
        " the emulator and the store builder still use this checkout",
    )
    p.add_argument(
        "--latency", type=int, action="append", help="only this latency in ms (repeatable)"
    )
    args = p.parse_args(argv)
    global CLI_ROOT
    if args.logbook:
        CLI_ROOT = str(Path(args.logbook).resolve())
        if not (Path(CLI_ROOT) / "logbook" / "__main__.py").exists():
            p.error(f"no logbook package in {CLI_ROOT}")
        where = subprocess.run(
            [sys.executable, "-c", "import logbook; print(logbook.__file__)"],
            cwd=CLI_ROOT,
            env={**os.environ, "PYTHONPATH": CLI_ROOT},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(CLI_ROOT + os.sep):
            p.error(f"the CLI would import logbook from {where}, not from {CLI_ROOT}")
    latencies = tuple(args.latency) if args.latency else LATENCIES
    # SIGTERM unwinds like Ctrl-C, so the emulator and temp stores are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backlog = args.backlog or (1_000 if args.quick else 5_000)
    big = args.big or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 3)
    sdk_slow = args.sdk_jobs or (50 if args.quick else 200)
    sdk_jobs = {lat: sdk_slow if lat >= 20 else min(backlog, 2_000) for lat in latencies}

    failures = 0
    root = Path(tempfile.mkdtemp(prefix="logbook-bench-sync-"))
    try:
        t0 = time.perf_counter()
        jobs = make_jobs(backlog)
        bodies = job_bodies(jobs)
        _log(f"prepared {backlog:,} jobs in {time.perf_counter() - t0:.1f} s")
        results: dict[int, dict[str, Series]] = {}
        with EmulatorProcess(KEY, progress_seconds=0) as emu:
            emu.reset()
            startup, startup_cpu = startup_cost(emu, root)
            _log(f"CLI fixed cost (empty store): {startup:.2f} s, {startup_cpu:.2f} s CPU")
            for latency in latencies:
                results[latency] = measure_latency(
                    emu, root, latency, jobs, bodies, repeats=repeats, sdk_jobs=sdk_jobs[latency]
                )

            rss_run: CliRun | None = None
            if not args.skip_rss:
                t0 = time.perf_counter()
                big_jobs = make_jobs(big, tag="rss")
                home = fresh_home(root, big_jobs)
                del big_jobs
                _log(f"built a {big:,}-entry store in {time.perf_counter() - t0:.1f} s")
                emu.reset()
                emu.set_faults(latency_ms=0)
                try:
                    rss_run = run_cli(emu, home, concurrency=None, sample_rss=True)
                    _check_server(emu, big, "RSS run")
                    check_store(home, big, rss_run.report)
                finally:
                    shutil.rmtree(home, ignore_errors=True)

        print(
            f"\nlogbook sync benchmark: backlog {backlog:,} entries, best of {repeats} runs"
            f" (all runs listed), jobs/s, wall clock of the CLI process"
            f" (includes its fixed start-up cost: {startup:.2f} s, {startup_cpu:.2f} s CPU;"
            f" client cpu/job includes it too)"
        )
        if CLI_ROOT != REPO_ROOT:
            print(f"  (CLI run from the logbook package in {CLI_ROOT})")
        for latency in latencies:
            s = results[latency]
            ref = s["reference (aiohttp, 64 in flight)"].best
            sdk = s["SDK pattern (requests, serial)"].best
            print(f"\n  latency {latency} ms")
            width = max(len(k) for k in s)
            for name, ser in s.items():
                extra = ""
                if name.startswith("logbook"):
                    extra = f"  {ser.best / ref:5.2f}x reference  {ser.best / sdk:6.1f}x SDK"
                print(f"    {name:<{width}}  {ser.best:>8,.1f}  [{ser.show()}]{extra}")
                print(f"    {'':<{width}}  {ser.cpu()}")
            main_rate = s["logbook --concurrency 64"].best
            target = REF_RATIO_TARGETS.get(latency, REF_RATIO_TARGETS[0])
            ok = main_rate / ref >= target
            failures += not ok
            print(
                f"    target: --concurrency 64 >= {target}x reference:"
                f" {main_rate / ref:.2f}x  {verdict(ok)}"
            )
            if latency == 50:  # the SDK target is set at 50 ms
                ok = main_rate / sdk >= SDK_RATIO_TARGET
                failures += not ok
                print(
                    f"    target: --concurrency 64 >= {SDK_RATIO_TARGET:g}x SDK pattern:"
                    f" {main_rate / sdk:.1f}x  {verdict(ok)}"
                )
            # Without the fixed start-up cost, for diagnosis only.
            n = backlog
            net = n / max(1e-9, n / main_rate - startup)
            print(
                f"    (--concurrency 64 without the start-up cost: {net:,.0f} jobs/s,"
                f" {net / ref:.2f}x reference)"
            )
        if rss_run is not None:
            assert rss_run.peak_rss_mb is not None
            ok = rss_run.peak_rss_mb <= RSS_TARGET_MB
            failures += not ok
            print(
                f"\n  {big:,}-entry backlog, no latency, default concurrency:"
                f" {big / rss_run.seconds:,.0f} jobs/s ({rss_run.seconds:.1f} s,"
                f" {rss_run.cpu_seconds:.1f} s CPU)"
            )
            print(
                f"    peak RSS (process + children, sampled every 50 ms):"
                f" {rss_run.peak_rss_mb:.0f} MB; target <= {RSS_TARGET_MB:g} MB: {verdict(ok)}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if STUCK_SENDING:
        failures += 1
        print(
            f"\n  FAIL: {len(STUCK_SENDING)} run(s) exited 0 with entries still 'sending'"
            " in the store (every job was on the server, once):"
        )
        for line in STUCK_SENDING:
            print(f"    {line}")
    if REPORT_UNDERCOUNTS:
        print(
            f"\n  {len(REPORT_UNDERCOUNTS)} run(s) whose JSON report undercounted 'synced'"
            " (store and server were complete):"
        )
        for line in REPORT_UNDERCOUNTS:
            print(f"    {line}")
    print(f"\n{'all targets met' if not failures else f'{failures} target(s) missed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
