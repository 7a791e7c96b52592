"""What the monitoring tests share: a stand-in for systemd's notify socket, a daemon's
``--metrics`` read back, and ``logbook watch`` as a real process that says where they are.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import spawn

METRICS_LINE = "metrics on "


class NotifySocket:
    """A bound AF_UNIX datagram socket, as systemd's ``$NOTIFY_SOCKET``, read on a thread.

    ``abstract``: in the abstract namespace (``@name``), as systemd often names it.
    """

    def __init__(self, abstract: bool = False) -> None:
        name = f"logbook-test-{uuid.uuid4().hex[:12]}"
        self.address = f"@{name}" if abstract else f"/tmp/{name}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name if abstract else self.address)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode("utf-8", "replace").split("\n"):
                self.received.append((time.monotonic(), line))

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def lines(self, prefix: str = "") -> list[str]:
        return [text for _, text in list(self.received) if text.startswith(prefix)]

    def count(self, text: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, m in list(self.received) if m == text and since <= t <= until)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(url: str, timeout: float = 15.0) -> tuple[int, str]:
    """``GET url``: the status and the body, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text (parsed by prometheus_client), or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The next line on a process's stdout, waiting at most ``timeout``."""
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"no line on stdout (exit {proc.poll()}): {buf!r}")
            if sel.select(min(left, 0.2)):
                chunk = os.read(proc.stdout.fileno(), 1)
                if chunk:
                    buf += chunk
    return buf.decode().strip()


class Watcher:
    """``logbook watch DIR --metrics 127.0.0.1:0 ...`` as a real process; its metrics URL is
    read from its ``metrics on URL`` line; stopped by its PID."""

    def __init__(
        self, home: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None,
        metrics: bool = True,
    ) -> None:  # fmt: skip
        extra = ["--metrics", "127.0.0.1:0"] if metrics else []
        self.proc = spawn(home, "watch", *args, *extra, env=env)
        self.url = ""
        if metrics:
            line = read_line(self.proc)
            assert line.startswith(METRICS_LINE), line
            self.url = line[len(METRICS_LINE) :]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> tuple[int, str]:
        return get(self.url + path)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``sig`` (SIGKILL after 20 s); the exit code, stdout and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process must wake to die
            self.proc.kill()
        self.proc.communicate()
