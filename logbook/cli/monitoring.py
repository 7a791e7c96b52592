"""The command line's side of watching the daemons: ``--metrics``, ``--max-lag``, the verdict
line, and what ``sync`` leaves for cron's watchers (a textfile, a heartbeat)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..config import Config
    from ..engine import SyncReport
    from ..monitor import Monitor

log = logging.getLogger("logbook")
MAX_LAG_DEFAULT = "3600, or max_lag in config.toml"


def version() -> str:
    """logbook's version, as ``--version`` says it (the build_info metric's label)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as of

    try:
        return of("haiqu-logbook")
    except PackageNotFoundError:
        return "unknown"


def host_port(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host.strip("[]"), int(port)


def metrics_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--metrics", metavar="HOST:PORT",
        help="Serve /metrics, /healthz, /readyz and a status page there (port 0: any free"
        " one). Keep it on loopback or a trusted network.",
    )  # fmt: skip


def max_lag_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--max-lag", type=click.FloatRange(min=0, min_open=True), metavar="S",
        help=f"{what} once the oldest undelivered entry is older than S seconds.",
        show_default=MAX_LAG_DEFAULT,
    )  # fmt: skip


def verdict_line(cfg: Config, max_lag: float | None) -> tuple[bool, str]:
    """``(ready, line)``: what ``/readyz`` would answer now."""
    from ..readiness import verdict_of

    v = verdict_of(cfg, max_lag if max_lag is not None else cfg.max_lag)
    return v.ready, v.line


def daemon_monitor(
    cfg: Config, role: str, metrics: str | None, max_lag: float | None
) -> Monitor | None:
    """The monitor of a daemon, when ``--metrics`` was given or systemd listens; else None."""
    from ..monitor import Monitor

    listen = host_port(metrics, "--metrics") if metrics else None
    monitor = Monitor(
        cfg, role=role, version=version(), listen=listen,
        max_lag=max_lag if max_lag is not None else cfg.max_lag,
    )  # fmt: skip
    return monitor if monitor.wanted else None


def say_metrics(monitor: Monitor | None) -> None:
    if monitor is not None and monitor.url:
        click.echo(f"metrics on {monitor.url}")


def after_sync(
    cfg: Config, report: SyncReport | None, textfile: str | None, heartbeat: str | None
) -> None:
    """The textfile after any run that got as far as the store; the heartbeat after a clean
    one only.  Neither fails the sync: a warning says what went wrong."""
    from ..errors import LogbookError

    if textfile:
        from ..monitor import sync_textfile

        try:
            sync_textfile(cfg, textfile, version(), cfg.max_lag)
        except (OSError, LogbookError) as err:
            log.warning("cannot write the metrics textfile %s: %s", textfile, err)
    if heartbeat and report is not None and report.exit_code == 0:
        from ..client import ping
        from ..config import hidden_url

        try:
            ping(heartbeat, cfg.network(), timeout=min(cfg.request_timeout, 30.0))
        except LogbookError as err:
            log.warning("heartbeat to %s not sent: %s", hidden_url(heartbeat), err)
        else:
            log.info("heartbeat sent to %s", hidden_url(heartbeat))
