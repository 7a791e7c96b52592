"""Soak the model-based test: run logbook's state machine in batches until the time is up.

    python -m bench.soak --minutes 30          # scripts/soak --minutes 30
    python -m bench.soak --minutes 5 --steps 20

Each batch is one pytest run of ``tests/e2e/test_model.py`` (a process of its
own, so whatever a batch starts is gone when it ends) with
LOGBOOK_MODEL_EXAMPLES sized to the time left, measured from the batches
before.  At the end it prints the steps run and the steps per minute.  When a
batch fails it prints the counterexample (hypothesis's failing rule sequence,
shrunk unless ``--no-shrink``), keeps the whole log, and exits 1.  Shrinking
replays real processes for up to five minutes, so a run that finds something
may end that much past ``--minutes``; the steps counted include the replays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST = REPO_ROOT / "tests" / "e2e" / "test_model.py"
FIRST_BATCH = 3
MAX_BATCH = 500


@dataclass
class Batch:
    code: int
    examples: int
    steps: int
    seconds: float
    log: Path
    output: str = ""


@dataclass
class Totals:
    batches: int = 0
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    failures: list[Batch] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument(
        "--steps", type=int, default=None,
        help="steps per example (LOGBOOK_MODEL_STEPS; default: the test's, 12)",
    )  # fmt: skip
    p.add_argument(
        "--batch-minutes", type=float, default=5.0,
        help="longest batch (one pytest run) before the next starts (default 5)",
    )  # fmt: skip
    p.add_argument("--no-shrink", action="store_true", help="report a failure as found, unshrunk")
    p.add_argument(
        "--keep-going", action="store_true", help="go on after a counterexample (default: stop)"
    )
    p.add_argument("--db", metavar="DIR", help="hypothesis example database (LOGBOOK_MODEL_DB)")
    p.add_argument("--logs", metavar="DIR", help="where batch logs go (default: a temp dir)")
    p.add_argument(
        "--test", metavar="PATH", type=Path, default=TEST,
        help="the state machine's test file (default: tests/e2e/test_model.py)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.batch_minutes <= 0:
        p.error("--minutes and --batch-minutes must be positive")
    return args


def run_batch(args: argparse.Namespace, examples: int, logs: Path, index: int) -> Batch:
    stats = logs / f"batch-{index}.stats.json"
    log = logs / f"batch-{index}.log"
    env = dict(os.environ)
    env["LOGBOOK_MODEL_EXAMPLES"] = str(examples)
    env["LOGBOOK_MODEL_STATS"] = str(stats)
    env["LOGBOOK_MODEL_SHRINK"] = "0" if args.no_shrink else "1"
    if args.steps is not None:
        env["LOGBOOK_MODEL_STEPS"] = str(args.steps)
    if args.db:
        env["LOGBOOK_MODEL_DB"] = args.db
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(args.test)]
    began = time.monotonic()
    with open(log, "w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            # pytest got the SIGINT too: let the machine's teardown stop what it started.
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                code = proc.wait()
            raise
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        output = out.read()
    seconds = time.monotonic() - began
    try:
        data = json.loads(stats.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    return Batch(
        code, int(data.get("examples", 0)), int(data.get("steps", 0)), seconds, log, output
    )


_PREFIX = re.compile(r"^(E\s{1,12}|\s*\|\s?)")


def counterexamples(output: str) -> list[str]:
    """Hypothesis's failing rule sequences (``state = LogbookMachine()`` ... ``teardown()``)."""
    found: list[str] = []
    block: list[str] | None = None
    for raw in output.splitlines():
        line = _PREFIX.sub("", raw, count=1)
        if line.startswith("state = ") and "Machine()" in line:
            block = [line]
            continue
        if block is not None:
            block.append(line)
            if line.startswith("state.teardown()"):
                text = "\n".join(block)
                if text not in found:
                    found.append(text)
                block = None
    return found


def errors(output: str) -> list[str]:
    """The assertion lines and pytest's summary of a failed batch."""
    keep = []
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith("E ") and ("Error" in line or "assert" in line):
            keep.append(line)
        elif line.startswith(("FAILED", "ERROR")) or "hypothesis-seed" in line:
            keep.append(line)
        elif "reproduce_failure" in line:
            keep.append(line)
    seen: list[str] = []
    for line in keep:
        if line not in seen:
            seen.append(line)
    return seen[:40]


def report_failure(batch: Batch) -> None:
    print(f"\nsoak: COUNTEREXAMPLE (pytest exit {batch.code}); full log: {batch.log}", flush=True)
    for line in errors(batch.output):
        print(f"  {line}")
    sequences = counterexamples(batch.output)
    if not sequences:
        print("  (no rule sequence in the output; the tail of the log:)")
        for line in batch.output.splitlines()[-60:]:
            print(f"  {line}")
    for i, seq in enumerate(sequences, 1):
        print(f"\n--- failing rule sequence {i} ---\n{seq}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="logbook-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    cap = args.batch_minutes * 60
    began = time.monotonic()
    totals = Totals()
    per_example: float | None = None
    print(f"soak: {args.minutes:g} minutes of {args.test}; logs in {logs}", flush=True)
    try:
        while True:
            left = budget - (time.monotonic() - began)
            if per_example is None:
                examples = FIRST_BATCH
            else:
                if left < per_example * 0.75:
                    break
                examples = max(1, min(MAX_BATCH, int(min(left, cap) / per_example)))
            if left <= 0:
                break
            batch = run_batch(args, examples, logs, totals.batches + 1)
            totals.batches += 1
            totals.examples += batch.examples
            totals.steps += batch.steps
            totals.seconds += batch.seconds
            if batch.examples:
                # The slower of the whole run's pace and the last batch's: examples vary.
                per_example = max(
                    totals.seconds / max(1, totals.examples), batch.seconds / batch.examples
                )
            elapsed = time.monotonic() - began
            print(
                f"soak: batch {totals.batches}: {batch.examples} examples, {batch.steps} steps"
                f" in {batch.seconds:.0f} s (exit {batch.code}); total {totals.steps} steps,"
                f" {elapsed / 60:.1f} min",
                flush=True,
            )
            if batch.code != 0:
                totals.failures.append(batch)
                report_failure(batch)
                if not args.keep_going:
                    break
            if batch.code != 0 and batch.examples == 0:
                break  # it cannot even start: no point going on
    except KeyboardInterrupt:
        print("\nsoak: interrupted", flush=True)
    minutes = (time.monotonic() - began) / 60
    rate = totals.steps / minutes if minutes > 0 else 0.0
    print(
        f"\nsoak: {totals.steps} steps run ({totals.examples} examples, {totals.batches}"
        f" batches) in {minutes:.1f} min: {rate:.1f} steps/minute"
    )
    if totals.failures:
        print(f"soak: {len(totals.failures)} failing batch(es); logs: "
              + ", ".join(str(b.log) for b in totals.failures))  # fmt: skip
        return 1
    print("soak: no counterexample found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
