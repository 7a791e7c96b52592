"""Start the emulator as a real subprocess and drive its admin routes.

Tests, benchmarks and the demo share this class.  It uses only the standard
library (urllib) so that it works where only the client's dependencies are
installed; the emulator process itself needs the ``emulator`` extra.
"""

from __future__ import annotations

import json
import os
import selectors
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

READY_PREFIX = "logbook emulator listening on "
# The directory holding the ``logbook`` package this file belongs to: the child
# must run the same code even when logbook is not installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class EmulatorError(RuntimeError):
    """The emulator did not start, or an admin call failed."""


class EmulatorProcess:
    """One ``python -m logbook.emulator --port 0`` process on loopback.

    The key is passed in the environment (``HAIQU_API_KEY``), never on the
    command line, so it does not show in ``ps``.
    """

    def __init__(
        self,
        key: str,
        *,
        progress_seconds: float = 3.0,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
        cafile: str | None = None,
        command: Sequence[str] = ("-m", "logbook.emulator"),
    ) -> None:
        self.key = key
        #: What follows the Python interpreter: ``("-m", "logbook", "emulator")`` runs it as
        #: the ``logbook emulator`` command.
        self.command = tuple(command)
        self.progress_seconds = progress_seconds
        self.extra_args = tuple(extra_args)
        self.host = host
        self.start_timeout = start_timeout
        # An emulator serving https (--tls-cert): the admin calls trust this CA.
        self._ssl = ssl.create_default_context(cafile=cafile) if cafile else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._stderr: IO[bytes] | None = None

    # lifecycle ------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._url is None:
            raise EmulatorError("the emulator is not running")
        return self._url

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point a logbook client at this emulator."""
        return {"HAIQU_API_KEY": self.key, "HAIQU_EDGE_URI": self.url}

    def start(self) -> EmulatorProcess:
        """Start the process, learn its port from the ready line, wait until it answers."""
        if self.running():
            raise EmulatorError("the emulator is already running")
        env = dict(os.environ)
        env["HAIQU_API_KEY"] = self.key
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            *self.command,
            "--host",
            self.host,
            "--port",
            "0",
            "--progress-seconds",
            str(self.progress_seconds),
            *self.extra_args,
        ]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + self.start_timeout
        try:
            line = self._read_ready_line(deadline)
            self._url = line[len(READY_PREFIX) :].strip()
            self._wait_answering(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_ready_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmulatorError(f"the emulator did not start in time{self._stderr_tail()}")
                if sel.select(timeout=min(left, 0.2)):
                    chunk = os.read(out.fileno(), 4096)
                    if not chunk:
                        self.proc.wait(timeout=5)
                        raise EmulatorError(
                            f"the emulator exited with {self.proc.returncode}{self._stderr_tail()}"
                        )
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        if not line.startswith(READY_PREFIX):
            raise EmulatorError(f"unexpected first line from the emulator: {line!r}")
        return line

    def _wait_answering(self, deadline: float) -> None:
        while True:
            try:
                self.stats()
                return
            except (OSError, EmulatorError):
                if time.monotonic() > deadline:
                    raise EmulatorError(
                        f"the emulator does not answer{self._stderr_tail()}"
                    ) from None
                time.sleep(0.05)

    def stderr_text(self) -> str:
        """What the emulator wrote to stderr so far (until stopped): tests scan it for keys."""
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _stderr_tail(self) -> str:
        text = self.stderr_text()[-2000:].strip()
        return f": {text}" if text else ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate by PID (SIGTERM: it saves its state), kill after ``timeout``; wait."""
        proc, self.proc = self.proc, None
        self._url = None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
            code = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def restart(self) -> EmulatorProcess:
        """Stop and start again (a new port); with ``--state-file`` the jobs survive."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmulatorProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # admin calls ------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise EmulatorError(f"{method} {path}: HTTP {exc.code}: {detail}") from None

    def stats(self) -> dict[str, Any]:
        """Requests per route, jobs_created, unique_jobs, duplicates, duplicate_keys."""
        result: dict[str, Any] = self._admin("GET", "/_admin/stats")
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", "/_admin/faults")
        return result

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Override some fault fields (see ``logbook.emulator.faults.Faults``)."""
        result: dict[str, Any] = self._admin("POST", "/_admin/faults", faults)
        return result

    def clear_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("DELETE", "/_admin/faults")
        return result

    def reset(self) -> None:
        """Forget every job, counter and fault."""
        self._admin("POST", "/_admin/reset", {})

    def jobs(self) -> list[dict[str, Any]]:
        """Every stored job, in creation order (duplicates included)."""
        result: list[dict[str, Any]] = self._admin("GET", "/_admin/jobs")
        return result
