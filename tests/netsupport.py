"""Real network peers for the tests: a forward proxy (proxy.py) and a private CA (trustme).

Both run on loopback; the proxy runs in its own process group and is
stopped by it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import trustme


def server_ctx(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server TLS context with a certificate from ``ca`` for loopback."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(ctx)
    return ctx


def write_server_cert(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    """``(cert.pem, key.pem)`` for a server on loopback, signed by ``ca``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class ProxyPy:
    """``python -m proxy`` in its own process group; port learnt via --port-file."""

    def __init__(self, tmp: Path, basic_auth: str | None) -> None:
        port_file = tmp / "port"
        args = [
            sys.executable, "-m", "proxy",
            "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            "--num-workers", "1", "--num-acceptors", "1", "--log-level", "WARNING",
        ]  # fmt: skip
        if basic_auth:
            args += ["--basic-auth", basic_auth]
        self.log = open(tmp / "proxy.log", "wb")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 20
        self.port = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit() and connectable(int(text)):
                self.port = int(text)
                break
            time.sleep(0.02)  # poll interval while waiting for a condition
        if not self.port:
            self.stop()
            raise RuntimeError(f"proxy.py did not start: {(tmp / 'proxy.log').read_text()}")

    def url(self, creds: str | None = None) -> str:
        return f"http://{creds + '@' if creds else ''}127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
