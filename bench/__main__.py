"""Run the benchmarks: every ``bench/bench_*.py`` module's ``main()``, or those named.

    python -m bench                 # all of them, in name order
    python -m bench core emulator   # bench_core, then bench_emulator

Exits non-zero when a benchmark's ``main()`` returns non-zero (a missed target).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = available()
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(names))
        return 0
    wanted = [a.removeprefix("bench_").removesuffix(".py") for a in args] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        print(
            f"bench: unknown benchmark {unknown[0]!r} (known: {', '.join(names)})", file=sys.stderr
        )
        return 2
    worst = 0
    for name in wanted:
        print(f"\n=== bench_{name} ===", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        start = time.perf_counter()
        saved = sys.argv
        sys.argv = [f"bench_{name}"]  # each main() parses its own (empty) arguments
        try:
            code = module.main()
        finally:
            sys.argv = saved
        took = time.perf_counter() - start
        print(f"=== bench_{name}: exit {code or 0} in {took:.1f} s ===", flush=True)
        worst = max(worst, int(code or 0))
    return worst


if __name__ == "__main__":
    sys.exit(main())
