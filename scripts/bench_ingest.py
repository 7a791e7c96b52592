"""Measure how fast read_file turns a big JSON Lines file into prepared jobs.

python scripts/bench_ingest.py [LINES]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from logbook.ingest import read_file  # noqa: E402
from logbook.jobs import prepare  # noqa: E402


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "big.jsonl")
        with path.open("w") as fh:
            for i in range(n):
                doc = {
                    "experiment_id": "bench",
                    "name": f"job {i}",
                    "device_id": "sim",
                    "results": json.dumps({"00": i, "11": 1000 - i % 1000}),
                    "shots": "[1000]",
                    "status": "Done",
                }
                fh.write(json.dumps(doc) + "\n")
        t0 = time.perf_counter()
        res = read_file(path)
        dt = time.perf_counter() - t0
        assert res.ok and len(res.jobs) == n, res.errors[:3]
        print(f"read_file: {n} lines in {dt:.2f} s = {n / dt:,.0f} lines/s")
        doc = json.loads(path.read_text().split("\n", 1)[0])
        k = 20_000
        t0 = time.perf_counter()
        for _ in range(k):
            prepare(doc)
        per = (time.perf_counter() - t0) / k
        print(f"jobs.prepare alone: {per * 1e6:.1f} us per call = {1 / per:,.0f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
