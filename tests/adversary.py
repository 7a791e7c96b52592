"""A raw, misbehaving HTTP/1.1 server on 127.0.0.1 for transport tests.

Why raw sockets: a real HTTP framework refuses to misbehave in the precise
ways that decide "nothing was sent" vs "maybe sent" (closing after the request
was read, RST, half-written headers, endless trailers ...).  This server reads
requests byte-for-byte, records them verbatim (so a test can count POSTs and
see the exact request target that left the client), and then answers
according to ``mode``.

Usage::

    with Adversary() as adv:
        adv.mode = "close_before_response"
        ...  # send to adv.url("/jobs?HAIQU_API_KEY=...")
        assert adv.count("POST") == 1

``mode`` may be a string (applies to every request) or a list of strings
(consumed one per request, the last one repeating), e.g.
``["ok", "close_before_response"]`` answers the first request on a keep-alive
connection and drops the connection when the *reused* connection carries the
second one.

Modes (per request, after the request head+body were read unless noted):

================================ =============================================
ok                               200, small JSON job, Content-Length, keep-alive
wrong_hash                       200, a job whose ``hash`` is not the one sent
not_found                        404, ``{"detail": "Job not found"}`` (the API's
                                 answer to a look-up of a job it does not hold)
echo_target                      500, body echoes the raw request line (query
                                 included) with percent escapes lower-cased
redirect / redirect_30[1278]     30x to ``http://other.example:1/jobs?HAIQU_API_KEY=...``
never_answer                     read the request, never answer (until stop)
close_before_response            read the request, then close (FIN)
close_mid_headers                send half a status line + header, close
close_mid_body                   Content-Length: 100, send 10 bytes, close
reset                            read the request, then RST (SO_LINGER 0)
reset_before_body                read only the request head, then RST (the
                                 client is still writing a large body)
garbage                          non-HTTP bytes, then close
garbage_echo                     an invalid status line that contains the raw
                                 request target (tests message scrubbing)
chunked_trailers_forever         chunked body, then trailer lines until the
                                 client goes away (bounded)
huge_body                        Content-Length: 10**10, stream zeros (bounded)
huge_chunked                     chunked, 64 KiB chunks without end (bounded)
trickle                          Content-Length: 100000, then one byte / 50 ms
refuse_after_accept              accept, close at once without reading (RST
                                 if the client already wrote)
proxy_refuse_407 / _403          answer a CONNECT with 407 / 403 (proxy stub)
================================ =============================================

Stdlib only; one thread per connection.  ``stop()`` (context exit) closes
every socket and joins every thread, so no test leaks a server.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

REDIRECT_LOCATION = "http://other.example:1/jobs?HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars"
_MAX_HEAD = 64 * 1024
_STREAM_CAP = 256 * 1024 * 1024  # bound for huge_body / trailers_forever
_STREAM_SECONDS = 30.0


@dataclass
class RecordedRequest:
    """One request exactly as it arrived on the wire."""

    conn_id: int
    method: str
    target: str  # raw request target, never decoded
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class _Conn:
    sock: socket.socket
    conn_id: int
    thread: threading.Thread | None = None
    buf: bytes = b""


@dataclass
class Adversary:
    """Context-managed raw HTTP server; see the module docstring for modes."""

    mode: str | Sequence[str] = "ok"
    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    tls_failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._mode_index = 0
        self.port = 0

    # -- lifecycle -----------------------------------------------------
    def __enter__(self) -> Adversary:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, 0))
        ls.listen(128)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="adversary-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        with self._lock:
            conns = list(self._conns)
            self._lock.notify_all()
        for c in conns:
            _hard_close(c.sock, shutdown=True)
        for c in conns:
            if c.thread is not None:
                c.thread.join(5)

    # -- helpers for tests ---------------------------------------------
    def url(self, path_qs: str = "/jobs", scheme: str | None = None) -> str:
        scheme = scheme or ("https" if self.ssl_context else "http")
        return f"{scheme}://{self.host}:{self.port}{path_qs}"

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r.method == method)

    def wait_for(self, predicate: Callable[[Adversary], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every event)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    # -- internals -----------------------------------------------------
    def _next_mode(self) -> str:
        with self._lock:
            m = self.mode
            if isinstance(m, str):
                return m
            i = min(self._mode_index, len(m) - 1)
            self._mode_index += 1
            return m[i]

    def _peek_mode(self) -> str:
        with self._lock:
            m = self.mode
            if isinstance(m, str):
                return m
            return m[min(self._mode_index, len(m) - 1)]

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                conn = _Conn(sock=sock, conn_id=self.connections)
                self._conns.append(conn)
                self._lock.notify_all()
            t = threading.Thread(
                target=self._serve, args=(conn,), name=f"adversary-conn-{conn.conn_id}", daemon=True
            )
            conn.thread = t
            t.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            if self._peek_mode() == "refuse_after_accept":
                self._next_mode()
                _hard_close(conn.sock, rst=True)
                return
            if self.ssl_context is not None:
                try:
                    conn.sock = self.ssl_context.wrap_socket(conn.sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    with self._lock:
                        self.tls_failures.append(str(e))
                        self._lock.notify_all()
                    _hard_close(conn.sock)
                    return
            while not self._stop.is_set():
                req = self._read_request(conn)
                if req is None:
                    break
                if not self._respond(conn, req, self._next_mode()):
                    break
        except OSError:
            pass
        finally:
            _hard_close(conn.sock)

    def _read_request(self, conn: _Conn) -> RecordedRequest | None:
        while b"\r\n\r\n" not in conn.buf:
            if len(conn.buf) > _MAX_HEAD:
                return None
            chunk = conn.sock.recv(65536)
            if not chunk:
                return None
            conn.buf += chunk
        head, _, rest = conn.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        length = 0
        for k, v in headers:
            if k.lower() == "content-length":
                length = int(v)
        if self._peek_mode() == "reset_before_body":
            length, conn.buf = 0, b""  # do not read the body; _respond resets
        while len(rest) < length:
            chunk = conn.sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        body, conn.buf = rest[:length], rest[length:]
        req = RecordedRequest(
            conn.conn_id, method, target, version, headers, body, head + b"\r\n\r\n"
        )
        with self._lock:
            self.requests.append(req)
            self._lock.notify_all()
        return req

    def _respond(self, conn: _Conn, req: RecordedRequest, mode: str) -> bool:
        """Answer ``req`` per ``mode``; return True to keep the connection."""
        s = conn.sock
        if mode in ("ok", "wrong_hash"):
            sent_hash = "abc123"
            try:
                sent_hash = json.loads(req.body or b"{}").get("hash", sent_hash)
            except (ValueError, AttributeError):
                pass
            job = {
                "id": "job-1",
                "hash": sent_hash if mode == "ok" else "0000deadbeef",
                "status": "stored",
            }
            s.sendall(_response(200, "OK", json.dumps(job).encode(), "application/json"))
            return True
        if mode == "not_found":
            body = b'{"detail": "Job not found"}'
            s.sendall(_response(404, "Not Found", body, "application/json"))
            return True
        if mode == "echo_target":
            echoed = re.sub(
                r"%[0-9A-F]{2}",
                lambda m: m.group(0).lower(),
                f"{req.method} {req.target} {req.version}",
            )
            s.sendall(
                _response(
                    500, "Internal Server Error", f"cannot handle: {echoed}".encode(), "text/plain"
                )
            )
            return True
        if mode.startswith("redirect"):
            status = int(mode.rsplit("_", 1)[1]) if "_" in mode else 307
            reason = {
                301: "Moved Permanently",
                302: "Found",
                307: "Temporary Redirect",
                308: "Permanent Redirect",
            }[status]
            s.sendall(
                _response(
                    status, reason, b"", "text/plain", extra=[("Location", REDIRECT_LOCATION)]
                )
            )
            return True
        if mode == "never_answer":
            self._stop.wait()
            return False
        if mode == "close_before_response":
            s.shutdown(socket.SHUT_WR)
            return False
        if mode == "close_mid_headers":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: appl")
            s.shutdown(socket.SHUT_WR)
            return False
        if mode == "close_mid_body":
            s.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"id": "jo'
            )
            s.shutdown(socket.SHUT_WR)
            return False
        if mode in ("reset", "refuse_after_accept", "reset_before_body"):
            _hard_close(s, rst=True)
            return False
        if mode == "garbage":
            s.sendall(b"\x00\x16\x03\x01SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            return False
        if mode == "garbage_echo":
            s.sendall(f"HTTP/1.1 2x0 {req.target}\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
            s.shutdown(socket.SHUT_WR)
            return False
        if mode == "chunked_trailers_forever":
            s.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                b"5\r\nhello\r\n0\r\n"
            )
            self._stream(s, lambda i: f"X-T-{i}: {'v' * 64}\r\n".encode())
            return False
        if mode == "huge_body":
            s.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 10000000000\r\n\r\n"
            )
            block = b"\0" * 65536
            self._stream(s, lambda i: block)
            return False
        if mode == "huge_chunked":
            s.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
            self._stream(s, lambda i: chunk)
            return False
        if mode == "trickle":
            s.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
            for _ in range(100000):
                if self._stop.wait(
                    0.05
                ):  # one byte per 50 ms: never idle long enough for sock_read
                    break
                try:
                    s.sendall(b" ")
                except OSError:
                    break
            return False
        if mode.startswith("proxy_refuse_"):
            status = int(mode.rsplit("_", 1)[1])
            extra = [("Proxy-Authenticate", 'Basic realm="adversary"')] if status == 407 else []
            reason = {407: "Proxy Authentication Required", 403: "Forbidden"}[status]
            s.sendall(
                _response(
                    status, reason, b"", "text/plain", extra=extra + [("Connection", "close")]
                )
            )
            return False
        raise ValueError(f"unknown adversary mode {mode!r}")

    def _stream(self, s: socket.socket, piece: Callable[[int], bytes]) -> None:
        """Send ``piece(i)`` until the client goes away (bounded in bytes and time).

        A blocking send is fine: ``stop()`` shuts the socket down, which makes a
        blocked ``sendall`` fail at once.
        """
        sent, i, t0 = 0, 0, time.monotonic()
        while (
            not self._stop.is_set()
            and sent < _STREAM_CAP
            and time.monotonic() - t0 < _STREAM_SECONDS
        ):
            data = piece(i)
            try:
                s.sendall(data)
            except OSError:
                return
            sent += len(data)
            i += 1


def _response(
    status: int, reason: str, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None
) -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _hard_close(s: socket.socket, *, rst: bool = False, shutdown: bool = False) -> None:
    try:
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif shutdown:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def closed_port() -> int:
    """A loopback port with (almost certainly) nothing listening: bind, then close."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)
