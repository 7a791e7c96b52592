"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET, WATCHDOG=1 every
half $WATCHDOG_USEC, and nothing at all when systemd is not listening.

A bound AF_UNIX datagram socket in the test stands in for systemd.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from logbook import notify
from logbook.notify import Heartbeat, Notifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    if len(path) > 100:  # sun_path holds 108 bytes
        path = f"/tmp/logbook-notify-{uuid.uuid4().hex[:8]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    os.unlink(path)


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_messages_reach_the_socket_systemd_named(
    systemd: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_env()
    assert "NOTIFY_SOCKET" not in os.environ, "a child process must not talk for us"
    n.ready()
    n.status("3 undelivered")
    n.status("3   undelivered")  # the same line: not sent again
    n.status("2 undelivered")
    n.stopping()
    n.close()
    assert received(sock) == [
        "READY=1", "STATUS=3 undelivered", "STATUS=2 undelivered", "STOPPING=1"
    ]  # fmt: skip


def test_the_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"logbook-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier.from_env().ready()
        sock.settimeout(5)
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled and n.watchdog_interval is None
    assert n.send("READY=1") is False
    Heartbeat(n).beat()


def test_a_gone_socket_never_fails_the_daemon(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"), 1_000_000)
    assert n.send("WATCHDOG=1") is False


@pytest.mark.parametrize(
    "env, interval",
    [
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "x"}, None),
    ],
)
def test_the_watchdog_period_is_half_of_what_systemd_gave(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], interval: float | None
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Notifier.from_env().watchdog_interval == interval


def test_the_loop_feeds_the_watchdog_every_half_period(
    systemd: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop beats often; WATCHDOG=1 goes out once per half period, not once per beat."""
    path, sock = systemd
    clock = [100.0]
    monkeypatch.setattr(notify.time, "monotonic", lambda: clock[0])
    beat = Heartbeat(Notifier(path, 2_000_000))  # WatchdogSec=2: one every second
    for _ in range(50):  # 5 s of a loop turning every 100 ms
        beat.beat()
        clock[0] += 0.1
    sent = sum(1 for m in received(sock) if m == "WATCHDOG=1")
    assert sent == 5
    assert beat.age() == pytest.approx(0.1)
    clock[0] += 30  # the loop is stuck: no beat, no datagram, and its age shows it
    assert received(sock) == [] and beat.age() == pytest.approx(30.1)
