"""systemd's notify protocol, in the standard library: one datagram per message.

Under ``Type=notify`` systemd names an ``AF_UNIX`` datagram socket in
``$NOTIFY_SOCKET`` (a leading ``@``: the abstract namespace) and, with
``WatchdogSec=``, the period in ``$WATCHDOG_USEC``.  A daemon sends
``READY=1`` once it serves, ``STATUS=...`` (what ``systemctl status``
shows), ``WATCHDOG=1`` at least every half period (else systemd kills and
restarts it) and ``STOPPING=1`` when it begins to stop.  libsystemd's
``sd_notify`` is these few lines; the ``sdnotify`` package has not been
released since 2017.

The watchdog must be fed by the daemon's own loop, not by a timer thread of
its own: a loop that hangs then stops feeding it, and systemd restarts the
daemon.  ``Heartbeat.beat()`` is what the loop calls on every turn; it is
cheap (a clock read) and sends only when a datagram is due.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger("logbook.notify")

#: Variables taken out of the environment once read, so that no child process talks for us.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Messages to systemd; every method does nothing when not run under ``Type=notify``."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        self.address: str | bytes | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        #: Seconds between WATCHDOG=1 (half the period systemd gave), or None: no watchdog.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._status: str | None = None

    @classmethod
    def from_env(cls) -> Notifier:
        """What systemd gave this process, taken out of the environment (as ``sd_notify`` may)."""
        values = {name: os.environ.pop(name, None) for name in _VARIABLES}
        usec: int | None = None
        raw = values["WATCHDOG_USEC"]
        pid = values["WATCHDOG_PID"]
        if raw and raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(values["NOTIFY_SOCKET"], usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of ``KEY=value`` lines; False (logged once at debug) when it failed."""
        if self.address is None:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                self._sock.sendto(data, self.address)
            except OSError as err:
                log.debug("cannot notify systemd: %s", err)
                return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        if status:
            self._status = status

    def status(self, text: str) -> None:
        """``STATUS=`` when the line changed since the last one sent."""
        line = " ".join(text.split())
        if line != self._status:
            self._status = line
            self.send(f"STATUS={line}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Heartbeat:
    """The daemon loop's pulse: when it last turned, and WATCHDOG=1 every half period."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier()
        self.interval = self.notifier.watchdog_interval
        self.last = time.monotonic()
        self._next = self.last

    def beat(self) -> None:
        """Called by the loop on every turn (cheap); sends WATCHDOG=1 when it is due."""
        now = self.last = time.monotonic()
        if self.interval is not None and now >= self._next:
            self._next = now + self.interval
            self.notifier.send("WATCHDOG=1")

    def age(self) -> float:
        """Seconds since the loop last turned."""
        return time.monotonic() - self.last
