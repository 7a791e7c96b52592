"""How many ``POST /jobs`` per second the emulator serves.

The emulator must never be what limits a sync benchmark, so it has to take at
least 3,000 POSTs/s on a 2-core machine.  An aiohttp client with 32
connections keeps enough requests in flight to find the server's limit.

    python -m bench.bench_emulator [--requests 20000] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

from logbook.emulator.testing import EmulatorProcess

TARGET = 3000
KEY = "bench+key/with=chars"


async def _post_many(url: str, total: int, connections: int, tag: str) -> float:
    """POST ``total`` distinct jobs with ``connections`` workers; return the seconds taken."""
    connector = aiohttp.TCPConnector(limit=connections)
    params = {"HAIQU_API_KEY": KEY}
    counter = iter(range(total))

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                body = {"experiment_id": "bench", "hash": f"{tag}-{i}", "results": '{"00": 1}'}
                async with session.post(
                    url + "/jobs",
                    params=params,
                    data=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"unexpected HTTP {resp.status}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - start


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time used by a process so far, when psutil is installed (it is in ``dev``)."""
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(
    total: int = 20_000, connections: int = 32, warmup: int = 2_000
) -> tuple[float, float | None]:
    """Start an emulator, warm it up, then time ``total`` POSTs.

    Returns requests/s and the emulator's CPU microseconds per request: the
    machine may be shared, and the CPU cost shows the server's own limit.
    """
    with EmulatorProcess(KEY, progress_seconds=0) as emu:
        asyncio.run(_post_many(emu.url, warmup, connections, "warmup"))
        cpu0 = _cpu_seconds(emu.pid)
        seconds = asyncio.run(_post_many(emu.url, total, connections, "run"))
        cpu1 = _cpu_seconds(emu.pid)
        stats = emu.stats()
    if stats["jobs_created"] != warmup + total:
        raise RuntimeError(f"expected {warmup + total} jobs, the emulator has {stats}")
    cpu_us = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / total * 1e6
    return total / seconds, cpu_us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args(argv)
    rate, cpu_us = measure(args.requests, args.connections)
    verdict = "PASS" if rate >= TARGET else "FAIL"
    print(
        f"emulator: POST /jobs {rate:.0f} req/s (aiohttp client, {args.connections} connections);"
        f" target >= {TARGET}: {verdict}"
    )
    if cpu_us is not None:
        print(f"emulator CPU per request: {cpu_us:.0f} us (one core: ~{1e6 / cpu_us:.0f} req/s)")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
