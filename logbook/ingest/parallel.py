"""Big JSON Lines files parsed by forked worker processes, in file order.

``logbook import`` hands each chunk's jobs to ``transform`` in the worker
(the store's rows, written to a scratch file that the store copies in), so
parsing and inserting overlap on two cores.  Workers get the lines by fork,
never by pickling, through the pool's initializer, so nothing here is a
module global of the parent.

Workers die with their parent: on Linux each asks the kernel for SIGKILL
when the parent goes (``PR_SET_PDEATHSIG``), so a ``kill -9`` of a large
import leaves no worker behind.

SIGINT and SIGTERM are held while the pool forks its workers and while it
shuts down, and handled once that is done: a handler that raises in the
middle of a fork runs inside logging's at-fork hook, where the exception is
dropped (the signal lost, the import going on to exit 0).  A stopped run
kills its workers instead of waiting for them: at exit, multiprocessing
would otherwise wait for idle workers for ever.  While it waits for results
a signal stops it at once.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: Below this many lines a file is parsed in-process.
PARALLEL_MIN_LINES = 20_000
CHUNK_LINES = 4_000

Parser = Callable[[list[str], int], tuple[list[dict[str, Any]], list[str], int]]
Transform = Callable[[list[dict[str, Any]], int], Any]

# The worker's own state, set by the initializer in the child only.
_work: tuple[list[str], Parser, Transform | None] | None = None


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then reach the handlers they were
    meant for.  (Masking them would not do: the kernel hands a signal to any thread, and
    the main thread then runs the Python handler at its next instruction, wherever that is.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, _frame: caught.append(n)) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])  # handled here, as if it had just arrived


def _init(parent: int, lines: list[str], parse: Parser, transform: Transform | None) -> None:
    global _work
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the group
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's, inherited by the fork
    _work = (lines, parse, transform)


def _run_chunk(bounds: tuple[int, int, int]) -> tuple[Any, int, list[str], int]:
    assert _work is not None
    lines, parse, transform = _work
    index, start, end = bounds
    jobs, bad, nbad = parse(lines[start:end], start + 1)
    if transform is not None:
        return transform(jobs, index), len(jobs), bad, nbad
    return jobs, len(jobs), bad, nbad


@dataclass
class ChunkedParse:
    """A big file's lines, to be parsed by ``workers`` processes when ``chunks()`` is iterated.

    ``chunks()`` yields each chunk's result (``transform(jobs, index)``, or the
    jobs) in order; ``njobs``, ``bad`` (the first few reasons) and ``nbad`` are
    complete once it is exhausted.
    """

    lines: list[str]
    parse: Parser
    workers: int
    transform: Transform | None = None
    njobs: int = 0
    bad: list[str] = field(default_factory=list)
    nbad: int = 0

    def chunks(self, max_chunks: int | None = None) -> Iterator[Any]:
        """Each chunk's result in order; at most ``max_chunks`` of them (the consumer's limit)."""
        n = len(self.lines)
        size = CHUNK_LINES
        if max_chunks is not None:
            size = max(size, -(-n // max_chunks))
        bounds = [(i, s, min(s + size, n)) for i, s in enumerate(range(0, n, size))]
        ctx = multiprocessing.get_context("fork")
        args = (os.getpid(), self.lines, self.parse, self.transform)
        pool: ProcessPoolExecutor | None = None
        finished = False
        try:
            with _signals_held():  # the workers are forked here (see the module's docstring)
                pool = ProcessPoolExecutor(
                    self.workers, mp_context=ctx, initializer=_init, initargs=args
                )
                futures = [pool.submit(_run_chunk, b) for b in bounds]
            # A signal held meanwhile is raised just above, inside this try.
            self.lines = []  # the workers have their copy
            for fut in futures:
                result, count, bad, nbad = fut.result()
                self.njobs += count
                self.bad += bad
                self.nbad += nbad
                yield result
            finished = True
        finally:
            if pool is not None:
                with _signals_held():
                    if not finished:  # stopped (a signal, an error, the consumer gone): no wait
                        workers = getattr(pool, "_processes", None) or {}  # pid -> Process
                        for proc in list(workers.values()):
                            proc.kill()
                    pool.shutdown(wait=True, cancel_futures=True)
