"""``logbook relay`` as a real process on loopback, for the tests: started, waited for,
stopped by PID.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from support import base_env, cli, cli_cmd

READY = "relay ready on "
#: The upstream key of every relay under test: it must never reach a lab, a log or a store.
UP_KEY = "upstream+key/never=leaves"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    def __init__(
        self, home: Path, upstream: str, upstream_key: str, *, port: int = 0,
        extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.home, self.upstream, self.upstream_key = home, upstream, upstream_key
        self.port = port or free_port()
        self.extra = extra
        self.env = env or {}
        self.preexec_fn = preexec_fn  # e.g. a lower descriptor limit (resource.setrlimit)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = home / "relay.log"

    def add_key(self, name: str) -> str:
        run = cli(self.home, "relay", "key", "add", name)
        assert run.code == 0, run.err
        return run.out.strip()

    def start(self, timeout: float = 20.0) -> RelayProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        env = base_env(self.home, {"HAIQU_API_KEY": self.upstream_key, **self.env})
        cmd = cli_cmd(
            "relay", "--listen", f"127.0.0.1:{self.port}", "--upstream", self.upstream,
            "--refresh", "0.5", *self.extra,
        )  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                preexec_fn=self.preexec_fn,
            )  # fmt: skip
        assert self.proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(f"the relay did not start: {self.log.read_text()}")
                if sel.select(0.2):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    buf += chunk
        line = buf.decode().splitlines()[0]
        assert line.startswith(READY), line
        self.url = line[len(READY) :].strip()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def env_for_lab(self, key: str) -> dict[str, str]:
        return {"HAIQU_EDGE_URI": self.url, "HAIQU_API_KEY": key}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
