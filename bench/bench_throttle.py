"""How long a backlog takes against a server that answers some requests 429 at random.

A user saw a 5,000-entry sync take 597 s against 10% random 429s with
``Retry-After: 1``: every 429 paused the whole run.  This runs the real CLI
(``python -m logbook sync``, run again while it exits 1, as a user or a
timer would) on a fresh store against the emulator with that fault, and, in
the same run on the same machine, the same sync against the same emulator
with no fault (the reference).  Reported: the wall time of each, their
ratio, the 429s, the requests, and that every job arrived exactly once.

``--before DIR`` also runs the sync of another checkout (the code before a
change, e.g. ``git archive HEAD~1 | tar -x -C DIR``), interleaved, for a
before/after figure on the same machine.

Target: with 10% 429s, the sync takes at most 3x the fault-free reference
(the time the 429'd requests cost, each waiting its Retry-After, and a
lowered concurrency; not a pause of the whole run per 429).

    python -m bench.bench_throttle [--entries 5000] [--rate 0.1] [--latency-ms 0] [--before DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._lab import KEY, REPO_ROOT, SyncProcess, fresh_home, make_jobs, verdict
from logbook.emulator.testing import EmulatorProcess

TARGET_RATIO = 3.0
MAX_RUNS = 20


def one_sync(
    emu: EmulatorProcess, jobs: list[dict[str, Any]], faults: dict[str, Any], cli_root: str,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """A fresh store of ``jobs`` synced until nothing is left (runs of ``logbook sync``)."""
    emu.reset()
    if faults:
        emu.set_faults(**faults)
    with tempfile.TemporaryDirectory(prefix="logbook-throttle-") as root:
        home = fresh_home(Path(root), jobs)
        start = time.perf_counter()
        runs = 0
        while True:
            runs += 1
            left = timeout - (time.perf_counter() - start)
            if left <= 0 or runs > MAX_RUNS:
                raise RuntimeError(f"not synced after {runs - 1} runs ({timeout:g} s)")
            result = SyncProcess(home, emu.url, KEY, concurrency=None, cli_root=cli_root).wait(
                timeout=left
            )
            if result.code == 0:
                break
            if result.code != 1:
                raise RuntimeError(f"logbook sync exited {result.code}: {result.stderr[-500:]}")
        seconds = time.perf_counter() - start
    stats = emu.stats()
    return {
        "seconds": round(seconds, 2),
        "runs": runs,
        "jobs_created": stats["jobs_created"],
        "duplicates": stats["duplicates"],
        "refused": int(stats["responses"].get("429", 0)),
        "requests": sum(stats["requests"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=5_000, help="entries (default 5,000)")
    p.add_argument("--rate", type=float, default=0.1, help="share of 429s (default 0.1)")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After (default 1)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency (default 0)")
    p.add_argument("--before", metavar="DIR", help="also time the sync of this other checkout")
    p.add_argument("--timeout", type=float, default=900.0, help="per measurement (default 900)")
    args = p.parse_args(argv)
    jobs = make_jobs(args.entries, tag="throttle")
    fault = {"rate_limit_rate": args.rate, "retry_after": args.retry_after}
    if args.latency_ms:
        fault["latency_ms"] = args.latency_ms
    clean = {"latency_ms": args.latency_ms} if args.latency_ms else {}
    cases = [("reference (no 429)", clean, REPO_ROOT), ("this checkout", fault, REPO_ROOT)]
    if args.before:
        cases.append(("before (--before)", fault, str(Path(args.before).resolve())))
    print(
        f"{args.entries:,} entries, {100 * args.rate:g}% of POSTs answered 429 with Retry-After"
        f" {args.retry_after:g} s, emulator latency {args.latency_ms:g} ms"
    )
    figures: dict[str, dict[str, Any]] = {}
    with EmulatorProcess(KEY, progress_seconds=0) as emu:
        for name, faults, root in cases:
            print(f"  running: {name} ...", file=sys.stderr, flush=True)
            figures[name] = r = one_sync(emu, jobs, faults, root, args.timeout)
            print(
                f"  {name:20} {r['seconds']:8.1f} s  {args.entries / r['seconds']:8.1f} jobs/s"
                f"  {r['refused']:6,} 429s  {r['requests']:7,} requests  {r['runs']} runs"
                f"  {r['duplicates']} duplicates"
            )
    ref = figures["reference (no 429)"]["seconds"]
    ok = True
    for name, r in figures.items():
        once = r["duplicates"] == 0 and r["jobs_created"] == args.entries
        ok = ok and once
        if name != "reference (no 429)":
            print(f"  {name}: {r['seconds'] / ref:.1f}x the reference")
    ratio = figures["this checkout"]["seconds"] / ref
    met = ratio <= TARGET_RATIO
    print(f"  [{verdict(met)}] with 429s at most {TARGET_RATIO:g}x the reference ({ratio:.1f}x)")
    print(f"  [{verdict(ok)}] every job exactly once")
    return 0 if ok and met else 1


if __name__ == "__main__":
    sys.exit(main())
