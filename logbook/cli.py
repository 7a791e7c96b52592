"""The ``logbook`` command: a thin click layer over the library.

Every library error (``logbook.errors``) becomes one line on stderr and the
exit code that DESIGN.md gives; nothing else imports this module.  Library
modules are imported inside the commands so that ``logbook --help`` is fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from .config import Config
    from .store import Entry, Store

F = TypeVar("F", bound=Callable[..., Any])
STATES = ("pending", "sending", "synced", "rejected")


class LogbookClickError(click.ClickException):
    """One line on stderr with the library's exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"logbook: error: {self.format_message()}", err=True)


def _secret() -> str | None:
    """The key to redact from any error line: the environment's or the config file's."""
    key = os.environ.get("HAIQU_API_KEY")
    if key:
        return key
    try:
        from .config import load_config

        return load_config().api_key
    except Exception:
        return None


def handle_errors(fn: F) -> F:
    """Turn library errors (and anything unexpected) into one clean line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import LogbookError
        from .secrets import redact

        try:
            return fn(*args, **kwargs)
        except LogbookError as err:
            raise LogbookClickError(redact(str(err), _secret()), err.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise LogbookClickError("interrupted", 130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise SystemExit(0) from None
        except Exception as err:  # never a traceback for the user; -v logs it
            logging.getLogger("logbook").debug("unexpected error", exc_info=True)
            msg = redact(f"unexpected {type(err).__name__}: {err}", _secret())
            raise LogbookClickError(msg, 1) from None

    return wrapper  # type: ignore[return-value]


class Ctx:
    """What the group's options give every command."""

    def __init__(self, db: str | None, verbose: int, quiet: bool) -> None:
        self.db_option = db
        self.verbose = verbose
        self.quiet = quiet
        self._configs: dict[tuple[tuple[str, Any], ...], Config] = {}

    def config(self, **overrides: Any) -> Config:
        """The configuration for this command (read once; the options given win)."""
        from .config import load_config

        key = tuple(sorted(overrides.items()))
        if key not in self._configs:
            self._configs[key] = load_config(db=self.db_option, **overrides)
        return self._configs[key]

    def open(self, *, create: bool = True) -> Store | None:
        """The store; ``None`` when it does not exist and ``create`` is false."""
        from .store import Store

        cfg = self.config()
        if not create and not cfg.db.exists():
            return None
        store = Store(cfg.db)
        if create:
            from .fsinfo import network_filesystem

            fstype = network_filesystem(cfg.db)
            if fstype and not self.quiet:
                click.echo(
                    f"logbook: warning: the store {cfg.db} is on a network filesystem"
                    f" ({fstype}); SQLite locking is unreliable there: set LOGBOOK_HOME"
                    " or --db to a local disk",
                    err=True,
                )
        return store


pass_ctx = click.make_pass_decorator(Ctx)


def _one_line(err: click.UsageError) -> LogbookClickError:
    """A usage error as one line (click's own display takes three), exit 2."""
    hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
    return LogbookClickError(err.format_message() + hint, 2)


class LogbookGroup(click.Group):
    """The command group: usage errors print one line, like every other error."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `logbook`: the help text, as click prints it
        except click.UsageError as err:
            raise _one_line(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line(err) from None


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None))


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="logbook: %(levelname)s: %(message)s", stream=sys.stderr
    )
    # httpx logs every URL (with the key in the query string) at INFO: keep it quiet.
    for name in ("httpx", "httpcore", "hpack", "watchdog"):
        logging.getLogger(name).setLevel(logging.WARNING)


@click.group(cls=LogbookGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", metavar="PATH", help="Store file (default: $LOGBOOK_DB or $LOGBOOK_HOME/logbook.db)."
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.version_option(package_name="logbook")
@click.pass_context
def cli(ctx: click.Context, db: str | None, verbose: int, quiet: bool) -> None:
    """logbook: a local-first job logbook with sync for quantum jobs.

    Every job is written to a local SQLite store first; `logbook sync` sends
    what is not yet synced to the Haiqu Jobs API when the network is there.
    """
    _setup_logging(verbose)
    ctx.obj = Ctx(db, verbose, quiet)


# --- record -------------------------------------------------------------------


def _parse_metric(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--metric")
    from .vocab import reject_constant

    try:
        return key, json.loads(value, parse_constant=reject_constant)
    except ValueError:  # not JSON (or NaN/Infinity): keep the text
        return key, value


@cli.command()
@click.option("--experiment", "-e", "experiment", required=True, help="Experiment id.")
@click.option("--name", help="Job name (at most 200 characters).")
@click.option("--device", help="Device id (at most 200 characters).")
@click.option("--shots", help='Shots as JSON text, e.g. "[1024]".')
@click.option("--status", default="Done", show_default=True, help="Job status.")
@click.option("--job-type", default="User local job", show_default=True, help="Job type.")
@click.option("--results", help="Results as JSON text (e.g. counts).")
@click.option(
    "--results-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the results JSON from a file (- for stdin).",
)
@click.option(
    "--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="A metric (repeatable)."
)
@click.option("--hash", "hash_", help="Job hash (default: computed from the content).")
@click.option("--circuit-hash", help="Circuit hash.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
@handle_errors
def record(
    c: Ctx,
    experiment: str,
    name: str | None,
    device: str | None,
    shots: str | None,
    status: str,
    job_type: str,
    results: str | None,
    results_file: str | None,
    metrics: tuple[str, ...],
    hash_: str | None,
    circuit_hash: str | None,
    as_json: bool,
) -> None:
    """Record one job; prints its id."""
    from .errors import InvalidJob
    from .jobs import prepare

    if results is not None and results_file is not None:
        raise click.UsageError("give --results or --results-file, not both")
    if results_file is not None:
        try:
            with click.open_file(results_file, "r", encoding="utf-8") as f:
                results = f.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidJob(f"cannot read --results-file {results_file}: {err}") from None
    doc: dict[str, Any] = {"experiment_id": experiment, "status": status, "job_type": job_type}
    for key, value in (
        ("name", name), ("device_id", device), ("shots", shots), ("results", results),
        ("hash", hash_), ("circuit_hash", circuit_hash),
    ):  # fmt: skip
        if value is not None:
            doc[key] = value
    doc["metrics"] = dict(_parse_metric(m) for m in metrics)
    job = prepare(doc)
    store = c.open()
    assert store is not None
    entry, created = store.record(job, source="cli")
    if as_json:
        _print_json(entry.to_dict())
    else:
        click.echo(str(entry.id))
        if not created and not c.quiet:
            click.echo(f"logbook: already recorded as entry {entry.id}", err=True)


# --- import -------------------------------------------------------------------


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option("--max-file-bytes", type=int, help="Largest file to read (default 64 MiB).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
@handle_errors
def import_(
    c: Ctx,
    paths: tuple[str, ...],
    experiment: str | None,
    max_file_bytes: int | None,
    as_json: bool,
) -> None:
    """Record result files and directories (job JSON, Qiskit result JSON, JSON Lines)."""
    from .importer import import_paths

    cfg = c.config()
    store = c.open()
    assert store is not None
    report = import_paths(
        store,
        paths,
        experiment_id=experiment or cfg.experiment,
        max_bytes=max_file_bytes or cfg.max_file_bytes,
    )
    if as_json:
        _print_json(report.to_dict())
    else:
        for path, reason in report.invalid:
            click.echo(f"logbook: invalid: {path}: {reason}", err=True)
        click.echo(
            f"{report.recorded} recorded, {report.known} already known,"
            f" {len(report.invalid)} invalid ({report.files} files)"
        )
    sys.exit(1 if report.invalid else 0)


# --- list / show / status / export ------------------------------------------------


def _table(entries: Iterable[Entry]) -> None:
    cols = (
        "id",
        "state",
        "experiment_id",
        "name",
        "device_id",
        "remote_status",
        "remote_id",
        "created_at",
    )
    rows = [
        [str(getattr(e, k) if getattr(e, k) is not None else "") for k in cols] for e in entries
    ]
    if not rows:
        click.echo("no entries")
        return
    heads = ["id", "state", "experiment", "name", "device", "server status", "server id", "created"]
    widths = [min(36, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(heads)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(v[:w].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@cli.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@click.option("--limit", type=click.IntRange(min=0), help="At most N entries.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of entries.")
@pass_ctx
@handle_errors
def list_(
    c: Ctx, state: str | None, experiment: str | None, limit: int | None, as_json: bool
) -> None:
    """List entries, newest first."""
    store = c.open(create=False)
    entries = (
        [] if store is None else store.list(state=state, experiment_id=experiment, limit=limit)
    )
    if as_json:
        _print_json([e.to_dict() for e in entries])
    else:
        _table(entries)


@cli.command()
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
@handle_errors
def show(c: Ctx, entry_id: str, as_json: bool) -> None:
    """Show one entry."""
    from .errors import NotFound

    if not entry_id.isdigit():
        raise click.BadParameter(f"not an entry id: {entry_id!r}", param_hint="ID")
    store = c.open(create=False)
    if store is None:
        raise NotFound(f"no entry with id {entry_id} (the store is empty)")
    entry = store.get(entry_id)
    if as_json:
        _print_json(entry.to_dict())
        return
    for key, value in entry.to_dict().items():
        if isinstance(value, dict):
            value = json.dumps(value)
        click.echo(f"{key + ':':16}{'' if value is None else value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_ctx
@handle_errors
def status(c: Ctx, as_json: bool) -> None:
    """How many entries are in each state, and when the last sync ran."""
    cfg = c.config()
    store = c.open(create=False)
    if store is None:
        data: dict[str, Any] = {
            "db": str(cfg.db),
            "counts": dict.fromkeys(STATES, 0),
            "oldest_pending": None,
            "last_sync": None,
            "invalid_files": 0,
        }
    else:
        data = store.status()
    if as_json:
        _print_json(data)
        return
    counts = data["counts"]
    click.echo(f"store:          {data['db']}")
    click.echo("entries:        " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    click.echo(f"oldest pending: {data['oldest_pending'] or '-'}")
    click.echo(f"last sync:      {data['last_sync'] or 'never'}")
    if data.get("invalid_files"):
        click.echo(f"invalid files:  {data['invalid_files']} (see `logbook export`/watch log)")


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@pass_ctx
@handle_errors
def export(c: Ctx, fmt: str, state: str | None, experiment: str | None) -> None:
    """Write entries to stdout (oldest first), streaming."""
    import csv

    from .store import ENTRY_KEYS

    store = c.open(create=False)
    entries: Iterator[Entry] = (
        iter(())
        if store is None
        else store.iter_entries(state=state, experiment_id=experiment, newest_first=False)
    )
    out = sys.stdout
    if fmt == "jsonl":
        for e in entries:
            out.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(ENTRY_KEYS), lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = e.to_dict()
        row["metrics"] = json.dumps(row["metrics"], ensure_ascii=False)
        writer.writerow(row)


@cli.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every rejected entry.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
@handle_errors
def retry(c: Ctx, ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Put rejected entries back to pending, so the next sync sends them again."""
    if not ids and not all_:
        raise click.UsageError("give entry ids or --all")
    for i in ids:
        if not i.isdigit():
            raise click.BadParameter(f"not an entry id: {i!r}", param_hint="ID")
    store = c.open(create=False)
    n = 0 if store is None else store.retry(ids, all_rejected=all_)
    if as_json:
        _print_json({"retried": n})
    else:
        click.echo(f"{n} entries back to pending")


# --- sync -----------------------------------------------------------------------


@cli.command()
@click.option("--endpoint", metavar="URL", help="API base URL (default: $HAIQU_EDGE_URI).")
@click.option("--auth", type=click.Choice(["query", "header"]), help="How the key is sent.")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Requests in flight (default 64).")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N entries.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option("--no-refresh", is_flag=True, help="Skip refreshing unfinished remote statuses.")
@click.option("--max-time", type=click.FloatRange(min=0.1), help="Stop the run after S seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
@handle_errors
def sync(
    c: Ctx,
    endpoint: str | None,
    auth: str | None,
    concurrency: int | None,
    limit: int | None,
    dry_run: bool,
    no_refresh: bool,
    max_time: float | None,
    as_json: bool,
) -> None:
    """Send the entries that are due to the Haiqu Jobs API."""
    from .sync import run_sync

    cfg = c.config(endpoint=endpoint, auth=auth)
    if dry_run:
        from .sync import dry_run as plan

        due = plan(cfg, limit=limit)
        if as_json:
            _print_json({"would_send": len(due), "entries": [e.to_dict() for e in due]})
        else:
            for e in due:
                click.echo(f"would send {e.id}  {e.experiment_id}  {e.hash[:16]}  {e.name}")
            click.echo(f"{len(due)} entries would be sent to {cfg.endpoint or '(no endpoint set)'}")
        return
    show_progress = not as_json and not c.quiet and sys.stderr.isatty()
    report = run_sync(
        cfg,
        concurrency=concurrency,
        limit=limit,
        refresh=not no_refresh,
        max_time=max_time,
        progress=_progress_printer() if show_progress else None,
    )
    if as_json:
        _print_json(report.to_dict())
    elif not c.quiet:
        click.echo(report.summary())
    sys.exit(report.exit_code)


def _progress_printer() -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\rsyncing [{bar}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


# --- watch ----------------------------------------------------------------------


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option(
    "--pattern", "patterns", multiple=True, metavar="GLOB", help="File name glob (repeatable)."
)
@click.option("--sync", "do_sync", is_flag=True, help="Upload new entries as they are recorded.")
@click.option("--endpoint", metavar="URL", help="API base URL for --sync.")
@click.option("--auth", type=click.Choice(["query", "header"]), help="How the key is sent.")
@click.option("--polling", is_flag=True, help="Poll instead of inotify (for NFS/SMB).")
@click.option(
    "--settle", type=click.FloatRange(min=0), help="Seconds a file must be unchanged (0.2)."
)
@click.option(
    "--rescan",
    type=click.FloatRange(min=0.5),
    help="Seconds between full rescans (60; also after an event queue overflow).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="With --sync: seconds between refreshes of unfinished server statuses (0: never).",
)
@pass_ctx
@handle_errors
def watch(
    c: Ctx,
    dirs: tuple[str, ...],
    experiment: str | None,
    patterns: tuple[str, ...],
    do_sync: bool,
    endpoint: str | None,
    auth: str | None,
    polling: bool,
    settle: float | None,
    rescan: float | None,
    refresh: float,
) -> None:
    """Watch directories and record each new result file (until SIGINT/SIGTERM)."""
    from .watch import WatchOptions, run_watch

    cfg = c.config(endpoint=endpoint, auth=auth)
    options = WatchOptions(
        dirs=[os.path.abspath(d) for d in dirs],
        experiment_id=experiment or cfg.experiment,
        patterns=tuple(patterns),
        sync=do_sync,
        polling=polling,
        settle=settle if settle is not None else (cfg.settle if cfg.settle is not None else 0.2),
        rescan=rescan,
        max_bytes=cfg.max_file_bytes,
        quiet=c.quiet,
        refresh=refresh,
    )
    code = run_watch(cfg, options, echo=lambda line: click.echo(line, err=True))
    sys.exit(code)


# --- doctor ---------------------------------------------------------------------


@cli.command()
@click.option("--endpoint", metavar="URL", help="API base URL to check.")
@click.option("--auth", type=click.Choice(["query", "header"]), help="How the key is sent.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
@handle_errors
def doctor(c: Ctx, endpoint: str | None, auth: str | None, as_json: bool) -> None:
    """Check the store, the configuration and the endpoint."""
    from .doctor import run_checks

    cfg = c.config(endpoint=endpoint, auth=auth)
    checks = run_checks(cfg)
    if as_json:
        _print_json([ch.to_dict() for ch in checks])
    else:
        for ch in checks:
            click.echo(f"{ch.level.upper():5} {ch.name}: {ch.message}")
    sys.exit(1 if any(ch.level == "fail" for ch in checks) else 0)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="logbook")
