"""``logbook watch``: how fast a burst is recorded, and how soon one file is.

Runs the real watcher as a subprocess (its own ``LOGBOOK_HOME`` in a temp dir):

1. Burst: the watcher is frozen with SIGSTOP, N result files are written (temp
   name, then rename), SIGCONT.  The kernel queue overflows; the watcher must
   rescan.  Measured: seconds from the last file written until all N entries
   are committed (target <= 30 s), and the watcher's peak RSS (VmHWM).
2. Latency: 200 files written one by one; for each, the time from its close to
   its ledger row being committed (``files.seen_at``, read back read-only).
   Target: p50 <= settle + 50 ms.

    python -m bench.bench_watch [--files 20000] [--latency-files 200] [--settle 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BURST_TARGET_S = 30.0
LATENCY_SLACK_S = 0.050


def _job(i: int, tag: str) -> str:
    return json.dumps(
        {
            "experiment_id": f"bench-{tag}",
            "name": f"{tag}-{i}",
            "device_id": "basic_simulator",
            "results": json.dumps({"00": i, "11": 1024 - i % 1024}),
            "shots": "[1024]",
            "status": "Done",
            "job_type": "User local job",
        }
    )


class Watcher:
    def __init__(self, home: Path, directory: Path, settle: float) -> None:
        env = dict(os.environ)
        env["LOGBOOK_HOME"] = str(home)
        env.pop("LOGBOOK_DB", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.db = home / "logbook.db"
        self.err = open(home / "watch.err", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "logbook",
                "-q",
                "watch",
                str(directory),
                "--settle",
                str(settle),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            env=env,
        )
        deadline = time.monotonic() + 30
        while self.count("files") is None:  # the store exists and the watcher is scanning
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the watcher did not start")
            time.sleep(0.05)
        time.sleep(0.3)  # the observer is up before the store is touched; be generous

    def count(self, table: str = "entries") -> int | None:
        if not self.db.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.OperationalError:
            return None

    def seen_at(self) -> dict[str, float]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT path, seen_at FROM files").fetchall()
        finally:
            conn.close()
        # files.path is the name's bytes (any name the filesystem allows)
        return {
            os.fsdecode(p): datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
            for p, s in rows
        }

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.err.close()


def bench_burst(n: int, settle: float) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        home, results = Path(tmp, "home"), Path(tmp, "results")
        home.mkdir()
        results.mkdir()
        w = Watcher(home, results, settle)
        try:
            os.kill(w.proc.pid, signal.SIGSTOP)
            t_write = time.monotonic()
            try:
                for i in range(n):
                    final = results / f"burst-{i:06d}.json"
                    tmpname = results / f"burst-{i:06d}.json.tmp"
                    tmpname.write_text(_job(i, "burst"))
                    os.replace(tmpname, final)
                t_last = time.monotonic()
            finally:
                os.kill(w.proc.pid, signal.SIGCONT)
            deadline = t_last + 300
            while (w.count() or 0) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            t_done = time.monotonic()
            got = w.count() or 0
            rss = w.peak_rss_mb()
        finally:
            code = w.stop()
        took = t_done - t_last
        ok = got == n and took <= BURST_TARGET_S and code == 0
        print(
            f"burst: {n} files written in {t_last - t_write:.1f} s (watcher stopped);"
            f" all recorded {took:.2f} s after the last one"
            f" (target <= {BURST_TARGET_S:.0f} s, ratio {took / BURST_TARGET_S:.2f});"
            f" entries {got}/{n}; {n / took:,.0f} files/s; peak RSS {rss:.0f} MB"
            f"  {'PASS' if ok else 'FAIL'}"
        )
        return ok, f"{took:.2f}"


def bench_latency(n: int, settle: float) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        home, results = Path(tmp, "home"), Path(tmp, "results")
        home.mkdir()
        results.mkdir()
        w = Watcher(home, results, settle)
        closed: dict[str, float] = {}
        try:
            for i in range(n):
                path = results / f"lat-{i:04d}.json"
                with open(path, "w") as f:
                    f.write(_job(i, "lat"))
                closed[str(path)] = time.time()
                deadline = time.monotonic() + 10
                while (w.count("files") or 0) < i + 1 and time.monotonic() < deadline:
                    time.sleep(0.002)
            seen = w.seen_at()
        finally:
            code = w.stop()
        lat = sorted(seen[p] - t for p, t in closed.items() if p in seen)
        if len(lat) < n:
            print(f"latency: only {len(lat)}/{n} files recorded  FAIL")
            return False, "missing"
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        target = settle + LATENCY_SLACK_S
        ok = p50 <= target and code == 0
        print(
            f"latency over {n} files (close -> committed, settle {settle:g} s):"
            f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"
            f" (target p50 <= {target * 1000:.0f} ms, ratio {p50 / target:.2f})"
            f"  {'PASS' if ok else 'FAIL'}"
        )
        return ok, f"{p50 * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000, help="files in the burst")
    ap.add_argument("--latency-files", type=int, default=200)
    ap.add_argument("--settle", type=float, default=0.2)
    args = ap.parse_args(argv)
    ok1, _ = bench_burst(args.files, args.settle)
    ok2, _ = bench_latency(args.latency_files, args.settle)
    print("bench_watch:", "PASS" if ok1 and ok2 else "FAIL")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
