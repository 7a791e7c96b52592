"""A fleet of lab machines coming online together against one rate-limited API.

N lab machines (separate ``logbook sync`` processes, each with a LOGBOOK_HOME,
a store and a backlog of its own) start at the same moment against one
emulator that rate-limits (fault ``rate_limit_per_s=R``: above R requests a
second it answers 429 with ``Retry-After``).  With ``--relay`` the same
machines sync into one ``logbook relay`` that forwards to that emulator.

Reported: the fleet's throughput and its ratio to R (start to finish, and
while jobs were arriving upstream); the 429s it provoked (emulator stats);
how evenly the machines finished; the CPU it took; that every job arrived
exactly once (``duplicates == 0`` and ``jobs_created == N * entries``, and
with a relay, every job ``synced`` in its store); and whether the machines
cooperate:

- each backoff ("server overloaded" in the machine's ``-v`` log: a
  concurrency cut, or, when most recent answers are 429s, a pause of every
  request until the Retry-After) costs at most the requests already in
  flight: 429s per backoff <= 64, so the 429s stay a modest multiple of N,
  not thousands a second;
- they do not come back in lockstep: when a 429 reaches them all at once,
  their resumes (each machine's first job the emulator accepted after its
  pause, from the emulator's own timestamps) spread over >= 0.1 s.

When the fleet never reaches R (no 429 at all: on a small shared machine the
CPU may be the limit first), the cooperation checks are skipped and a note
says so: try a lower ``--rate``.

    python -m bench.fleet [--machines 8] [--entries 2000] [--rate 1500] [--relay] [--json]

``run_fleet(machines, entries, rate, relay=False)`` does the same for a test
and returns the figures as a dict: ``ok`` and ``checks`` ({description:
bool}), ``jobs_created``, ``duplicates``, ``refused`` (429s), ``throughput``
and ``throughput_ratio``, ``finish`` (min/max/spread/stdev of the machines'
finish times), ``errors``, ...
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._lab import (
    KEY,
    RelayProcess,
    SyncProcess,
    SyncResult,
    fresh_home,
    machine_busy,
    make_jobs,
    poll_until,
    scratch,
    store_states,
    tree_cpu,
    verdict,
)
from logbook.emulator.testing import EmulatorProcess

#: What a machine's log says when it pauses every request (not just fewer in flight).
PAUSE_LINE = "pausing every request"
#: A 429's Retry-After is at least 1 s here: a machine's first job accepted this long after it
#: cut its concurrency is where it resumed (requests in flight at the cut are answered sooner).
RESUME_AFTER = 0.5
#: Cooperation: a machine stops sending at a 429, so each backoff costs at most the requests
#: it had in flight (the default concurrency)...
MAX_REFUSED_PER_BACKOFF = 64
#: ...and the machines' first resumes after a 429 are spread over at least this long (no lockstep).
MIN_RESUME_SPREAD = 0.1
#: A machine whose sync exits 1 with entries still pending runs again (a watcher would).
MAX_RUNS = 5
RERUN_DELAY = 1.0


@dataclass
class Machine:
    """One lab machine: its store, its runs of ``logbook sync``, what its log said."""

    index: int
    home: Path
    key: str
    entries: int
    runs: list[SyncResult] = field(default_factory=list)
    error: str | None = None
    finished: float | None = None  # wall clock (time.time()) of its last sync's exit
    cuts: list[float] = field(default_factory=list)  # wall clock of each backoff (cut or pause)
    pauses: list[float] = field(default_factory=list)  # ... of each pause of every request

    @property
    def name(self) -> str:
        return f"lab{self.index:02d}"


def _run_machine(m: Machine, endpoint: str, deadline: float) -> None:
    """Sync until nothing is pending (at most MAX_RUNS runs), like a machine that keeps trying."""
    offset = time.time() - time.perf_counter()
    while True:
        proc = SyncProcess(
            m.home, endpoint, m.key, concurrency=None, global_args=["-v", "--log-format", "json"]
        )
        try:
            result = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except RuntimeError as err:
            m.error = str(err)
            return
        m.runs.append(result)
        m.cuts += _cut_times(result.stderr)
        m.pauses += _cut_times(result.stderr, PAUSE_LINE)
        pending = result.report.get("pending")
        if result.code == 0:
            m.finished = result.ended + offset
            return
        if result.code != 1 or not pending or len(m.runs) >= MAX_RUNS:
            m.error = f"logbook sync exited {result.code}: {result.stderr[-800:]}"
            return
        if time.monotonic() + RERUN_DELAY >= deadline:
            m.error = f"out of time with {pending} entries pending"
            return
        time.sleep(RERUN_DELAY)


def _cut_times(stderr: str, what: str = "server overloaded") -> list[float]:
    """When the sync backed off ("server overloaded": it halved its requests in flight, or
    paused them all), from its JSON log; ``what``: only the lines holding that."""
    out = []
    for line in stderr.splitlines():
        if "server overloaded" not in line or what not in line:
            continue
        try:
            rec = json.loads(line)
            out.append(_parse_time(rec["time"]))
        except (ValueError, KeyError):
            continue
    return out


def _parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread": round(max(values) - min(values), 3),
        "stdev": round(statistics.pstdev(values), 3),
    }


def _resumes(cuts: Sequence[float], times: Sequence[float]) -> list[tuple[float, float]]:
    """(cut, resume) per backoff: the machine's first job accepted RESUME_AFTER past each cut."""
    out: list[tuple[float, float]] = []
    for c in cuts:
        i = bisect.bisect_right(times, c + RESUME_AFTER)
        if i < len(times) and (not out or times[i] > out[-1][1]):
            out.append((c, times[i]))
    return out


def _timelines(jobs: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[float]]:
    """Per machine, the emulator's creation time of each of its jobs, in order."""
    out: dict[str, list[float]] = defaultdict(list)
    known = set(names)
    for job in jobs:
        owner = str(job.get("name") or "").split(" ", 1)[0]
        if owner in known:
            out[owner].append(_parse_time(job["creation_date"]))
    for ts in out.values():
        ts.sort()
    return out


def run_fleet(
    machines: int = 8,
    entries: int = 2_000,
    rate: float = 1_500.0,
    relay: bool = False,
    *,
    latency_ms: float = 0.0,
    timeout: float = 110.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the fleet once; every figure, the checks and ``ok`` in a dict.

    Raises RuntimeError only when the benchmark itself cannot run (a process
    does not start); a fleet that misbehaves is reported in ``checks``.
    """
    say = progress or (lambda _msg: None)
    total = machines * entries
    result: dict[str, Any] = {
        "machines": machines, "entries": entries, "rate": rate, "relay": relay,
        "latency_ms": latency_ms, "total": total,
    }  # fmt: skip
    with scratch("logbook-fleet-") as root:
        t0 = time.perf_counter()
        fleet = [
            Machine(i, fresh_home(root, make_jobs(entries, tag=f"lab{i:02d}")), KEY, entries)
            for i in range(machines)
        ]
        say(f"{machines} stores of {entries:,} entries in {time.perf_counter() - t0:.1f} s")
        with EmulatorProcess(KEY, progress_seconds=0) as emu:
            emu.set_faults(rate_limit_per_s=rate, latency_ms=latency_ms)
            relay_proc: RelayProcess | None = None
            try:
                endpoint = emu.url
                if relay:
                    relay_home = root / "relay"
                    relay_home.mkdir()
                    relay_proc = RelayProcess(relay_home, emu.url, KEY)
                    keys = relay_proc.add_keys([m.name for m in fleet])
                    for m in fleet:
                        m.key = keys[m.name]
                    relay_proc.start()
                    endpoint = relay_proc.url
                time.sleep(1.0)  # the token bucket starts full, as for a server that was idle
                emu.reset()  # a clean count (reset forgets faults: set them again)
                emu.set_faults(rate_limit_per_s=rate, latency_ms=latency_ms)
                _fleet_run(emu, fleet, endpoint, relay_proc, result, timeout, say)
            finally:
                if relay_proc is not None:
                    result["relay_exit"] = relay_proc.stop()
                    relay_proc.close()
    result["ok"] = all(result["checks"].values())
    return result


def _fleet_run(
    emu: EmulatorProcess,
    fleet: list[Machine],
    endpoint: str,
    relay: RelayProcess | None,
    result: dict[str, Any],
    timeout: float,
    say: Callable[[str], None],
) -> None:
    total = result["total"]
    rate = result["rate"]
    deadline = time.monotonic() + timeout
    threads = [
        threading.Thread(target=_run_machine, args=(m, endpoint, deadline), daemon=True)
        for m in fleet
    ]
    cpu0 = _children_cpu()  # only the lab syncs are reaped until they are all done
    emu0 = tree_cpu(emu.pid or 0)
    relay0 = tree_cpu(relay.pid) if relay is not None else 0.0
    busy0 = machine_busy()
    start = time.time()
    for t in threads:
        t.start()
    say(f"{len(fleet)} lab machines started against {'the relay' if relay else 'the emulator'}")
    samples: list[tuple[float, int, int]] = []  # (seconds, jobs upstream, 429s upstream)

    def sample() -> int:
        s = emu.stats()
        samples.append((time.time() - start, s["jobs_created"], s["responses"].get("429", 0)))
        return int(s["jobs_created"])

    while any(t.is_alive() for t in threads):
        sample()
        time.sleep(0.25)
    for t in threads:
        t.join()
    labs_done = time.time()
    labs_cpu = _children_cpu() - cpu0
    relay_states: dict[str, int] = {}
    if relay is not None:
        # The lab machines are done; the relay still forwards what it holds.
        poll_until(lambda: sample() >= total, deadline + 30, interval=0.25)
        poll_until(
            lambda: store_states(relay.db).get("synced", 0) == total, time.monotonic() + 30, 0.2
        )
        relay_states = store_states(relay.db)
    upstream_done = time.time()
    busy = machine_busy() - busy0
    emu_cpu = tree_cpu(emu.pid or 0) - emu0
    relay_cpu = tree_cpu(relay.pid) - relay0 if relay is not None else 0.0
    stats = emu.stats()
    jobs = emu.jobs()

    finished = [m.finished - start for m in fleet if m.finished is not None]
    errors = {m.name: m.error for m in fleet if m.error}
    lines = _timelines(jobs, [m.name for m in fleet])
    created = sorted(t for ts in lines.values() for t in ts)
    window = created[-1] - created[0] if len(created) > 1 else 0.0
    refused = int(stats["responses"].get("429", 0))
    cores = os.cpu_count() or 1
    result.update(
        jobs_created=stats["jobs_created"],
        duplicates=stats["duplicates"],
        responses=stats["responses"],
        injected=stats["injected"],
        requests=stats["requests"],
        errors=errors,
        runs_per_machine={m.name: len(m.runs) for m in fleet},
        seconds=round(labs_done - start, 3),
        sending_window=round(window, 3),
        throughput=round(total / (upstream_done - start), 1),
        throughput_sending=round(total / window, 1) if window > 0 else None,
        refused=refused,
        refused_per_machine=round(refused / len(fleet), 1),
        refused_per_second=round(refused / window, 1) if window > 0 else None,
        refused_share=round(refused / max(1, total), 4),
        finish=_spread(finished),
        cpu_us={
            "labs": round(labs_cpu / total * 1e6), "emulator": round(emu_cpu / total * 1e6),
            "relay": round(relay_cpu / total * 1e6),
        },
        cores_busy=round((labs_cpu + emu_cpu + relay_cpu) / (upstream_done - start), 2),
        cores=cores,
        machine_cores_busy=round(busy / (upstream_done - start), 2),
    )  # fmt: skip
    result["throughput_ratio"] = round(result["throughput"] / rate, 3)
    result["throughput_sending_ratio"] = (
        round(result["throughput_sending"] / rate, 3) if result["throughput_sending"] else None
    )
    result["rate_limit_reached"] = refused > 0
    checks: dict[str, bool] = {
        "all machines synced (exit 0)": not errors and len(finished) == len(fleet),
        "exactly once upstream (0 duplicates, all created)": (
            stats["duplicates"] == 0 and stats["jobs_created"] == total
        ),
    }
    if relay is None:
        # Each backoff: when the machine cut its concurrency (its log), when its jobs came
        # back (the emulator's timestamps).
        # Resumes follow pauses of every request (a cut alone does not stop the machine).
        backoffs = {m.name: _resumes(m.pauses, lines.get(m.name, [])) for m in fleet}
        cuts = sum(len(m.cuts) for m in fleet)
        first_cuts = [m.cuts[0] - start for m in fleet if m.cuts]
        first = {n: b[0] for n, b in backoffs.items() if b}
        result.update(
            cuts=cuts,
            pauses=sum(len(m.pauses) for m in fleet),
            cuts_per_machine={m.name: len(m.cuts) for m in fleet},
            refused_per_cut=round(refused / cuts, 1) if cuts else None,
            first_cut=_spread(first_cuts),
            first_pause_seconds=_spread([r - c for c, r in first.values()]),
            first_resume=_spread([r - start for _, r in first.values()]),
            pause_seconds=_spread([r - c for b in backoffs.values() for c, r in b]),
        )  # fmt: skip
        if refused:
            checks[
                f"429s per backoff <= {MAX_REFUSED_PER_BACKOFF} (only requests already in flight)"
            ] = cuts > 0 and refused / cuts <= MAX_REFUSED_PER_BACKOFF
        if len(first) > 1:
            checks[f"resumes not in lockstep (first-resume spread >= {MIN_RESUME_SPREAD:g} s)"] = (
                result["first_resume"]["spread"] >= MIN_RESUME_SPREAD
            )
    else:
        relay_cuts = _cut_times_text(relay.stderr_tail(10**7))
        result.update(
            lab_seconds=round(labs_done - start, 3),
            into_relay=round(total / (labs_done - start), 1),
            upstream_seconds=round(upstream_done - start, 3),
            relay_store=relay_states,
            # The relay's own refusals (fair share) would show as the lab machines' cuts.
            lab_cuts=sum(len(m.cuts) for m in fleet),
            relay_cuts=len(relay_cuts),
            refused_per_cut=round(refused / len(relay_cuts), 1) if relay_cuts else None,
        )  # fmt: skip
        checks["the relay holds every job, synced"] = (
            relay_states.get("synced", 0) == total and sum(relay_states.values()) == total
        )
        if refused:
            checks[
                f"429s per backoff <= {MAX_REFUSED_PER_BACKOFF} (only requests already in flight)"
            ] = bool(relay_cuts) and refused / len(relay_cuts) <= MAX_REFUSED_PER_BACKOFF
    result["timeline"] = [(round(t, 2), j, r) for t, j, r in samples]
    result["checks"] = checks


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cut_times_text(stderr: str) -> list[float]:
    """Cut times from a text log (the relay's): ``2026-...Z logbook: server overloaded: ...``."""
    out = []
    for line in stderr.splitlines():
        if "server overloaded" in line:
            try:
                out.append(_parse_time(line.split(" ", 1)[0]))
            except ValueError:
                continue
    return out


# --- output ------------------------------------------------------------------------------


def _fmt_spread(s: dict[str, float] | None, unit: str = "s") -> str:
    if not s:
        return "-"
    return (
        f"min {s['min']:.2f} {unit}, max {s['max']:.2f} {unit}, spread {s['spread']:.2f} {unit},"
        f" stdev {s['stdev']:.2f} {unit}"
    )


def show(r: dict[str, Any]) -> None:
    n, rate = r["machines"], r["rate"]
    mode = "through one relay" if r["relay"] else "straight to the API"
    print(
        f"\nfleet: {n} lab machines x {r['entries']:,} entries = {r['total']:,} jobs, {mode};"
        f" emulator rate limit R = {rate:,.0f} requests/s"
        + (f", latency {r['latency_ms']:g} ms" if r["latency_ms"] else "")
    )
    sending = (
        f"while sending ({r['sending_window']:.1f} s, first to last job upstream):"
        f" {r['throughput_sending']:,.0f} jobs/s = {r['throughput_sending_ratio']:.2f}x R"
        if r["throughput_sending"]
        else ""
    )
    if r["relay"]:
        print(
            f"  into the relay: {r['into_relay']:,.0f} jobs/s (all {n} lab syncs exited 0"
            f" {r['lab_seconds']:.1f} s after the start); lab-side concurrency cuts"
            f" (the relay's own 429s): {r['lab_cuts']}"
        )
        print(
            f"  upstream: all {r['jobs_created']:,} at the emulator {r['upstream_seconds']:.1f} s"
            f" after the start: {r['throughput']:,.0f} jobs/s = {r['throughput_ratio']:.2f}x R;"
            f" {sending}"
        )
    else:
        print(
            f"  throughput: {r['throughput']:,.0f} jobs/s = {r['throughput_ratio']:.2f}x R"
            f" (start to last exit, {r['seconds']:.1f} s, process start-up included); {sending}"
        )
    inj = r["injected"].get("rate_limited", 0)
    per_s = f"{r['refused_per_second']:.0f}/s while sending, " if r["refused_per_second"] else ""
    per_machine = "" if r["relay"] else f"{r['refused_per_machine']:.0f} per machine, "
    print(
        f"  429s provoked: {r['refused']:,} ({inj:,} injected rate_limited) = {per_machine}"
        f"{per_s}{100 * r['refused_share']:.1f}% of the jobs delivered;"
        f" POST /jobs requests {r['requests'].get('POST /jobs', 0):,}"
    )
    who = "the relay's log" if r["relay"] else "the machines' logs"
    cuts = r["relay_cuts"] if r["relay"] else r["cuts"]
    if r["refused"]:
        per_cut = f"{r['refused_per_cut']:.1f}" if r["refused_per_cut"] is not None else "-"
        pauses = "" if r["relay"] else f", {r['pauses']} of them pauses of every request"
        print(
            f"  backoffs (concurrency cuts and pauses in {who}): {cuts}{pauses};"
            f" 429s per backoff: {per_cut}"
        )
    c = r["cpu_us"]
    print(
        f"  CPU per job: lab syncs {c['labs']} us, emulator {c['emulator']} us"
        + (f", relay {c['relay']} us" if r["relay"] else "")
        + f"; these processes kept {r['cores_busy']:.2f} of {r['cores']} cores busy, the"
        f" whole machine {r['machine_cores_busy']:.2f} (others share it)"
    )
    if not r["rate_limit_reached"]:
        print(
            f"  NOTE: no 429 at all: the fleet never reached R = {rate:,.0f}/s on this machine"
            " (its CPU, shared, is the limit); cooperation is untested at this rate: try a"
            " lower --rate"
        )
    print(f"  lab machines finished (s after the start): {_fmt_spread(r['finish'])}")
    runs = r["runs_per_machine"]
    if any(v > 1 for v in runs.values()):
        print(f"  syncs per machine (exit 1 with entries pending, run again): {runs}")
    if not r["relay"] and r["cuts"]:
        cpm = r["cuts_per_machine"].values()
        print(f"  backoffs per machine: {min(cpm)}..{max(cpm)}")
        print(f"  first 429 cut (s after the start): {_fmt_spread(r['first_cut'])}")
        print(f"  first pause (cut to resume):       {_fmt_spread(r['first_pause_seconds'])}")
        print(f"  first resume (s after the start):  {_fmt_spread(r['first_resume'])}")
        print(f"  every pause (cut to resume):       {_fmt_spread(r['pause_seconds'])}")
    print(
        f"  exactly once: {r['jobs_created']:,} created of {r['total']:,},"
        f" {r['duplicates']} duplicates"
        + (f"; relay store {r['relay_store']}" if r["relay"] else "")
    )
    for name, err in r["errors"].items():
        print(f"  {name}: {err}")
    for what, ok in r["checks"].items():
        print(f"  [{verdict(ok)}] {what}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--machines", type=int, default=8, help="lab machines (default 8)")
    p.add_argument("--entries", type=int, default=2_000, help="entries each (default 2,000)")
    p.add_argument(
        "--rate", type=float, default=1_500.0, help="the emulator's requests/s (default 1,500)"
    )
    p.add_argument("--relay", action="store_true", help="sync into one relay that forwards")
    p.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency (default 0)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.machines < 1 or args.entries < 1 or args.rate <= 0:
        p.error("--machines and --entries must be >= 1, --rate > 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    r = run_fleet(
        args.machines, args.entries, args.rate, args.relay, latency_ms=args.latency_ms,
        progress=say,
    )  # fmt: skip
    r["bench_seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        show(r)
        print(f"\n{'all checks passed' if r['ok'] else 'some checks FAILED'}"
              f" ({r['bench_seconds']:.0f} s)")  # fmt: skip
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
