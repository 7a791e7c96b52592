"""``logbook relay`` under a lab's load: intake, forwarding, and memory with a huge backlog.

Everything is real processes on loopback: the emulator (``python -m
logbook.emulator``), the relay (``logbook relay --listen 127.0.0.1:0
--upstream EMULATOR``, with one relay key per lab machine) and the lab
machines (``logbook sync``, each with a LOGBOOK_HOME and a store of its own).

(a) Intake: 16 lab machines, 5,000 entries each, sync into ONE relay whose
    upstream is the emulator (it forwards while they post).  Intake = jobs
    committed into the relay's store per second: all jobs over the wall time
    from the first start until the last of the 16 syncs exited 0.  Reference:
    the same 16 processes pointed at the emulator directly, in the same run
    (the emulator's own POST rate).  Target: intake >= 3,000 jobs/s.
    Afterwards the emulator must hold every job exactly once.
(b) Forwarding: a relay whose store holds a backlog of 5,000 jobs forwards
    them to the emulator at 50 ms latency: the time from the relay's start
    until the emulator holds all 5,000, against one ``logbook sync
    --concurrency 64`` of 5,000 entries straight to the same emulator (both
    include a process start-up).  Target: >= 0.9x.
(d) A relay that lost everything: a lab machine with 10,000 entries it synced
    into a relay (unconfirmed: the relay's upstream was unreachable) runs one
    ordinary ``logbook sync`` after the relay's store was put back to a backup
    taken before (its keys only): 10,000 refreshes answered 404, 10,000
    look-ups, 10,000 re-offered POSTs.  Target: under 30 s; shown beside the
    first sync of the same 10,000 into the relay, in the same run.
(c) Memory: the relay's RSS with a 1,000,000-job backlog (seeded straight
    into its store) while its forwarding loop runs against an emulator with
    60 s latency (nothing completes, the backlog stays), and while 4 lab
    machines post 2,000 jobs each into it; sampled every 100 ms for ~20 s.
    Target: <= 150 MB.

Prints every figure and PASS/FAIL per target; exits 1 when any is missed.

    python -m bench.bench_relay [--quick] [--repeats N] [--skip-memory] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._lab import (
    KEY,
    RelayProcess,
    RssSampler,
    SyncProcess,
    SyncResult,
    fresh_home,
    job_bodies,
    log,
    machine_busy,
    make_jobs,
    poll_until,
    scratch,
    seed_synthetic,
    store_states,
    tree_cpu,
    verdict,
    wait_all,
)
from logbook.emulator.testing import EmulatorProcess
from logbook.store import Store

INTAKE_TARGET = 3000.0  # jobs/s committed into the relay's store
FORWARD_RATIO_TARGET = 0.9  # relay forwarding vs a direct sync, at 50 ms
RSS_TARGET_MB = 150.0
REOFFER_TARGET_S = 30.0  # a lab's refresh + re-offer of 10,000 entries a relay lost
FORWARD_LATENCY_MS = 50
MEMORY_LATENCY_MS = 60_000

FAILURES: list[str] = []


def _fail(what: str) -> None:
    FAILURES.append(what)
    log(f"  FAIL: {what}")


def _check_emulator(emu: EmulatorProcess, expected: int, what: str) -> dict[str, Any]:
    """The emulator holds ``expected`` jobs, none twice."""
    stats = emu.stats()
    if stats["jobs_created"] != expected or stats["duplicates"] != 0:
        raise RuntimeError(
            f"{what}: the emulator holds {stats['jobs_created']} jobs"
            f" ({stats['duplicates']} duplicates), expected {expected} and 0"
        )
    return stats


def _check_synced(db: Path, expected: int, what: str) -> None:
    states = store_states(db)
    if states.get("synced", 0) != expected or sum(states.values()) != expected:
        raise RuntimeError(f"{what}: store {db} holds {states}, expected {expected} synced")


def _lab_homes(root: Path, jobs: list[list[dict[str, Any]]]) -> list[Path]:
    return [fresh_home(root, js, prefix=f"lab{i:02d}-") for i, js in enumerate(jobs)]


def _rm(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


# --- (a) intake ---------------------------------------------------------------------------


@dataclass
class IntakeRun:
    """One intake measurement: jobs/s, and CPU per job of each process kind."""

    rate: float  # jobs/s: committed into the relay's store, or created by the emulator
    seconds: float
    labs_us: float  # the lab machines' CPU per job (all of them, start-up included)
    server_us: float  # the relay's (or, direct, the emulator's) CPU per job
    emulator_us: float = 0.0  # the emulator's CPU per job, behind a relay
    forwarded_during: int = 0  # jobs upstream when the last lab sync exited
    drain_seconds: float = 0.0  # from the start until every job was upstream
    finish_spread: float = 0.0  # last lab exit - first lab exit
    machine_cores: float = 0.0  # cores the whole machine kept busy meanwhile (anyone's work)

    @property
    def cpu_us(self) -> float:
        return self.labs_us + self.server_us + self.emulator_us

    @property
    def cores(self) -> float:
        """CPU cores kept busy on average by these processes."""
        return self.cpu_us * self.rate / 1e6


@dataclass
class Intake:
    direct: list[IntakeRun] = field(default_factory=list)  # the emulator's own POST rate
    relay: list[IntakeRun] = field(default_factory=list)  # committed into the relay
    capacity: IntakeRun | None = None  # the relay fed by a cheap in-process client
    stalled: IntakeRun | None = None  # the same, its forwarding stalled: intake alone
    offline: IntakeRun | None = None  # the lab syncs, the relay's upstream unreachable


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _labs(
    endpoint: str, homes: list[Path], keys: list[str]
) -> tuple[float, list[SyncResult], float]:
    """Run one ``logbook sync`` per home at once; wall time, results, and their CPU seconds."""
    cpu0 = _children_cpu()  # only the lab syncs are reaped in between
    procs = [
        SyncProcess(h, endpoint, k, concurrency=None) for h, k in zip(homes, keys, strict=True)
    ]
    results = wait_all(procs)
    cpu = _children_cpu() - cpu0
    for i, r in enumerate(results):
        if r.code != 0:
            raise RuntimeError(
                f"lab machine {i} (logbook sync) exited {r.code}: {r.stdout[-300:]}"
                f" {r.stderr[-1500:]}"
            )
    wall = max(r.ended for r in results) - min(r.started for r in results)
    return wall, results, cpu


def intake_direct(emu: EmulatorProcess, root: Path, jobs: list[list[dict[str, Any]]]) -> IntakeRun:
    total = sum(len(j) for j in jobs)
    emu.reset()
    homes = _lab_homes(root, jobs)
    try:
        emu0, busy0 = tree_cpu(emu.pid or 0), machine_busy()
        wall, _, labs_cpu = _labs(emu.url, homes, [KEY] * len(homes))
        emu_cpu, busy = tree_cpu(emu.pid or 0) - emu0, machine_busy() - busy0
        _check_emulator(emu, total, "intake reference")
        for h, js in zip(homes, jobs, strict=True):
            _check_synced(h / "logbook.db", len(js), "intake reference")
    finally:
        _rm(homes)
    return IntakeRun(
        total / wall, wall, labs_cpu / total * 1e6, emu_cpu / total * 1e6,
        machine_cores=busy / wall,
    )  # fmt: skip


def _drain(emu: EmulatorProcess, relay: RelayProcess, total: int, what: str) -> None:
    """Wait until the relay has forwarded every job (once) and settled them in its store."""
    ok = poll_until(
        lambda: emu.stats()["jobs_created"] >= total, time.monotonic() + 300, interval=0.5
    )
    if not ok:
        raise RuntimeError(
            f"{what}: the relay forwarded {emu.stats()['jobs_created']} of {total} in 300 s"
            f"; relay log: {relay.stderr_tail()}"
        )
    poll_until(
        lambda: store_states(relay.db).get("synced", 0) == total,
        time.monotonic() + 60,
        interval=0.2,
    )
    _check_emulator(emu, total, f"{what} (upstream)")
    _check_synced(relay.db, total, f"{what} (relay store)")


def _unreachable_url() -> str:
    """A loopback URL where nothing listens (a port the kernel just gave and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def intake_relay(
    emu: EmulatorProcess,
    root: Path,
    jobs: list[list[dict[str, Any]]],
    n: int,
    *,
    offline: bool = False,
) -> IntakeRun:
    """The lab syncs into a relay that forwards to ``emu`` meanwhile; ``offline``: its
    upstream is unreachable (the lab's internet is down), so it only takes jobs in."""
    total = sum(len(j) for j in jobs)
    emu.reset()
    relay_home = root / f"relay-intake-{n}{'-offline' if offline else ''}"
    relay_home.mkdir()
    homes = _lab_homes(root, jobs)
    relay = RelayProcess(relay_home, _unreachable_url() if offline else emu.url, KEY)
    try:
        keys = relay.add_keys([f"lab-{i:02d}" for i in range(len(homes))])
        relay.start()
        start = time.perf_counter()
        relay0, emu0, busy0 = tree_cpu(relay.pid), tree_cpu(emu.pid or 0), machine_busy()
        wall, results, labs_cpu = _labs(relay.url, homes, list(keys.values()))
        relay_cpu, emu_cpu = tree_cpu(relay.pid) - relay0, tree_cpu(emu.pid or 0) - emu0
        busy = machine_busy() - busy0
        committed = sum(store_states(relay.db).values())
        upstream_now = emu.stats()["jobs_created"]
        if committed != total:
            raise RuntimeError(f"intake: the relay's store holds {committed}, expected {total}")
        for h, js in zip(homes, jobs, strict=True):
            _check_synced(h / "logbook.db", len(js), "intake (lab store)")
        # Then let the relay finish forwarding: every job upstream, once.
        if not offline:
            _drain(emu, relay, total, "intake")
        drained = time.perf_counter() - start
        code = relay.stop()
        if code != 0:
            _fail(f"the relay exited {code} on SIGTERM after intake")
    finally:
        relay.close()
        _rm([*homes, relay_home])
    ends = sorted(r.ended for r in results)
    return IntakeRun(
        total / wall, wall, labs_cpu / total * 1e6, relay_cpu / total * 1e6,
        emulator_us=emu_cpu / total * 1e6, forwarded_during=upstream_now, drain_seconds=drained,
        finish_spread=ends[-1] - ends[0], machine_cores=busy / wall,
    )  # fmt: skip


async def _post_all(url: str, keys: list[str], bodies: list[list[bytes]], per_key: int) -> float:
    """Each key's bodies from ``per_key`` workers of one aiohttp session; seconds taken."""
    import aiohttp

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=len(keys) * per_key)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(key: str, it: Any) -> None:
            for body in it:
                async with session.post(
                    url + "/jobs", params={"HAIQU_API_KEY": key}, data=body, headers=headers
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"relay answered HTTP {resp.status}")

        iters = [iter(b) for b in bodies]
        start = time.perf_counter()
        await asyncio.gather(
            *(worker(k, it) for k, it in zip(keys, iters, strict=True) for _ in range(per_key))
        )
        return time.perf_counter() - start


def intake_capacity(
    emu: EmulatorProcess, root: Path, jobs: list[list[dict[str, Any]]], *, stalled: bool = False
) -> IntakeRun:
    """The relay's intake fed by one cheap in-process client (aiohttp, 64 in flight per key).

    A diagnostic: the same jobs, keys and requests in flight as the lab
    machines, but a client that costs a fraction of ``logbook sync``'s CPU
    per job.  ``stalled``: the relay's upstream is an emulator of its own
    whose requests hang for a minute, so its forwarding loop holds 64
    requests and does nothing else: the relay's intake alone.  Otherwise the
    relay forwards meanwhile to ``emu``, as in the intake runs.
    """
    total = sum(len(j) for j in jobs)
    relay_home = root / f"relay-capacity-{'stalled' if stalled else 'forwarding'}"
    relay_home.mkdir()
    bodies = [job_bodies(js) for js in jobs]
    with contextlib.ExitStack() as stack:
        if stalled:
            emu = stack.enter_context(EmulatorProcess(KEY, progress_seconds=0))
            emu.set_faults(latency_ms=MEMORY_LATENCY_MS)
        else:
            emu.reset()
        relay = RelayProcess(relay_home, emu.url, KEY)
        stack.callback(_rm, [relay_home])
        stack.callback(relay.close)
        keys = list(relay.add_keys([f"lab-{i:02d}" for i in range(len(jobs))]).values())
        relay.start()
        relay0, emu0, own0 = tree_cpu(relay.pid), tree_cpu(emu.pid or 0), time.process_time()
        seconds = asyncio.run(_post_all(relay.url, keys, bodies, 64))
        relay_cpu, emu_cpu = tree_cpu(relay.pid) - relay0, tree_cpu(emu.pid or 0) - emu0
        own = time.process_time() - own0
        stats = emu.stats()
        committed = sum(store_states(relay.db).values())
        if committed != total:
            raise RuntimeError(f"capacity: the relay's store holds {committed}, expected {total}")
        if stats["duplicates"]:
            raise RuntimeError(f"capacity: {stats['duplicates']} duplicates upstream")
        if not stalled:
            _drain(emu, relay, total, "capacity")
        relay.stop()
    return IntakeRun(
        total / seconds, seconds, own / total * 1e6, relay_cpu / total * 1e6,
        emulator_us=emu_cpu / total * 1e6, forwarded_during=stats["jobs_created"],
    )  # fmt: skip


# --- (b) forwarding -----------------------------------------------------------------------


def forward_direct(emu: EmulatorProcess, root: Path, jobs: list[dict[str, Any]]) -> float:
    n = len(jobs)
    emu.reset()
    emu.set_faults(latency_ms=FORWARD_LATENCY_MS)
    home = fresh_home(root, jobs)
    try:
        result = SyncProcess(home, emu.url, KEY, concurrency=64).wait()
        if result.code != 0:
            raise RuntimeError(f"direct sync exited {result.code}: {result.stderr[-1500:]}")
        _check_emulator(emu, n, "forwarding reference")
        _check_synced(home / "logbook.db", n, "forwarding reference")
    finally:
        _rm([home])
    return n / result.seconds


def forward_relay(emu: EmulatorProcess, root: Path, jobs: list[dict[str, Any]]) -> float:
    n = len(jobs)
    emu.reset()
    emu.set_faults(latency_ms=FORWARD_LATENCY_MS)
    home = fresh_home(root, jobs, prefix="relay-fwd-")
    relay = RelayProcess(home, emu.url, KEY)
    try:
        relay.start()
        ok = poll_until(
            lambda: emu.stats()["jobs_created"] >= n, time.monotonic() + 300, interval=0.02
        )
        seconds = time.perf_counter() - relay.started
        if not ok:
            raise RuntimeError(
                f"forwarding: the emulator holds {emu.stats()['jobs_created']} of {n} after"
                f" 300 s; relay log: {relay.stderr_tail()}"
            )
        settled = poll_until(
            lambda: store_states(relay.db).get("synced", 0) == n,
            time.monotonic() + 60,
            interval=0.1,
        )
        if not settled:
            _fail(f"forwarding: the relay's store is {store_states(relay.db)} a minute later")
        _check_emulator(emu, n, "forwarding")
        code = relay.stop()
        if code != 0:
            _fail(f"the relay exited {code} on SIGTERM after forwarding")
    finally:
        relay.close()
        _rm([home])
    return n / seconds


# --- (d) a relay that lost everything ----------------------------------------------------


@dataclass
class Reoffer:
    n: int
    first_sync: float  # seconds: the lab's first sync of n entries into the relay
    reoffer_sync: float  # seconds: the sync that found the relay had lost them all
    reoffered: int
    unconfirmed_after: int


def reoffer(root: Path, n: int) -> Reoffer:
    """A lab's ordinary sync after its relay lost every job it had accepted."""
    home = fresh_home(root, make_jobs(n, tag="lost"), prefix="reoffer-lab-")
    relay_home = root / "reoffer-relay"
    relay_home.mkdir()
    port = _free_port()
    relay = RelayProcess(relay_home, _unreachable_url(), KEY, port=port)
    key = relay.add_keys(["lab"])["lab"]
    nightly = root / "reoffer-nightly.db"
    shutil.copyfile(relay.db, nightly)  # the backup: keys, no jobs
    try:
        relay.start()
        first = SyncProcess(home, relay.url, key, concurrency=64).wait()
        if first.code != 0:
            raise RuntimeError(f"first sync exited {first.code}: {first.stderr[-1500:]}")
        relay.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{relay.db}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(nightly, relay.db)
        relay.start()
        again = SyncProcess(home, relay.url, key, concurrency=64, refresh=True).wait()
        if again.code != 0:
            raise RuntimeError(f"re-offering sync exited {again.code}: {again.stderr[-1500:]}")
        held = store_states(relay.db).get("pending", 0) + store_states(relay.db).get("sending", 0)
        with Store(home / "logbook.db", readonly=True) as s:
            unconfirmed, _ = s.unconfirmed()
        if held != n or unconfirmed != n:
            raise RuntimeError(f"after the re-offer the relay holds {held}, the lab {unconfirmed}")
    finally:
        relay.close()
        _rm([home, relay_home])
    # the relay holds all n again and the lab has them all (unconfirmed) through it: offered
    # again, each after its look-up (checked above, or it raised)
    return Reoffer(n, first.seconds, again.seconds, held, unconfirmed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- (c) memory ---------------------------------------------------------------------------


@dataclass
class Memory:
    backlog: int
    seed_seconds: float
    ready_seconds: float
    peak_mb: float
    start_mb: float
    end_mb: float
    sampled_seconds: float
    labs: int
    lab_jobs: int
    lab_seconds: float
    upstream_posts: int
    exit_code: int | None


def memory(root: Path, backlog: int, labs: int, lab_entries: int, seconds: float) -> Memory:
    home = root / "relay-memory"
    home.mkdir()
    t0 = time.perf_counter()
    inserted = seed_synthetic(home / "logbook.db", backlog, tag="backlog")
    seeded = time.perf_counter() - t0
    if inserted != backlog:
        raise RuntimeError(f"seeded {inserted} of {backlog} entries")
    log(f"  seeded the relay's store with {backlog:,} pending jobs in {seeded:.1f} s")
    lab_jobs = [make_jobs(lab_entries, tag=f"memlab{i}") for i in range(labs)]
    homes = _lab_homes(root, lab_jobs)
    # An emulator of its own: its requests hang for a minute, none may leak into another part.
    with EmulatorProcess(KEY, progress_seconds=0) as emu:
        emu.set_faults(latency_ms=MEMORY_LATENCY_MS)
        relay = RelayProcess(home, emu.url, KEY)
        try:
            keys = relay.add_keys([f"memlab-{i}" for i in range(labs)])
            relay.start(timeout=120)
            ready = time.perf_counter() - relay.started
            with RssSampler(relay.pid, interval=0.1) as rss:
                begin = time.perf_counter()
                time.sleep(min(3.0, seconds / 4))  # the forwarding loop alone first
                wall, _, _ = _labs(relay.url, homes, list(keys.values()))
                left = seconds - (time.perf_counter() - begin)
                if left > 0:
                    time.sleep(left)
                sampled = time.perf_counter() - begin
            held = sum(store_states(relay.db).values())
            expected = backlog + labs * lab_entries
            if held != expected:
                raise RuntimeError(f"memory: the relay's store holds {held}, expected {expected}")
            stats = emu.stats()
            if stats["duplicates"] != 0:
                raise RuntimeError(f"memory: {stats['duplicates']} duplicates upstream")
            posts = stats["requests"].get("POST /jobs", 0)
            code = relay.stop(timeout=30)
        finally:
            relay.close()
            _rm(homes)
    shutil.rmtree(home, ignore_errors=True)
    samples = [r for _, r in rss.samples if r]
    return Memory(
        backlog=backlog, seed_seconds=seeded, ready_seconds=ready, peak_mb=rss.peak / 2**20,
        start_mb=samples[0] / 2**20 if samples else 0.0,
        end_mb=samples[-1] / 2**20 if samples else 0.0, sampled_seconds=sampled, labs=labs,
        lab_jobs=labs * lab_entries, lab_seconds=wall, upstream_posts=posts, exit_code=code,
    )  # fmt: skip


# --- main -----------------------------------------------------------------------------------


def _runs(values: list[float]) -> str:
    return " ".join(f"{v:,.0f}" for v in values)


def _show_intake(intake: Intake, machines: int, entries: int) -> None:
    total = machines * entries
    best = max(intake.relay, key=lambda r: r.rate)
    ref = max(intake.direct, key=lambda r: r.rate)
    ok = best.rate >= INTAKE_TARGET
    if not ok:
        FAILURES.append("intake")
    cores = os.cpu_count() or 1
    print(
        f"\n  (a) intake: {machines} lab machines (logbook sync, one process and store each)"
        f" x {entries:,} entries = {total:,} jobs into one relay (upstream: the emulator,"
        " forwarding meanwhile)"
    )
    print(
        f"    committed into the relay's store: {best.rate:>7,.0f} jobs/s"
        f"  [{_runs([r.rate for r in intake.relay])}]  (last lab exit {best.seconds:.1f} s"
        f" after the first start; exits spread over {best.finish_spread:.1f} s)"
    )
    print(
        f"    reference, the same {machines} syncs straight to the emulator: {ref.rate:,.0f}"
        f" jobs/s  [{_runs([r.rate for r in intake.direct])}];"
        f"  relay / emulator: {best.rate / ref.rate:.2f}x"
    )
    print(
        f"    upstream when the last lab sync exited: {best.forwarded_during:,} of {total:,};"
        f" all {total:,} upstream {best.drain_seconds:.1f} s after the start"
        f" ({total / best.drain_seconds:,.0f} jobs/s end to end); 0 duplicates"
    )
    print(
        f"    CPU per job: lab syncs {best.labs_us:.0f} us, relay {best.server_us:.0f} us"
        f" (intake and forwarding), emulator {best.emulator_us:.0f} us ="
        f" {best.cpu_us:.0f} us: these processes kept {best.cores:.2f} of {cores} cores busy,"
        f" the whole machine {best.machine_cores:.2f}; direct: lab syncs {ref.labs_us:.0f} us,"
        f" emulator {ref.server_us:.0f} us ({ref.cores:.2f} cores, machine"
        f" {ref.machine_cores:.2f})"
    )
    print(
        f"    (the CPU alone caps this setup at {cores * 1e6 / best.cpu_us:,.0f} jobs/s on"
        f" {cores} idle cores: the lab machines share them with the relay here)"
    )
    cap, stalled = intake.capacity, intake.stalled
    if cap is not None:
        print(
            f"    diagnostic, the relay fed by one in-process aiohttp client ({machines} keys x 64"
            f" in flight, {cap.labs_us:.0f} us CPU per job):"
        )
        print(
            f"      forwarding meanwhile: {cap.rate:>7,.0f} jobs/s committed; relay"
            f" {cap.server_us:.0f} us CPU per job ({cap.server_us * cap.rate / 1e6:.2f} cores),"
            f" emulator {cap.emulator_us:.0f} us; {cap.forwarded_during:,} upstream by then"
        )
    if stalled is not None:
        print(
            f"      forwarding stalled:   {stalled.rate:>7,.0f} jobs/s committed; relay"
            f" {stalled.server_us:.0f} us CPU per job"
            f" ({stalled.server_us * stalled.rate / 1e6:.2f} cores)  (upstream requests hang"
            f" {MEMORY_LATENCY_MS / 1000:g} s: the relay's intake alone)"
        )
    off = intake.offline
    if off is not None:
        print(
            f"    the same {machines} lab syncs, the relay's upstream unreachable (it only takes"
            f" jobs in): {off.rate:>7,.0f} jobs/s committed = {off.rate / ref.rate:.2f}x the"
            f" emulator's own; CPU per job: lab syncs {off.labs_us:.0f} us, relay"
            f" {off.server_us:.0f} us ({off.cores:.2f} cores, machine {off.machine_cores:.2f})"
        )
    print(
        f"    target: intake >= {INTAKE_TARGET:,.0f} jobs/s (forwarding meanwhile):"
        f" {best.rate:,.0f}  {verdict(ok)}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not figures)")
    p.add_argument("--machines", type=int, help="lab machines for the intake (default 16)")
    p.add_argument("--entries", type=int, help="entries per lab machine (default 5,000)")
    p.add_argument("--backlog", type=int, help="the forwarding backlog (default 5,000)")
    p.add_argument("--big", type=int, help="the memory run's backlog (default 1,000,000)")
    p.add_argument("--seconds", type=float, help="the memory run's sampling time (default 20)")
    p.add_argument("--repeats", type=int, help="runs of (a) and (b), interleaved (best kept)")
    p.add_argument("--skip-intake", action="store_true")
    p.add_argument("--skip-capacity", action="store_true", help="skip the intake diagnostic")
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-reoffer", action="store_true")
    p.add_argument("--lost", type=int, help="entries a relay loses in (d) (default 10,000)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    q = args.quick
    machines = args.machines or (4 if q else 16)
    entries = args.entries or (500 if q else 5_000)
    backlog = args.backlog or (1_000 if q else 5_000)
    big = args.big or (100_000 if q else 1_000_000)
    seconds = args.seconds or (8.0 if q else 20.0)
    repeats = args.repeats or (1 if q else 2)
    mem_labs, mem_entries = (2, 500) if q else (4, 2_000)
    FAILURES.clear()

    intake = Intake()
    fwd_direct: list[float] = []
    fwd_relay: list[float] = []
    mem: Memory | None = None
    lost: Reoffer | None = None
    with scratch("logbook-bench-relay-") as root:
        t0 = time.perf_counter()
        lab_jobs = [make_jobs(entries, tag=f"lab{i:02d}") for i in range(machines)]
        fwd_jobs = make_jobs(backlog, tag="forward")
        log(f"prepared {machines * entries + backlog:,} jobs in {time.perf_counter() - t0:.1f} s")
        if not (args.skip_intake and args.skip_forward):
            with EmulatorProcess(KEY, progress_seconds=0) as emu:

                def step_intake_direct() -> float:
                    intake.direct.append(intake_direct(emu, root, lab_jobs))
                    return intake.direct[-1].rate

                def step_intake_relay() -> float:
                    intake.relay.append(intake_relay(emu, root, lab_jobs, len(intake.relay)))
                    return intake.relay[-1].rate

                def step_forward_direct() -> float:
                    fwd_direct.append(forward_direct(emu, root, fwd_jobs))
                    return fwd_direct[-1]

                def step_forward_relay() -> float:
                    fwd_relay.append(forward_relay(emu, root, fwd_jobs))
                    return fwd_relay[-1]

                for rep in range(repeats):
                    # Interleaved, and the order flips every run: noise hits both sides.
                    steps = []
                    if not args.skip_intake:
                        steps += [
                            ("intake, direct", step_intake_direct),
                            ("intake, relay", step_intake_relay),
                        ]
                    if not args.skip_forward:
                        steps += [
                            ("forwarding, direct sync", step_forward_direct),
                            ("forwarding, relay", step_forward_relay),
                        ]
                    if rep % 2:
                        steps.reverse()
                    for name, step in steps:
                        log(f"  run {rep + 1}  {name}: {step():,.0f} jobs/s")
                if not args.skip_intake and not args.skip_capacity:
                    intake.capacity = intake_capacity(emu, root, lab_jobs)
                    log(f"  diagnostic  intake, cheap client: {intake.capacity.rate:,.0f} jobs/s")
                    intake.stalled = intake_capacity(emu, root, lab_jobs, stalled=True)
                    log(
                        "  diagnostic  intake, cheap client, forwarding stalled:"
                        f" {intake.stalled.rate:,.0f} jobs/s"
                    )
                if not args.skip_intake:
                    intake.offline = intake_relay(emu, root, lab_jobs, 0, offline=True)
                    log(f"  intake, relay offline upstream: {intake.offline.rate:,.0f} jobs/s")
        if not args.skip_reoffer:
            n_lost = args.lost or (1_000 if q else 10_000)
            log(f"a relay that lost everything: {n_lost:,} entries re-offered")
            lost = reoffer(root, n_lost)
        if not args.skip_memory:
            log(f"memory: {big:,}-job backlog, {MEMORY_LATENCY_MS / 1000:g} s upstream latency")
            mem = memory(root, big, mem_labs, mem_entries, seconds)

    print(f"\nlogbook relay benchmark (best of {repeats} interleaved runs; all runs listed)")
    if intake.relay:
        _show_intake(intake, machines, entries)
    if fwd_relay:
        best, ref = max(fwd_relay), max(fwd_direct)
        ok = best / ref >= FORWARD_RATIO_TARGET
        if not ok:
            FAILURES.append("forwarding")
        print(
            f"\n  (b) forwarding a {backlog:,}-job backlog at {FORWARD_LATENCY_MS} ms latency"
            " (process start to the emulator holding all)"
        )
        print(f"    relay:                         {best:>8,.0f} jobs/s  [{_runs(fwd_relay)}]")
        print(f"    logbook sync --concurrency 64: {ref:>8,.0f} jobs/s  [{_runs(fwd_direct)}]")
        print(
            f"    target: relay >= {FORWARD_RATIO_TARGET}x the direct sync:"
            f" {best / ref:.2f}x  {verdict(ok)}  (0 duplicates)"
        )
    if mem is not None:
        ok = mem.peak_mb <= RSS_TARGET_MB
        if not ok:
            FAILURES.append("memory")
        print(
            f"\n  (c) memory: {mem.backlog:,} pending jobs in the relay's store (seeded in"
            f" {mem.seed_seconds:.1f} s; relay ready {mem.ready_seconds:.1f} s after start),"
            f" upstream latency {MEMORY_LATENCY_MS / 1000:g} s"
        )
        print(
            f"    {mem.labs} lab machines posted {mem.lab_jobs:,} jobs into it in"
            f" {mem.lab_seconds:.1f} s ({mem.lab_jobs / mem.lab_seconds:,.0f} jobs/s);"
            f" {mem.upstream_posts} POSTs upstream in flight or done; 0 duplicates;"
            f" relay exit {mem.exit_code} on SIGTERM"
        )
        print(
            f"    relay RSS over {mem.sampled_seconds:.0f} s (every 100 ms): start"
            f" {mem.start_mb:.0f} MB, end {mem.end_mb:.0f} MB, peak {mem.peak_mb:.0f} MB;"
            f" target <= {RSS_TARGET_MB:g} MB: {verdict(ok)}"
        )
    if lost is not None:
        ok = lost.reoffer_sync < REOFFER_TARGET_S and lost.reoffered == lost.n
        if not ok:
            FAILURES.append("re-offer")
        print(
            f"\n  (d) a relay that lost all {lost.n:,} jobs a lab had synced into it (store put"
            " back to a backup of its keys)"
        )
        print(
            f'    the lab\'s next "logbook sync": {lost.reoffer_sync:.1f} s ({lost.n:,} refreshed'
            f" and re-offered: look-up then POST); its first sync into the relay:"
            f" {lost.first_sync:.1f} s ({lost.reoffer_sync / lost.first_sync:.2f}x)"
        )
        print(f"    target: under {REOFFER_TARGET_S:g} s: {verdict(ok)}")
    for what in FAILURES:
        if what not in ("intake", "forwarding", "memory", "re-offer"):
            print(f"\n  FAIL: {what}")
    print(f"\n{'all targets met' if not FAILURES else f'{len(FAILURES)} target(s) missed'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
