"""The server's accept loop when the process runs out of descriptors: real sockets, in process.

The relay's caps keep it below its descriptor limit (tests/e2e/test_relay_hostile.py);
this is the loop's behaviour when something else took them anyway: it waits, and
says so once a minute, not once per ``accept()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web

from logbook.server import bind
from logbook.server.listen import CappedSite, Connections, Limits


@contextmanager
def no_descriptors_left() -> Iterator[None]:
    """Every descriptor number below the soft limit in use: the next ``accept()`` fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []
    while True:  # fill the holes below the highest descriptor in use
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd > top:
            os.close(fd)
            break
        fillers.append(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for f in fillers:
            os.close(f)


def test_running_out_of_descriptors_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="logbook.server")

    async def scenario() -> int:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        sock = bind("127.0.0.1", 0)
        site = CappedSite(runner, sock, Limits(max_connections=100, max_per_client=100),
                          Connections())  # fmt: skip
        await site.start()
        clients = [socket.socket() for _ in range(5)]  # made while descriptors are left
        try:
            with no_descriptors_left():
                for c in clients:
                    c.setblocking(False)
                    c.connect_ex(sock.getsockname())
                async with asyncio.timeout(30):
                    while site.exhausted < 5:
                        await asyncio.sleep(0.05)
            return site.open
        finally:
            for c in clients:
                c.close()
            await runner.cleanup()

    assert asyncio.run(scenario()) == 0
    lines = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "LimitNOFILE" in lines[0]
