"""The commands that talk to the API: sync, and watch (which records, and may sync)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_SETTLE
from ..progress import Progress
from .context import Ctx, LogbookCommand, auth_option, pass_ctx
from .monitoring import (
    after_sync,
    daemon_monitor,
    host_port,
    max_lag_option,
    metrics_option,
    say_metrics,
)
from .output import echo, print_json, redacted
from .units import flags, unit, warn_missing_dirs, warn_network_dirs

if TYPE_CHECKING:
    from ..monitor import Monitor
    from ..watch import Watcher


@click.command(cls=LogbookCommand)
@click.option(
    "--endpoint", metavar="URL", help="API base URL (default: $HAIQU_EDGE_URI, else the SDK's)."
)
@auth_option()
@click.option(
    "--concurrency", type=click.IntRange(1, 512), help="Requests in flight.", show_default="64"
)
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N entries.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option("--no-refresh", is_flag=True, help="Skip refreshing unfinished remote statuses.")
@click.option(
    "--max-time", type=click.FloatRange(min=0), metavar="S",
    help="Stop the run after S seconds (0: no limit).",
    show_default="3600, or max_time in config.toml",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--metrics-textfile", metavar="PATH", show_default="metrics_textfile in config.toml",
    help="Write the figures there afterwards (Prometheus text, atomically) for"
    " node_exporter's textfile collector.",
)  # fmt: skip
@click.option(
    "--heartbeat-url", metavar="URL", show_default="heartbeat_url in config.toml",
    help="GET this URL after a run that left nothing to send (healthchecks.io style).",
)  # fmt: skip
@pass_ctx
def sync(
    c: Ctx, endpoint: str | None, auth: str | None, concurrency: int | None, limit: int | None,
    dry_run: bool, no_refresh: bool, max_time: float | None, as_json: bool,
    metrics_textfile: str | None, heartbeat_url: str | None,
) -> None:  # fmt: skip
    """Send the due entries to the Haiqu Jobs API, each exactly once.

    Then refresh the status of synced entries the server has not finished.
    Exit 0: nothing left to send; 1: some pending or rejected; 2: bad
    configuration or a redirect; 3: the key was refused; 4: unreachable.
    Ctrl-C stops it cleanly (exit 130; SIGTERM: 143).

    \b
    Example:
      export HAIQU_API_KEY=...
      logbook sync --concurrency 32
      logbook sync -q --metrics-textfile /var/lib/node_exporter/textfile/logbook.prom
    """
    from ..engine import run_sync
    from ..errors import Interrupted

    cfg = c.config(endpoint=endpoint, auth=auth)
    store = c.open(create=False)  # a --db path that does not exist: say so, create nothing
    if store is not None:
        store.close()
    if dry_run:
        from ..engine import dry_run as plan

        due = plan(cfg, limit=limit)
        if as_json:
            print_json({"would_send": len(due), "entries": [e.to_dict() for e in due]})
        else:
            for e in due:
                echo(f"would send {e.id}  {e.experiment_id}  {e.hash[:16]}  {e.name}")
            click.echo(f"{len(due)} entries would be sent to {cfg.endpoint}")
        if not cfg.api_key and not c.quiet:
            from ..config import NO_KEY

            click.echo(f"logbook: a real sync would stop here: {NO_KEY}", err=True)
        return
    progress = Progress()
    report = None
    try:
        with c.progress(progress, "jobs", as_json=as_json):
            report = run_sync(
                cfg, concurrency=concurrency, limit=limit, refresh=not no_refresh,
                max_time=max_time, progress=progress, handle_signals=True,
            )  # fmt: skip
    except Interrupted as err:
        if as_json and err.report is not None:
            print_json(err.report.to_dict())  # type: ignore[attr-defined]
        raise
    finally:
        textfile = metrics_textfile or cfg.metrics_textfile
        after_sync(cfg, report, textfile, heartbeat_url or cfg.heartbeat_url)
    if as_json:
        print_json(report.to_dict())
    elif not c.quiet:
        click.echo(redacted(report.summary()))
    sys.exit(report.exit_code)


@click.command(cls=LogbookCommand)
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
              help="File name glob (repeatable).", show_default="*.json and *.jsonl")  # fmt: skip
@click.option("--sync", "do_sync", is_flag=True, help="Upload new entries as they are recorded.")
@click.option("--endpoint", metavar="URL", help="API base URL for --sync.")
@auth_option()
@click.option("--polling", is_flag=True, help="Poll instead of inotify (for NFS/SMB).")
@click.option("--settle", type=click.FloatRange(min=0), metavar="S",
              help="Seconds a file must be unchanged before it is read.",
              show_default=str(DEFAULT_SETTLE))  # fmt: skip
@click.option("--rescan", type=click.FloatRange(min=0.5), metavar="S",
              help="Seconds between full rescans (also after an event queue overflow).",
              show_default="60")  # fmt: skip
@click.option("--refresh", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="S",
              help="With --sync: seconds between refreshes of unfinished server statuses"
                   " (0: never).")  # fmt: skip
@metrics_option()
@max_lag_option("/readyz answers 503")
@click.option(
    "--print-unit", is_flag=True, help="Print a systemd user unit for this command and exit."
)
@pass_ctx
def watch(
    c: Ctx, dirs: tuple[str, ...], experiment: str | None, patterns: tuple[str, ...],
    do_sync: bool, endpoint: str | None, auth: str | None, polling: bool, settle: float | None,
    rescan: float | None, refresh: float, metrics: str | None, max_lag: float | None,
    print_unit: bool,
) -> None:  # fmt: skip
    """Record each new result file in directories, as it appears.

    Until SIGINT or SIGTERM (exit 0).  Files written while it was not running
    are recorded at start; --sync uploads new entries as they are recorded.

    \b
    Example:
      logbook watch ~/results -e bell --sync
      logbook watch ~/results -e bell --sync --metrics 127.0.0.1:9464
      logbook watch ~/results -e bell --sync --print-unit > ~/.config/systemd/user/logbook-watch.service
    """  # noqa: E501 - the help shows this example line as is
    from ..engine import BackgroundSyncer, require
    from ..watch import Watcher, WatchOptions, check_dirs

    roots = [os.path.abspath(d) for d in dirs]
    if print_unit:
        given: dict[str, Any] = {
            "--experiment": experiment, "--endpoint": endpoint, "--auth": auth,
            "--settle": settle, "--rescan": rescan, "--refresh": refresh,
            "--metrics": metrics, "--max-lag": max_lag,
        }  # fmt: skip
        args = ["watch", *roots, *flags(given)]
        args += [a for p in patterns for a in ("--pattern", p)]
        args += ["--sync"] * do_sync + ["--polling"] * polling
        warn_missing_dirs(roots)
        click.echo(unit(c.db_option, args))
        return
    c.setup_logging(service=True)
    check_dirs(roots)
    cfg = c.config(endpoint=endpoint, auth=auth)
    if metrics:
        host_port(metrics, "--metrics")  # a bad value is a usage error before anything starts
    syncer = None
    if do_sync:
        require(cfg)
        syncer = BackgroundSyncer(cfg, refresh_every=refresh)
    options = WatchOptions(
        dirs=roots, experiment_id=experiment or cfg.experiment, patterns=patterns,
        polling=polling, rescan=rescan, max_bytes=cfg.max_file_bytes,
        settle=settle if settle is not None else cfg.settle,
    )  # fmt: skip
    log = logging.getLogger("logbook.watch")
    if not polling:
        warn_network_dirs(roots, log)
    progress = Progress()
    watcher = Watcher(cfg, options, syncer=syncer, progress=progress)
    _run_watcher(c, watcher, daemon_monitor(cfg, "watch", metrics, max_lag), log)


def _run_watcher(c: Ctx, watcher: Watcher, monitor: Monitor | None, log: logging.Logger) -> None:
    """Until SIGINT/SIGTERM; with a monitor: systemd's READY=1, watchdog and STOPPING=1, and
    ``--metrics``."""
    if monitor is not None:
        monitor.start_thread()
        say_metrics(monitor)
        watcher.heartbeat, watcher.on_watching = monitor.heartbeat.beat, monitor.ready

    def stop(signum: int, frame: Any) -> None:
        if monitor is not None and signum == signal.SIGTERM:
            monitor.stopping()
        watcher.request_stop()

    old = [(s, signal.signal(s, stop)) for s in (signal.SIGINT, signal.SIGTERM)]
    syncer = watcher.syncer
    try:
        with c.progress(watcher.progress or Progress(), "files"):
            stats = watcher.run()
    finally:
        for s, handler in old:
            signal.signal(s, handler)
        if syncer is not None and not syncer.stop():
            log.warning("a sync run was still in flight; `logbook sync` finishes it")
        if monitor is not None:
            monitor.stop_thread()
    log.info("stopped: %s", stats.summary())
