"""How fast ``logbook sync`` drains a backlog, against the clients it must beat.

Runs the real CLI (``python -m logbook sync --concurrency 64``) as a
subprocess against the emulator on loopback, on a fresh store of 5,000
entries per measurement, and compares it with clients measured in the same
run on the same server with the same bodies:

- a raw reference that only posts: aiohttp, one ``ClientSession``,
  ``TCPConnector(limit=64)``, 64 workers, going direct;
- the Haiqu SDK's pattern: one ``requests`` POST after another on one
  ``requests.Session`` (key in the query string).

Targets, at 50 ms emulator latency: ``logbook sync`` >= 0.9x the reference
and >= 50x the SDK pattern; the same sync through a local forward proxy
(proxy.py on loopback, ``HTTP_PROXY`` set for the CLI and ``NO_PROXY``
unset, so loopback is not bypassed) >= 0.8x the reference going direct.
With no added latency: >= 0.3x the reference (jobs/s and client CPU per
job are shown for both).  Then the peak RSS (process and children, sampled
every 50 ms) of syncing 100,000 entries: <= 150 MB.

The machine may be shared and noisy, so every figure is the best of
``--repeats`` runs, and the runs of the different clients are interleaved.
Each run checks that the emulator holds every job exactly once and that the
store has them all ``synced``.

    python -m bench.bench_sync [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
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
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench._lab import (
    KEY,
    REPO_ROOT,
    ProxyProcess,
    clean_env,
    fresh_home,
    job_bodies,
    make_jobs,
    proxy_env,
    tree_cpu,
    tree_rss,
    verdict,
)
from logbook.emulator.testing import EmulatorProcess

__all__ = ["KEY", "fresh_home", "job_bodies", "main", "make_jobs"]

LATENCIES = (50, 0)
SDK_RATIO_TARGET = 50.0  # at 50 ms
REF_RATIO_TARGETS = {50: 0.9, 0: 0.3}
PROXY_RATIO_TARGET = 0.8  # at 50 ms, through proxy.py, against the reference going direct
RSS_TARGET_MB = 150.0
#: Where the CLI under test imports ``logbook`` from (``--logbook DIR`` to try a scratch copy).
CLI_ROOT = REPO_ROOT

REF = "reference (aiohttp, 64 in flight)"
REF_PROXY = "reference, via proxy.py"
CLI = "logbook sync --concurrency 64"
CLI_PROXY = "logbook sync --concurrency 64, via proxy.py"
SDK = "SDK pattern (requests, serial)"


# --- clients -----------------------------------------------------------------------


@dataclass
class CliRun:
    seconds: float
    report: dict[str, Any]
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None


def run_cli(
    emu: EmulatorProcess,
    home: Path,
    *,
    concurrency: int | None = 64,
    sample_rss: bool = False,
    extra_env: dict[str, str] | None = None,
    timeout: float = 900.0,
) -> CliRun:
    """``logbook sync --no-refresh --json`` as a subprocess; wall clock, report, peak RSS."""
    cmd = [sys.executable, "-m", "logbook", "sync", "--no-refresh", "--json"]
    if concurrency is not None:
        cmd[4:4] = ["--concurrency", str(concurrency)]
    # No proxy, CA or logbook setting leaks in from the caller: only what is asked for.
    env = clean_env(LOGBOOK_HOME=str(home), **emu.env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CLI_ROOT, env.get("PYTHONPATH")) if p)
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
            while proc.poll() is None:
                peak = max(peak, tree_rss(proc.pid))
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
    import json

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
        s.trust_env = False  # direct, whatever the caller's shell says
        start = time.perf_counter()
        for body in bodies:
            r = s.post(target, data=body, headers=headers, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"SDK pattern: HTTP {r.status_code}: {r.text[:200]}")
        return time.perf_counter() - start


async def _reference(
    url: str, bodies: Sequence[bytes], workers: int, proxy: str | None = None
) -> float:
    import aiohttp

    params = {"HAIQU_API_KEY": KEY}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    it = iter(bodies)
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in it:
                async with session.post(
                    url + "/jobs", params=params, data=body, headers=headers, proxy=proxy
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"reference: HTTP {resp.status}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - start


def reference(
    url: str, bodies: Sequence[bytes], workers: int = 64, proxy: str | None = None
) -> float:
    """A raw aiohttp client, ``workers`` requests in flight, that only posts; seconds taken."""
    return asyncio.run(_reference(url, bodies, workers, proxy))


# --- measuring ---------------------------------------------------------------------


@dataclass
class Series:
    """Jobs/s of one client at one latency, over several runs."""

    name: str
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # client CPU per job
    server_us: list[float] = field(default_factory=list)  # emulator CPU per job
    proxy_us: list[float] = field(default_factory=list)  # proxy.py CPU per job

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else float("nan")

    def show(self) -> str:
        return " ".join(f"{r:,.0f}" for r in self.rates)

    def cpu(self) -> str:
        """Least client and server CPU per job over the runs (noise only adds)."""
        if not self.cpu_us:
            return ""
        text = f"cpu/job: client {min(self.cpu_us):4.0f} us, server {min(self.server_us):4.0f} us"
        if self.proxy_us:
            text += f", proxy {min(self.proxy_us):4.0f} us"
        return text


Measure = Callable[[], tuple[float, float, float]]  # wall s, client CPU s, proxy CPU s


def _in_process(fn: Callable[[], float]) -> Measure:
    """Wrap an in-process client: (wall seconds, this process's CPU seconds, 0)."""

    def run() -> tuple[float, float, float]:
        cpu0 = time.process_time()
        seconds = fn()
        return seconds, time.process_time() - cpu0, 0.0

    return run


def _via(proxy: ProxyProcess, fn: Callable[[], float]) -> Measure:
    """An in-process client through proxy.py: (wall s, this process's CPU s, proxy CPU s)."""

    def run() -> tuple[float, float, float]:
        proxy0 = tree_cpu(proxy.pid)
        seconds, cpu, _ = _in_process(fn)()
        return seconds, cpu, tree_cpu(proxy.pid) - proxy0

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
    proxy: ProxyProcess | None,
) -> dict[str, Series]:
    """Interleaved runs of every client at one latency; returns jobs/s per client."""
    n = len(jobs)
    cli_variants: list[tuple[str, dict[str, Any]]] = [(CLI, {})]
    if proxy is not None:
        cli_variants.append((CLI_PROXY, {"proxy": proxy}))
    refs = [REF, REF_PROXY] if proxy is not None else [REF]
    series = {name: Series(name) for name in [*refs, *(name for name, _ in cli_variants), SDK]}

    def fresh() -> None:
        emu.reset()  # forgets faults too: set the latency after it
        emu.set_faults(latency_ms=latency)
        if emu.faults()["latency_ms"] != latency:
            raise RuntimeError(f"the emulator did not take latency_ms={latency}")

    for rep in range(repeats):
        # The reference, then each logbook variant: alternating which comes
        # first, so a noisy spell hits all of them over the runs.
        order: list[tuple[str, Measure]] = [(REF, _in_process(lambda: reference(emu.url, bodies)))]
        if proxy is not None:
            # A diagnostic: what proxy.py allows a client that costs little CPU.
            through = partial(reference, emu.url, bodies, proxy=proxy.url)
            order.append((REF_PROXY, _via(proxy, through)))
        for name, kw in cli_variants:
            order.append((name, _cli_measure(emu, root, jobs, **kw)))
        if rep % 2 == 1:
            order = order[::-1]
        for name, fn in order:
            fresh()
            server0 = tree_cpu(emu.pid or 0)
            seconds, cpu, proxy_cpu = fn()
            server = tree_cpu(emu.pid or 0) - server0
            _check_server(emu, n, name)
            s = series[name]
            s.rates.append(n / seconds)
            s.cpu_us.append(cpu / n * 1e6)
            s.server_us.append(server / n * 1e6)
            if name in (CLI_PROXY, REF_PROXY):
                s.proxy_us.append(proxy_cpu / n * 1e6)
            _log(f"  {latency:>2} ms  run {rep + 1}  {name}: {n / seconds:,.0f} jobs/s")
    # The SDK pattern is serial: slow at 50 ms, so time a subset and keep the rate.
    subset = bodies[:sdk_jobs]
    for rep in range(min(2, repeats)):
        fresh()
        server0 = tree_cpu(emu.pid or 0)
        seconds, cpu, _ = _in_process(lambda: sdk_pattern(emu.url, subset))()
        server = tree_cpu(emu.pid or 0) - server0
        _check_server(emu, len(subset), "SDK pattern")
        sdk = series[SDK]
        sdk.rates.append(len(subset) / seconds)
        sdk.cpu_us.append(cpu / len(subset) * 1e6)
        sdk.server_us.append(server / len(subset) * 1e6)
        _log(f"  {latency:>2} ms  run {rep + 1}  SDK pattern: {len(subset) / seconds:,.1f} jobs/s")
    return series


#: The proxy must have done this much work per job, or the CLI went around it.
PROXY_MIN_CPU_US = 20.0


def _cli_measure(
    emu: EmulatorProcess, root: Path, jobs: list[dict[str, Any]], proxy: ProxyProcess | None = None
) -> Measure:
    def run() -> tuple[float, float, float]:
        home = fresh_home(root, jobs)
        extra = proxy_env(proxy.url) if proxy is not None else None
        try:
            proxy0 = tree_cpu(proxy.pid) if proxy is not None else 0.0
            result = run_cli(emu, home, extra_env=extra)
            proxy_cpu = tree_cpu(proxy.pid) - proxy0 if proxy is not None else 0.0
            check_store(home, len(jobs), result.report)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if proxy is not None and proxy_cpu / len(jobs) * 1e6 < PROXY_MIN_CPU_US:
            raise RuntimeError(
                f"proxy.py used {proxy_cpu:.2f} s CPU for {len(jobs)} jobs:"
                " the sync did not go through it (is NO_PROXY bypassing loopback?)"
            )
        return result.seconds, result.cpu_seconds or 0.0, proxy_cpu

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not figures)")
    p.add_argument("--backlog", type=int, help="entries per sync run (default 5,000)")
    p.add_argument("--big", type=int, help="entries for the RSS run (default 100,000)")
    p.add_argument("--sdk-jobs", type=int, help="jobs the serial SDK pattern sends at 50 ms")
    p.add_argument("--repeats", type=int, help="runs per client and latency (best is kept)")
    p.add_argument("--skip-rss", action="store_true", help="skip the 100,000-entry RSS run")
    p.add_argument("--skip-proxy", action="store_true", help="skip the runs through proxy.py")
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
    # SIGTERM unwinds like Ctrl-C, so the emulator, the proxy and temp stores are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backlog = args.backlog or (1_000 if args.quick else 5_000)
    big = args.big or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 3)
    sdk_slow = args.sdk_jobs or (50 if args.quick else 200)
    sdk_jobs = {lat: sdk_slow if lat >= 20 else min(backlog, 2_000) for lat in latencies}

    failures = 0
    root = Path(tempfile.mkdtemp(prefix="logbook-bench-sync-"))
    proxy: ProxyProcess | None = None
    try:
        t0 = time.perf_counter()
        jobs = make_jobs(backlog)
        bodies = job_bodies(jobs)
        _log(f"prepared {backlog:,} jobs in {time.perf_counter() - t0:.1f} s")
        results: dict[int, dict[str, Series]] = {}
        if not args.skip_proxy and any(lat == 50 for lat in latencies):
            proxy = ProxyProcess(root).start()
            _log(f"proxy.py listening on {proxy.url} (pid {proxy.pid})")
        with EmulatorProcess(KEY, progress_seconds=0) as emu:
            emu.reset()
            startup, startup_cpu = startup_cost(emu, root)
            _log(f"CLI fixed cost (empty store): {startup:.2f} s, {startup_cpu:.2f} s CPU")
            for latency in latencies:
                results[latency] = measure_latency(
                    emu, root, latency, jobs, bodies, repeats=repeats,
                    sdk_jobs=sdk_jobs[latency], proxy=proxy if latency == 50 else None,
                )  # fmt: skip

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
            ref = s[REF].best
            sdk = s[SDK].best
            print(f"\n  latency {latency} ms")
            width = max(len(k) for k in s)
            for name, ser in s.items():
                if not ser.rates:
                    continue
                extra = ""
                if name.startswith("logbook"):
                    extra = f"  {ser.best / ref:5.2f}x reference  {ser.best / sdk:6.1f}x SDK"
                print(f"    {name:<{width}}  {ser.best:>8,.1f}  [{ser.show()}]{extra}")
                print(f"    {'':<{width}}  {ser.cpu()}")
            main_rate = s[CLI].best
            target = REF_RATIO_TARGETS.get(latency, REF_RATIO_TARGETS[0])
            ok = main_rate / ref >= target
            failures += not ok
            print(
                f"    target: {CLI} >= {target}x reference: {main_rate / ref:.2f}x  {verdict(ok)}"
            )
            if latency == 50:  # the SDK and proxy targets are set at 50 ms
                ok = main_rate / sdk >= SDK_RATIO_TARGET
                failures += not ok
                print(
                    f"    target: {CLI} >= {SDK_RATIO_TARGET:g}x SDK pattern:"
                    f" {main_rate / sdk:.1f}x  {verdict(ok)}"
                )
                if s[CLI_PROXY].rates:
                    via = s[CLI_PROXY].best
                    ok = via / ref >= PROXY_RATIO_TARGET
                    failures += not ok
                    print(
                        f"    target: {CLI_PROXY} >= {PROXY_RATIO_TARGET:g}x reference (direct):"
                        f" {via / ref:.2f}x  {verdict(ok)}"
                    )
                    if s[REF_PROXY].rates:
                        print(
                            f"    (diagnostic: the reference through the same proxy"
                            f" {s[REF_PROXY].best / ref:.2f}x direct; logbook through it"
                            f" {via / s[REF_PROXY].best:.2f}x the reference through it)"
                        )
            # Without the fixed start-up cost, for diagnosis only.
            n = backlog
            net = n / max(1e-9, n / main_rate - startup)
            cli_cpu = min(s[CLI].cpu_us)
            net_cpu = cli_cpu - startup_cpu / n * 1e6
            print(
                f"    ({CLI} without the start-up cost: {net:,.0f} jobs/s,"
                f" {net / ref:.2f}x reference; client cpu/job {net_cpu:.0f} us"
                f" vs the reference's {min(s[REF].cpu_us):.0f} us)"
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
        if proxy is not None:
            proxy.stop()
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
