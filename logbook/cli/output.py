"""What the command line shows: error lines, log lines, progress, and data on stdout.

Every library error (``logbook.errors``) becomes one redacted line on stderr
with the exit code the contract gives (``error_line``, used once, by the
group); logging becomes timestamped lines (or JSON lines with
``--log-format json``); long work shows a live bar on a terminal and a stats
line every ``--stats`` seconds otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..progress import Progress


class Terminated(BaseException):
    """SIGTERM arrived: unwind (cleaning up scratch files), then exit 143."""


class LogbookClickError(click.ClickException):
    """One line on stderr with the library's exit code."""

    def __init__(self, message: str, exit_code: int = 1, *, label: str = "error: ") -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]
        self.label = label

    def show(self, file: Any = None) -> None:
        click.echo(f"logbook: {self.label}{self.format_message()}", err=True)


def secrets() -> list[str]:
    """What to redact from any line: the key (environment or config file) and proxy passwords."""
    from ..redact import url_secrets

    found = [v for k, v in os.environ.items() if k.lower().endswith("_proxy")]
    out = [s for url in found for s in url_secrets(url)]
    key = os.environ.get("HAIQU_API_KEY")
    if key:
        out += [key, key.strip()]
    try:
        from ..config import load_config

        cfg = load_config()
        out += [cfg.api_key or "", *url_secrets(cfg.proxy)]
    except Exception:  # noqa: BLE001 - a broken config has no secret to hide
        pass
    return [s for s in out if s]


def redacted(text: str) -> str:
    """``text`` without the key, proxy passwords, relay keys, or the key the request being
    handled presented (a server's log lines)."""
    from ..redact import presented, redact

    return redact(text, *secrets(), *presented.get())


def error_line(err: BaseException) -> BaseException:
    """The one line (and exit code) an error ends a command with; click's own pass through.

    The only mapping from errors to what the user sees: the group's ``invoke``
    calls it for every command.
    """
    from ..errors import Interrupted, LogbookError

    if isinstance(err, (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit)):
        return err
    if isinstance(err, Interrupted):  # the user stopped it: no error, what was done
        report = getattr(err.report, "summary", None)
        done = f": {report()}" if callable(report) else ""
        word = "interrupted" if err.exit_code == 130 else "interrupted by SIGTERM"
        return LogbookClickError(redacted(word + done), err.exit_code, label="")
    if isinstance(err, LogbookError):
        return LogbookClickError(redacted(str(err)), err.exit_code)
    if isinstance(err, KeyboardInterrupt):
        return LogbookClickError("interrupted", 130, label="")
    if isinstance(err, Terminated):
        return LogbookClickError("terminated", 143, label="")
    if isinstance(err, BrokenPipeError):
        sys.stderr.close()
        return SystemExit(0)
    if isinstance(err, RecursionError):
        return LogbookClickError("the input is nested too deeply", 2)
    if isinstance(err, Exception):  # never a traceback for the user; -v logs it
        logging.getLogger("logbook").debug("unexpected error", exc_info=err)
        return LogbookClickError(redacted(f"unexpected {type(err).__name__}: {err}"), 1)
    return err


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


def printable(text: str) -> str:
    """Text fit for a terminal: control characters (escape sequences, line breaks) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def echo(text: str) -> None:
    """A line of data on stdout, printable whatever bytes a name holds."""
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


# --- logging -----------------------------------------------------------------------------


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Formatter(logging.Formatter):
    """Timestamped text (``2026-11-29T12:00:00.000Z logbook: ...``) or one JSON object a line.

    Every line is redacted, and a traceback is shown only at ``-vv`` (inside the
    JSON object, never as lines of its own).
    """

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string is not a crash
            message = str(record.msg)
        message = redacted(message)
        if record.exc_info and logging.getLogger("logbook").isEnabledFor(logging.DEBUG):
            message += "\n" + redacted(self.formatException(record.exc_info))
        if self.json:
            return json.dumps(
                {"time": stamp(), "level": record.levelname.lower(), "logger": record.name,
                 "message": message},
                ensure_ascii=False,
            )  # fmt: skip
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{stamp()} logbook: {level}{message}"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so a second ``setup_logging`` replaces it instead of adding another; it writes
    to whatever ``sys.stderr`` is now (an in-process run's is gone once it returns)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: int, quiet: bool, fmt: str, service: bool = False) -> None:
    """Warnings by default; a service (watch, relay) also says what it does, unless -q.

    Every logger goes through the one redacting handler on the root: logbook's,
    and the libraries' (aiohttp's server, asyncio's), whose own lines could
    quote a request with a key in it.
    """
    top = logging.getLogger()
    ours = logging.getLogger("logbook")
    for logger in (top, ours):
        for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
            logger.removeHandler(old)
    handler = _Handler()
    handler.setFormatter(Formatter(fmt))
    top.addHandler(handler)
    ours.propagate = True
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1 or (service and not quiet):
        level = logging.INFO
    else:
        level = logging.ERROR if quiet else logging.WARNING
    ours.setLevel(level)
    top.setLevel(logging.ERROR if quiet else logging.WARNING)
    # httpx2 logs every URL (the key in the query string) at INFO: keep it quiet.
    for name in ("httpx2", "httpcore2", "httpx", "httpcore", "watchdog", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- progress ----------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(value)
    return (
        f"{value // 3600}:{value % 3600 // 60:02d}:{value % 60:02d}"
        if value >= 3600
        else (f"{value // 60}:{value % 60:02d}")
    )


def stats_line(p: Progress) -> str:
    """The non-terminal progress line: what, how far, how fast, how long, what went wrong."""
    share = f" ({100 * p.done / p.total:.1f}%)" if p.total else ""
    line = (
        f"{p.phase} {p.done}/{p.total}{share}, {p.rate():.1f}/s, ETA {_seconds(p.eta())},"
        f" elapsed {_seconds(time.monotonic() - p.started)}"
    )
    if p.retries or p.throttled:
        line += f", retries {p.retries}, throttled {p.throttled}"
    paused = pause_text(p)
    return f"{line}, {paused}" if paused else line


def pause_text(p: Progress) -> str:
    """Why nothing moves: ``paused 1 s: Retry-After, 412 s in all`` (or how long it paused)."""
    left = p.pausing()
    if left > 0:
        return f"paused {left:.0f} s: {p.pause_reason}, {p.paused_total:.0f} s in all"
    return f"paused {p.paused_total:.0f} s in all" if p.paused_total >= 0.5 else ""


@contextmanager
def show_progress(
    progress: Progress, unit: str, *, quiet: bool, stats: float, as_json: bool = False
) -> Iterator[None]:
    """A live bar on a terminal (tqdm), else a stats line every ``stats`` seconds;
    ``quiet`` hides both.
    """
    stop = threading.Event()
    thread: threading.Thread | None = None
    if not quiet and not as_json:
        if sys.stderr.isatty():
            thread = threading.Thread(target=_bar, args=(progress, unit, stop), daemon=True)
        elif stats > 0:
            thread = threading.Thread(target=_stats, args=(progress, stats, stop), daemon=True)
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(2.0)


def _bar(progress: Progress, unit: str, stop: threading.Event) -> None:
    from tqdm import tqdm

    bar: Any = None
    phase = None
    while True:
        stopping = stop.wait(0.2)
        if progress.phase != phase:
            if bar is not None and phase is not None:
                bar.n = progress.ended.get(phase, bar.n)  # where it ended, not its last tick
                bar.refresh()
                bar.close()
            phase = progress.phase
            bar = None
            if phase not in ("done", "starting"):
                # A pty nobody sized reports 0x0, and tqdm hides a bar that does not fit.
                size = shutil.get_terminal_size((100, 24))
                bar = tqdm(
                    total=progress.total or None, desc=phase, unit=f" {unit}", file=sys.stderr,
                    ncols=size.columns or 100, nrows=size.lines or 24, leave=True,
                )  # fmt: skip
        if bar is not None:
            if progress.total and bar.total != progress.total:
                bar.total = progress.total
            bar.n = progress.done
            if progress.retries or progress.throttled or progress.paused_total:
                extra = pause_text(progress)
                bar.set_postfix_str(
                    f"retries {progress.retries}, throttled {progress.throttled}"
                    + (f", {extra}" if extra else ""), refresh=False,
                )  # fmt: skip
            bar.refresh()
        if stopping:
            if bar is not None:
                bar.close()
            return


def _stats(progress: Progress, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        if progress.phase not in ("done", "starting") and (progress.total or progress.done):
            click.echo(f"{stamp()} logbook: {stats_line(progress)}", err=True)
