"""The offline core against bare SQLite, measured in the same run.

    python -m bench.bench_core [--quick]

1. ``logbook.log()`` of 5,000 distinct jobs against a raw ``sqlite3`` loop with
   the same durability (WAL, synchronous=FULL, one commit per row, same table).
   Target: ratio >= 0.5.
2. ``logbook import`` (the CLI, a subprocess, wall time) of a 100,000-line JSON
   Lines file against one raw ``executemany`` transaction of the same rows.
   Target: ratio >= 0.5.
3. ``logbook status --json`` and ``logbook list --limit 20 --json`` on a store of
   1,000,000 entries (median of 7 runs): <= 0.3 s each; ``logbook --help``:
   <= 0.15 s.  Each is also shown against a bare ``python -c pass``.
4. ``logbook bundle export`` of 100,000 pending entries (<= 5 s) and ``logbook bundle
   import`` of that bundle, verify + record (<= 10 s), CLI wall time, best of 3, each
   against the same run's ``logbook export --format jsonl`` and ``logbook import`` of the
   same jobs; memory flat: the peak RSS of both for 100,000 entries within 1.5x their
   peak RSS for 10,000.

Prints PASS/FAIL per target; exits 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

RESULTS: list[tuple[str, bool]] = []


def verdict(label: str, ok: bool, detail: str) -> None:
    RESULTS.append((label, ok))
    print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}", flush=True)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, LOGBOOK_HOME=str(home))
    # PYTHONDONTWRITEBYTECODE (set on some machines) would make every run compile logbook
    # from source: an installed logbook has its bytecode (pip and pipx write it).
    for name in ("LOGBOOK_DB", "HAIQU_API_KEY", "HAIQU_EDGE_URI", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if res.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return took


def _median_wall(cmd: list[str], env: dict[str, str], runs: int) -> float:
    _wall(cmd, env)  # warm the page cache and .pyc files
    return statistics.median(_wall(cmd, env) for _ in range(runs))


def _raw_connection(path: Path) -> sqlite3.Connection:
    """A bare connection with the store's durability settings, on the store's schema."""
    from logbook.store import Store

    Store(path).close()  # the same schema, indexes and migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


_RAW_INSERT = (
    "INSERT INTO entries (experiment_id, hash, circuit_hash, name, device_id, shots, status,"
    " job_type, results, metrics, created_at, source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(experiment_id, hash) DO NOTHING"
)


def _stored_rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows logbook stored, to replay into the reference: the very same values."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT experiment_id, hash, circuit_hash, name, device_id, shots, status, job_type,"
            " results, metrics, created_at, source FROM entries WHERE experiment_id = 'bench'"
            " ORDER BY id"
        ).fetchall()


# --- 1. logbook.log() ------------------------------------------------------------------


def bench_log(tmp: Path, n: int) -> None:
    import logbook

    print(f"logbook.log() x {n:,} (one durable commit each)")
    db = tmp / "log.db"
    docs = [
        {"name": f"job {i}", "device_id": "sim", "results": {"00": i % 1000, "11": 1000 - i % 1000},
         "shots": [1000], "metrics": {"i": i}}
        for i in range(n)
    ]  # fmt: skip
    logbook.log({"warm": 1}, experiment_id="warm", db=db)
    start = time.perf_counter()
    for doc in docs:
        logbook.log(doc, experiment_id="bench", db=db)
    ours = n / (time.perf_counter() - start)

    rows = _stored_rows(db)
    assert len(rows) == n
    conn = _raw_connection(tmp / "raw-log.db")
    start = time.perf_counter()
    for row in rows:
        conn.execute(_RAW_INSERT, row)  # autocommit: one transaction per row
    raw = n / (time.perf_counter() - start)
    conn.close()
    ratio = ours / raw
    print(f"  raw sqlite3: {raw:,.0f} rows/s   logbook.log(): {ours:,.0f} records/s")
    verdict("log() vs raw sqlite3", ratio >= 0.5, f"ratio {ratio:.2f} (target >= 0.5)")


# --- 2. logbook import ------------------------------------------------------------------


def bench_import(tmp: Path, n: int) -> None:
    print(f"logbook import of a {n:,}-line JSON Lines file (CLI wall time)")
    src = tmp / "big.jsonl"
    with src.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "experiment_id": "bench",
                        "name": f"job {i}",
                        "device_id": "sim",
                        "results": json.dumps({"00": i % 1000, "11": 1000 - i % 1000}),
                        "shots": "[1000]",
                        "metrics": {"i": i},
                    }  # fmt: skip
                )
                + "\n"
            )
    home = tmp / "import-home"
    took = _wall([sys.executable, "-m", "logbook", "import", str(src), "--json"], _env(home))
    rows = _stored_rows(home / "logbook.db")
    if len(rows) != n:
        raise RuntimeError(f"import stored {len(rows)} of {n} entries")
    ours = n / took

    conn = _raw_connection(tmp / "raw-import.db")
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_RAW_INSERT, rows)
    conn.execute("COMMIT")
    raw = n / (time.perf_counter() - start)
    conn.close()
    ratio = ours / raw
    print(f"  raw executemany: {raw:,.0f} rows/s   logbook import: {ours:,.0f} entries/s"
          f" ({took:.2f} s)")  # fmt: skip
    verdict("import vs raw executemany", ratio >= 0.5, f"ratio {ratio:.2f} (target >= 0.5)")


# --- 4. bundles ---------------------------------------------------------------------------


def _wall_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall time, CPU time (user + system, its children's included) and peak RSS (MB,
    sampled every 10 ms) of one command, stdout thrown away.

    RSS sampled, not ``ru_maxrss``: Linux keeps a process's high-water mark across exec,
    so a child would report this benchmark's own memory.  CPU time is the figure that the
    machine's other load disturbs least.
    """
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watch, peak = psutil.Process(proc.pid), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            peak = max(peak, watch.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()}")
    return took, usage.ru_utime + usage.ru_stime, peak / 2**20


def _bundle_store(path: Path, jsonl: Path, n: int) -> None:
    """A store of ``n`` pending entries and the same jobs as a JSON Lines file."""
    from logbook.jobs import prepare
    from logbook.store import Store

    jobs = [
        prepare({"experiment_id": "bench", "name": f"job {i}", "device_id": "sim",
                 "results": json.dumps({"00": i % 1000, "11": 1000 - i % 1000}),
                 "shots": "[1000]", "metrics": {"i": i}})
        for i in range(n)
    ]  # fmt: skip
    with Store(path) as store:
        store.record_many(jobs)
    with jsonl.open("w") as fh:
        fh.writelines(json.dumps(j) + "\n" for j in jobs)


def _bundle_round(tmp: Path, n: int, runs: int) -> dict[str, tuple[float, float, float]]:
    """Best wall time of each of the four commands, with that run's CPU time and peak RSS."""
    src, jsonl = tmp / f"a-{n}.db", tmp / f"jobs-{n}.jsonl"
    _bundle_store(src, jsonl, n)
    env = _env(tmp / "home")
    lb = [sys.executable, "-m", "logbook"]
    best: dict[str, tuple[float, float, float]] = {}
    for r in range(runs):  # interleaved, so the machine's load falls on both alike
        bundle = tmp / f"{n}-{r}.bundle"
        for label, cmd in (
            ("export jsonl", [*lb, "--db", str(src), "export", "--format", "jsonl"]),
            ("bundle export", [*lb, "--db", str(src), "bundle", "export", str(bundle)]),
            ("import", [*lb, "--db", str(tmp / f"i-{n}-{r}.db"), "import", str(jsonl)]),
            ("bundle import", [*lb, "--db", str(tmp / f"b-{n}-{r}.db"), "bundle", "import",
                               str(bundle)]),
        ):  # fmt: skip
            got = _wall_rss(cmd, env)
            best[label] = min(best.get(label, got), got)
    with sqlite3.connect(tmp / f"b-{n}-0.db") as conn:
        if conn.execute("SELECT count(*) FROM entries").fetchone()[0] != n:
            raise RuntimeError("the bundle import did not record every job")
    return best


def bench_bundle(tmp: Path, n: int, runs: int = 3) -> None:
    print(f"logbook bundle export / import of {n:,} entries (CLI wall time, best of {runs})")
    big = _bundle_round(tmp, n, runs)
    small = _bundle_round(tmp, n // 10, 1)
    for ours, ref, target in (
        ("bundle export", "export jsonl", 5.0), ("bundle import", "import", 10.0)
    ):  # fmt: skip
        took, cpu, rss = big[ours]
        ref_took, ref_cpu, _ = big[ref]
        print(f"  {ref}: {ref_took:.2f} s ({n / ref_took:,.0f}/s, CPU {ref_cpu:.2f} s)   {ours}:"
              f" {took:.2f} s ({n / took:,.0f}/s, CPU {cpu:.2f} s): {took / ref_took:.2f}x its"
              f" time, {cpu / ref_cpu:.2f}x its CPU")  # fmt: skip
        verdict(f"{ours} of {n:,}", took <= target, f"{took:.2f} s (target <= {target:.0f} s)")
        growth = rss / small[ours][2]
        verdict(
            f"{ours} memory", growth <= 1.5,
            f"peak RSS {rss:.0f} MB for {n:,}, {small[ours][2]:.0f} MB for {n // 10:,}:"
            f" {growth:.2f}x (target <= 1.5x)",
        )  # fmt: skip


# --- 3. commands on a large store -----------------------------------------------------------


def build_large_store(path: Path, n: int) -> None:
    """``n`` entries through the Store's schema, fast: executemany in big transactions."""
    from logbook.store import Store

    Store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # building the fixture only
    states = ("synced",) * 90 + ("pending",) * 8 + ("rejected",) * 2
    batch = 100_000
    for lo in range(0, n, batch):
        rows = [
            (
                f"exp{i % 50}",
                f"h{i}",
                "",
                f"job {i}",
                "sim",
                "[1000]",
                "Done",
                "User local job",
                '{"00":1}',
                "{}",
                states[i % 100],
                f"2025-01-01T00:00:{i // 1_000_000 % 60:02d}.{i % 1_000_000:06d}Z",
                "bench",
            )  # fmt: skip
            for i in range(lo, min(n, lo + batch))
        ]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO entries (experiment_id, hash, circuit_hash, name, device_id, shots,"
            " status, job_type, results, metrics, state, created_at, source)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def bench_commands(tmp: Path, n: int, runs: int) -> None:
    print(f"CLI commands on a store of {n:,} entries (median of {runs} runs)")
    home = tmp / "large-home"
    home.mkdir()
    start = time.perf_counter()
    build_large_store(home / "logbook.db", n)
    print(f"  (built the store in {time.perf_counter() - start:.1f} s)")
    env = _env(home)
    bare = _median_wall([sys.executable, "-c", "pass"], env, runs)
    print(f"  python -c pass: {bare * 1000:.0f} ms")
    logbook = [sys.executable, "-m", "logbook"]
    checks: list[tuple[str, list[str], float]] = [
        ("logbook status --json", [*logbook, "status", "--json"], 0.3),
        ("logbook list --limit 20 --json", [*logbook, "list", "--limit", "20", "--json"], 0.3),
        ("logbook --help", [*logbook, "--help"], 0.15),
    ]

    def measure(label: str, cmd: list[str], target: float) -> None:
        took = _median_wall(cmd, env, runs)
        verdict(
            label,
            took <= target,
            f"{took * 1000:.0f} ms ({took / bare:.1f}x python -c pass; target <= {target} s)",
        )

    for label, cmd, target in checks:
        measure(label, cmd, target)
    # A lab machine offline for a long time: everything still pending.
    with sqlite3.connect(home / "logbook.db", isolation_level=None) as conn:
        conn.execute("UPDATE entries SET state = 'pending'")
    measure("logbook status --json (all pending)", checks[0][1], 0.3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="Smaller sizes, for a smoke run.")
    p.add_argument("--only", choices=("log", "import", "commands", "bundle"), action="append")
    args = p.parse_args(argv)
    scale = 10 if args.quick else 1
    only = set(args.only or ("log", "import", "commands", "bundle"))
    steps: dict[str, Callable[[Path], None]] = {
        "log": lambda tmp: bench_log(tmp, 5_000 // scale),
        "import": lambda tmp: bench_import(tmp, 100_000 // scale),
        "commands": lambda tmp: bench_commands(tmp, 1_000_000 // scale, 7),
        "bundle": lambda tmp: bench_bundle(tmp, 100_000 // scale),
    }
    with tempfile.TemporaryDirectory(prefix="logbook-bench-") as tmp:
        for name, step in steps.items():
            if name in only:
                d = Path(tmp, name)
                d.mkdir()
                step(d)
    failed = [label for label, ok in RESULTS if not ok]
    print(f"bench_core: {len(RESULTS) - len(failed)}/{len(RESULTS)} targets met"
          + (f"; missed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
