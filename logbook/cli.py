"""The ``logbook`` command: a thin click layer over the library.

This is the only module that prints or exits.  Every library error
(``logbook.errors``) becomes one line on stderr with the exit code the
contract gives; logging becomes timestamped lines (or JSON lines with
``--log-format json``); long work shows a live line on a terminal and a
stats line every ``--stats`` seconds otherwise.  Library modules are
imported inside the commands so that ``logbook --help`` is fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .config import DEFAULT_SETTLE, home_dir
from .vocab import STATES

if TYPE_CHECKING:
    from .config import Config
    from .progress import Progress
    from .store import Entry, Store

F = TypeVar("F", bound=Callable[..., Any])
AUTH_HELP = "How the key is sent: query (the API reference) or header (as the Haiqu SDK does)."
AUTH_DEFAULT = "query, or auth in config.toml"


class Terminated(BaseException):
    """SIGTERM arrived: unwind (cleaning up scratch files), then exit 143."""


class LogbookClickError(click.ClickException):
    """One line on stderr with the library's exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"logbook: error: {self.format_message()}", err=True)


def _secrets() -> list[str]:
    """What to redact from any line: the key (environment or config file) and proxy passwords."""
    from .redact import url_secrets

    found = [v for k, v in os.environ.items() if k.lower().endswith("_proxy")]
    out = [s for url in found for s in url_secrets(url)]
    key = os.environ.get("HAIQU_API_KEY")
    if key:
        out += [key, key.strip()]
    try:
        from .config import load_config

        cfg = load_config()
        out += [cfg.api_key or "", *url_secrets(cfg.proxy)]
    except Exception:  # noqa: BLE001 - a broken config has no secret to hide
        pass
    return [s for s in out if s]


def _redact(text: str) -> str:
    from .redact import redact

    return redact(text, *_secrets())


def handle_errors(fn: F) -> F:
    """Turn library errors (and anything unexpected) into one clean line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import Interrupted, LogbookError

        try:
            return fn(*args, **kwargs)
        except Interrupted as err:
            raise LogbookClickError(_redact(str(err)), err.exit_code) from None
        except LogbookError as err:
            raise LogbookClickError(_redact(str(err)), err.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise LogbookClickError("interrupted", 130) from None
        except Terminated:
            raise LogbookClickError("terminated", 143) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise SystemExit(0) from None
        except RecursionError:
            raise LogbookClickError("the input is nested too deeply", 2) from None
        except Exception as err:  # never a traceback for the user; -v logs it
            logging.getLogger("logbook").debug("unexpected error", exc_info=True)
            raise LogbookClickError(_redact(f"unexpected {type(err).__name__}: {err}"), 1) from None

    return wrapper  # type: ignore[return-value]


# --- logging -----------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Formatter(logging.Formatter):
    """Timestamped text (``2026-11-29T12:00:00.000Z logbook: ...``) or one JSON object a line."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        message = _redact(record.getMessage())
        if record.exc_info and logging.getLogger("logbook").isEnabledFor(logging.DEBUG):
            message += "\n" + _redact(self.formatException(record.exc_info))
        if self.json:
            return json.dumps(
                {"time": _stamp(), "level": record.levelname.lower(), "logger": record.name,
                 "message": message},
                ensure_ascii=False,
            )  # fmt: skip
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{_stamp()} logbook: {level}{message}"


def _setup_logging(verbose: int, quiet: bool, fmt: str, service: bool = False) -> None:
    """Warnings by default; a service (watch, relay) also says what it does, unless -q."""
    root = logging.getLogger("logbook")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root.addHandler(handler)
    root.propagate = False
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1 or (service and not quiet):
        level = logging.INFO
    else:
        level = logging.ERROR if quiet else logging.WARNING
    root.setLevel(level)
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
    return line


@contextmanager
def show_progress(
    c: Ctx, progress: Progress, unit: str, *, as_json: bool = False
) -> Iterator[None]:
    """A live bar on a terminal (tqdm), else a stats line every ``--stats`` seconds;
    ``-q`` hides both.
    """
    stop = threading.Event()
    thread: threading.Thread | None = None
    if not c.quiet and not as_json:
        if sys.stderr.isatty():
            thread = threading.Thread(target=_bar, args=(progress, unit, stop), daemon=True)
        elif c.stats > 0:
            thread = threading.Thread(target=_stats, args=(progress, c.stats, stop), daemon=True)
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
            if progress.retries or progress.throttled:
                bar.set_postfix_str(f"retries {progress.retries}, throttled {progress.throttled}",
                                    refresh=False)  # fmt: skip
            bar.refresh()
        if stopping:
            if bar is not None:
                bar.close()
            return


def _stats(progress: Progress, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        if progress.phase not in ("done", "starting") and (progress.total or progress.done):
            click.echo(f"{_stamp()} logbook: {stats_line(progress)}", err=True)


# --- the command group -------------------------------------------------------------------


class Ctx:
    """What the group's options give every command."""

    def __init__(
        self, db: str | None, verbose: int, quiet: bool, stats: float, log_format: str
    ) -> None:
        self.db_option = db
        self.verbose = verbose
        self.quiet = quiet
        self.stats = stats
        self.log_format = log_format
        self._configs: dict[tuple[tuple[str, Any], ...], Config] = {}

    def config(self, **overrides: Any) -> Config:
        """The configuration for this command (read once; the options given win)."""
        from .config import load_config

        key = tuple(sorted(overrides.items()))
        if key not in self._configs:
            cfg = load_config(db=self.db_option, **overrides)
            for note in cfg.notes:
                logging.getLogger("logbook").info(note)
            self._configs[key] = cfg
        return self._configs[key]

    def open(self, *, readonly: bool = False) -> Store | None:
        """The store; ``None`` when it does not exist and only reading was asked for."""
        from .store import Store

        cfg = self.config()
        if readonly:
            return Store(cfg.db, readonly=True) if cfg.db.exists() else None
        store = Store(cfg.db)
        from .fsinfo import network_filesystem

        fstype = network_filesystem(cfg.db)
        if fstype:
            logging.getLogger("logbook").warning(
                "the store %s is on a network filesystem (%s); SQLite locking is unreliable"
                " there: set LOGBOOK_HOME or --db to a local disk", cfg.db, fstype,
            )  # fmt: skip
        return store


pass_ctx = click.make_pass_decorator(Ctx)


def _one_line(err: click.UsageError) -> LogbookClickError:
    """A usage error as one line (click's own display takes three), exit 2."""
    hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
    return LogbookClickError(_redact(err.format_message()) + hint, 2)


class LogbookGroup(click.Group):
    """Usage errors print one line, like every other error."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:  # fmt: skip
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


class EntryId(click.ParamType):
    """An entry id: ASCII digits that fit SQLite's integers (not ``²``, not 10**20)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value)
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            self.fail(f"not an entry id: {text[:40]!r} (see `logbook list`)", param, ctx)
        return int(text)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


def _printable(text: str) -> str:
    """Text fit for a terminal: control characters (escape sequences, line breaks) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _echo(text: str) -> None:
    """A line of data on stdout, printable whatever bytes a name holds."""
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


LOG_FORMAT = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default=None,
    help="Log lines as timestamped text or one JSON object a line (for log shippers).",
)  # fmt: skip


@click.group(cls=LogbookGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", metavar="PATH", help="Store file (default: $LOGBOOK_DB or $LOGBOOK_HOME/logbook.db)."
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr: no progress, no notes.")
@click.option(
    "--stats", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="S",
    help="When stderr is not a terminal: a progress line every S seconds (0: off).",
)  # fmt: skip
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="Log lines as timestamped text or one JSON object a line (for log shippers).",
)  # fmt: skip
@click.version_option(package_name="haiqu-logbook")
@click.pass_context
def cli(
    ctx: click.Context, db: str | None, verbose: int, quiet: bool, stats: float, log_format: str
) -> None:
    """logbook: a local-first job logbook with sync for quantum jobs.

    Every job is written to a local SQLite store first; `logbook sync` sends
    what is not yet synced to the Haiqu Jobs API when the network is there.

    \b
    Quick start:
      logbook record -e bell --results '{"00": 510, "11": 514}' --shots '[1024]'
      export HAIQU_API_KEY=...
      logbook sync
    """
    _setup_logging(verbose, quiet, log_format)
    ctx.obj = Ctx(db, verbose, quiet, stats, log_format)


# --- record -------------------------------------------------------------------------------


def _parse_metric(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--metric")
    from .vocab import reject_constant

    try:
        return key, json.loads(value, parse_constant=reject_constant)
    except (ValueError, RecursionError):  # not JSON (or NaN/Infinity): keep the text
        return key, value


def _read_results_file(path: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of a file (``/dev/zero`` is endless), as UTF-8 text."""
    from .errors import InvalidJob

    try:
        with click.open_file(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InvalidJob(f"cannot read --results-file {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise InvalidJob(
            f"--results-file {path} is over {max_bytes} bytes (max_file_bytes in config.toml)"
        )
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise InvalidJob(f"--results-file {path} is not UTF-8 text") from None


@cli.command()
@click.option("--experiment", "-e", "experiment", required=True, help="Experiment id.")
@click.option("--name", help="Job name (at most 200 characters).")
@click.option("--device", help="Device id (at most 200 characters).")
@click.option("--shots", help='Shots as JSON text, e.g. "[1024]".')
@click.option("--status", default="Done", show_default=True, help="Job status (the API's enum).")
@click.option("--job-type", default="User local job", show_default=True, help="Job type.")
@click.option("--results", help="Results as JSON text (e.g. counts).")
@click.option(
    "--results-file", type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the results JSON from a file (- for stdin).",
)  # fmt: skip
@click.option(
    "--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="A metric (repeatable)."
)
@click.option("--hash", "hash_", help="Job hash (default: computed from the content).")
@click.option("--circuit-hash", help="Circuit hash.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
@handle_errors
def record(
    c: Ctx, experiment: str, name: str | None, device: str | None, shots: str | None,
    status: str, job_type: str, results: str | None, results_file: str | None,
    metrics: tuple[str, ...], hash_: str | None, circuit_hash: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Record one job, offline; prints its id.

    Recording the same (experiment, hash) again returns the existing entry.

    \b
    Example:
      logbook record -e bell --name "bell 1" --device ibm_kyiv --shots '[1024]' \\
          --results '{"00": 510, "11": 514}' --metric fidelity=0.98
    """
    from .jobs import prepare

    if results is not None and results_file is not None:
        raise click.UsageError("give --results or --results-file, not both")
    if results_file is not None:
        results = _read_results_file(results_file, c.config().max_file_bytes)
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


# --- import -------------------------------------------------------------------------------


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option(
    "--max-file-bytes", type=click.IntRange(min=1), help="Largest file to read (default 64 MiB)."
)
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
    """Record result files and directories (job JSON, Qiskit results, JSON Lines).

    Directories are read recursively; each file is reported once as recorded,
    already known or invalid (with its reason).  Exit 1 if any was invalid.

    \b
    Example:
      logbook import results/ --experiment bell
    """
    from .importer import check_paths, import_paths
    from .progress import Progress

    cfg = c.config()
    check_paths(paths)  # before the store is opened: a typo creates nothing
    store = c.open()
    assert store is not None
    progress = Progress()
    progress.begin("importing", 0)

    def advance(done: int, total: int, recorded: int) -> None:
        progress.total, progress.done = total, done

    with show_progress(c, progress, "files", as_json=as_json):
        report = import_paths(
            store, paths, experiment_id=experiment or cfg.experiment,
            max_bytes=max_file_bytes or cfg.max_file_bytes, progress=advance,
        )  # fmt: skip
    if as_json:
        _print_json(report.to_dict())
    else:
        for path, reason in report.invalid:
            click.echo(_redact(f"logbook: invalid: {path}: {reason}"), err=True)
        click.echo(
            f"{report.recorded} recorded, {report.known} already known,"
            f" {len(report.invalid)} invalid ({report.files} files)"
        )
    sys.exit(1 if report.invalid else 0)


# --- list / show / status / export / path --------------------------------------------------


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
    heads = ("id", "state", "experiment", "name", "device", "server status", "server id", "created")
    rows = [
        [_printable(str(getattr(e, k) if getattr(e, k) is not None else "")) for k in cols]
        for e in entries
    ]
    if not rows:
        click.echo("no entries (record one with `logbook record`, or `logbook import DIR`)")
        return
    widths = [min(36, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(heads)]
    _echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    for r in rows:
        _echo("  ".join(v[:w].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@cli.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="At most N entries (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of entries.")
@pass_ctx
@handle_errors
def list_(c: Ctx, state: str | None, experiment: str | None, limit: int, as_json: bool) -> None:
    """List entries, newest first.

    \b
    Example:
      logbook list --state pending --limit 0
    """
    store = c.open(readonly=True)
    entries = (
        []
        if store is None
        else list(store.entries(state=state, experiment_id=experiment, limit=limit or None))
    )
    if as_json:
        _print_json([e.to_dict() for e in entries])
    else:
        _table(entries)


@cli.command()
@click.argument("entry_id", metavar="ID", type=EntryId())
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
@handle_errors
def show(c: Ctx, entry_id: int, as_json: bool) -> None:
    """Show one entry.

    \b
    Example:
      logbook show 42 --json
    """
    from .errors import NotFound

    store = c.open(readonly=True)
    if store is None:
        raise NotFound(f"no entry with id {entry_id} (the store is empty)")
    entry = store.get(entry_id)
    if as_json:
        _print_json(entry.to_dict())
        return
    for key, value in entry.to_dict().items():
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        _echo(f"{key + ':':16}{'' if value is None else _printable(str(value))}")
    if entry.upstream_id:  # synced through a relay: the job's id beyond it
        _echo(f"{'upstream_id:':16}{entry.upstream_id}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_ctx
@handle_errors
def status(c: Ctx, as_json: bool) -> None:
    """How many entries are in each state, and when the last sync ran.

    \b
    Example:
      logbook status --json
    """
    from .store import Status

    cfg = c.config()
    store = c.open(readonly=True)
    data = (Status(db=str(cfg.db)) if store is None else store.status()).to_dict()
    if as_json:
        _print_json(data)
        return
    counts = data["counts"]
    _echo(f"store:          {data['db']}")
    click.echo("entries:        " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    click.echo(f"oldest pending: {data['oldest_pending'] or '-'}")
    click.echo(f"last sync:      {data['last_sync'] or 'never'}")
    if data.get("invalid_files"):
        click.echo(f"invalid files:  {data['invalid_files']} (`logbook doctor` lists them)")


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@pass_ctx
@handle_errors
def export(c: Ctx, fmt: str, state: str | None, experiment: str | None) -> None:
    """Write entries to stdout (oldest first), streaming.

    \b
    Example:
      logbook export --format csv > jobs.csv
    """
    import csv

    from .store.schema import ENTRY_KEYS

    store = c.open(readonly=True)
    entries: Iterator[Entry] = (
        iter(()) if store is None
        else store.entries(state=state, experiment_id=experiment, newest_first=False)
    )  # fmt: skip
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
@pass_ctx
@handle_errors
def path(c: Ctx) -> None:
    """Print the store's path (it opens in datasette and sqlite-utils).

    \b
    Example:
      datasette "$(logbook path)"
    """
    _echo(str(c.config().db))


@cli.group("config", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.pass_context
@handle_errors
def config_(ctx: click.Context, as_json: bool) -> None:
    """Show every effective setting and where it came from (the key masked).

    \b
    Example:
      logbook config
      logbook config path
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = ctx.find_object(Ctx).config()  # type: ignore[union-attr]
    rows = cfg.shown()
    if as_json:
        _print_json({name: {"value": value, "source": source} for name, value, source in rows})
        return
    from .config import config_path

    click.echo(f"config file: {config_path()}{'' if cfg.config_file else ' (none yet)'}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        _echo(f"{name:<{width}}  {value}  ({source})")


@config_.command("path")
@handle_errors
def config_path_cmd() -> None:
    """Print the config file's path (whether it exists or not).

    \b
    Example:
      $EDITOR "$(logbook config path)"
    """
    from .config import config_path

    _echo(str(config_path()))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script.

    \b
    Example:
      logbook completion bash > ~/.local/share/bash-completion/completions/logbook
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "logbook", "_LOGBOOK_COMPLETE").source())


@cli.command()
@click.argument("ids", nargs=-1, metavar="[ID]...", type=EntryId())
@click.option("--all", "all_", is_flag=True, help="Every rejected entry.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
@handle_errors
def retry(c: Ctx, ids: tuple[int, ...], all_: bool, as_json: bool) -> None:
    """Put rejected entries back to pending, so the next sync sends them again.

    \b
    Example:
      logbook list --state rejected
      logbook retry --all
    """
    if not ids and not all_:
        raise click.UsageError("give entry ids or --all")
    store = c.open() if c.config().db.exists() else None
    n = 0 if store is None else store.retry(ids, all_rejected=all_)
    if as_json:
        _print_json({"retried": n})
    else:
        click.echo(f"{n} entries back to pending")


# --- sync ---------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--endpoint", metavar="URL", help="API base URL (default: $HAIQU_EDGE_URI, else the SDK's)."
)
@click.option(
    "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP, show_default=AUTH_DEFAULT
)
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
@pass_ctx
@handle_errors
def sync(
    c: Ctx, endpoint: str | None, auth: str | None, concurrency: int | None, limit: int | None,
    dry_run: bool, no_refresh: bool, max_time: float | None, as_json: bool,
) -> None:  # fmt: skip
    """Send the entries that are due to the Haiqu Jobs API, exactly once.

    Then refresh the status of synced entries the server has not finished.
    Exit 0: nothing left to send; 1: some pending or rejected; 2: bad
    configuration or a redirect; 3: the key was refused; 4: unreachable.
    Ctrl-C stops it cleanly (exit 130; SIGTERM: 143).

    \b
    Example:
      export HAIQU_API_KEY=...
      logbook sync --concurrency 32
    """
    from .engine import run_sync
    from .errors import Interrupted
    from .progress import Progress

    cfg = c.config(endpoint=endpoint, auth=auth)
    if dry_run:
        from .engine import dry_run as plan

        due = plan(cfg, limit=limit)
        if as_json:
            _print_json({"would_send": len(due), "entries": [e.to_dict() for e in due]})
        else:
            for e in due:
                _echo(f"would send {e.id}  {e.experiment_id}  {e.hash[:16]}  {e.name}")
            click.echo(f"{len(due)} entries would be sent to {cfg.endpoint}")
        return
    progress = Progress()
    try:
        with show_progress(c, progress, "jobs", as_json=as_json):
            report = run_sync(
                cfg, concurrency=concurrency, limit=limit, refresh=not no_refresh,
                max_time=max_time, progress=progress, handle_signals=True,
            )  # fmt: skip
    except Interrupted as err:
        if as_json and err.report is not None:
            _print_json(err.report.to_dict())  # type: ignore[attr-defined]
        raise
    if as_json:
        _print_json(report.to_dict())
    elif not c.quiet:
        click.echo(_redact(report.summary()))
    sys.exit(report.exit_code)


# --- watch --------------------------------------------------------------------------------


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
              help="File name glob (repeatable).", show_default="*.json and *.jsonl")  # fmt: skip
@click.option("--sync", "do_sync", is_flag=True, help="Upload new entries as they are recorded.")
@click.option("--endpoint", metavar="URL", help="API base URL for --sync.")
@click.option(
    "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP, show_default=AUTH_DEFAULT
)
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
@LOG_FORMAT
@click.option(
    "--print-unit", is_flag=True, help="Print a systemd user unit for this command and exit."
)
@pass_ctx
@handle_errors
def watch(
    c: Ctx, dirs: tuple[str, ...], experiment: str | None, patterns: tuple[str, ...],
    do_sync: bool, endpoint: str | None, auth: str | None, polling: bool, settle: float | None,
    rescan: float | None, refresh: float, log_format: str | None, print_unit: bool,
) -> None:  # fmt: skip
    """Watch directories and record each new result file, until SIGINT/SIGTERM (exit 0).

    Files written while it was not running are recorded at start; with
    --sync, new entries are uploaded as they are recorded.

    \b
    Example:
      logbook watch ~/results -e bell --sync
      logbook watch ~/results -e bell --sync --print-unit > ~/.config/systemd/user/logbook-watch.service
    """  # noqa: E501 - the help shows this example line as is
    from .engine import BackgroundSyncer, require
    from .watch import Watcher, WatchOptions, check_dirs

    roots = [os.path.abspath(d) for d in dirs]
    if print_unit:
        flags: dict[str, Any] = {
            "--experiment": experiment, "--endpoint": endpoint, "--auth": auth,
            "--settle": settle, "--rescan": rescan, "--refresh": refresh,
        }  # fmt: skip
        args = ["watch", *roots, *_flags(flags)]
        args += [a for p in patterns for a in ("--pattern", p)]
        args += ["--sync"] * do_sync + ["--polling"] * polling
        click.echo(_unit(c, args))
        return
    _setup_logging(c.verbose, c.quiet, log_format or c.log_format, service=True)
    check_dirs(roots)
    cfg = c.config(endpoint=endpoint, auth=auth)
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
        _warn_network_dirs(roots, log)
    from .progress import Progress

    progress = Progress()
    watcher = Watcher(cfg, options, syncer=syncer, progress=progress)

    stop_on = (signal.SIGINT, signal.SIGTERM)
    old = [(s, signal.signal(s, lambda *_: watcher.request_stop())) for s in stop_on]
    try:
        with show_progress(c, progress, "files"):
            stats = watcher.run()
    finally:
        for s, handler in old:
            signal.signal(s, handler)
        if syncer is not None and not syncer.stop():
            log.warning("a sync run was still in flight; `logbook sync` finishes it")
    log.info("stopped: %s", stats.summary())


def _warn_network_dirs(roots: list[str], log: logging.Logger) -> None:
    """inotify does not see other hosts' writes on NFS/SMB: say so, and what to use."""
    from .fsinfo import network_filesystem

    for root in roots:
        fstype = network_filesystem(root)
        if fstype:
            log.warning(
                "%s is on a network filesystem (%s): inotify does not see files written by"
                " other hosts there; use --polling", root, fstype,
            )  # fmt: skip


def _flags(options: dict[str, Any]) -> list[str]:
    return [a for flag, value in options.items() if value is not None for a in (flag, str(value))]


def _unit(c: Ctx, args: list[str], kind: str = "watch") -> str:
    """The packaged systemd unit of ``kind`` (watch, relay), filled in for this command line."""
    import shlex
    import shutil
    from importlib.resources import files

    if c.db_option:
        args = ["--db", os.path.abspath(c.db_option), *args]

    exe = shutil.which("logbook") or f"{sys.executable} -m logbook"
    template = (files("logbook") / f"data/logbook-{kind}.service").read_text(encoding="utf-8")
    # systemd expands % specifiers and $VARIABLES in ExecStart: double them to mean themselves.
    line = " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$") for a in args)
    # The service uses the home (store, config.toml, relay keys) of the shell that printed it.
    home = str(home_dir().absolute()).replace("\\", "\\\\").replace('"', '\\"')
    return (
        template.replace("@EXEC@", exe.replace("%", "%%"))
        .replace("@ARGS@", line)
        .replace("@HOME@", home.replace("%", "%%"))
    )


# --- relay --------------------------------------------------------------------------------


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


@cli.group(invoke_without_command=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where lab machines reach the relay (port 0: any free one).",
)
@click.option("--upstream", metavar="URL", help="The Jobs API the relay forwards to.")
@click.option(
    "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP, show_default=AUTH_DEFAULT
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), help="Serve https with this PEM certificate."
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The certificate's PEM key.")
@click.option("--refresh", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="S",
              help="Seconds between refreshes of unfinished upstream statuses"
                   " (0: never).")  # fmt: skip
@click.option("--max-in-flight", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Requests in flight at most; each client key gets an equal share.")  # fmt: skip
@LOG_FORMAT
@click.option(
    "--print-unit", is_flag=True, help="Print a systemd user unit for this command and exit."
)
@click.pass_context
@handle_errors
def relay(
    ctx: click.Context, listen: str | None, upstream: str | None, auth: str | None,
    tls_cert: str | None, tls_key: str | None, refresh: float, max_in_flight: int,
    log_format: str | None, print_unit: bool,
) -> None:  # fmt: skip
    """Serve the Jobs API on a lab network and forward every job upstream, exactly once.

    Lab machines set HAIQU_EDGE_URI to the relay and HAIQU_API_KEY to a relay
    key; only the relay holds the upstream HAIQU_API_KEY.  Jobs are committed
    to the relay's store before it answers; a repeated POST returns the job it
    holds.  SIGTERM drains it and exits 0.

    \b
    Example:
      logbook relay key add lab-pc-3          # prints the key, once
      HAIQU_API_KEY=... logbook relay --listen 0.0.0.0:8700 --upstream https://api.haiqu.ai
    """
    if ctx.invoked_subcommand is not None:
        return
    c = ctx.find_object(Ctx)
    assert c is not None
    if not listen or not upstream:
        raise click.UsageError("give --listen HOST:PORT and --upstream URL (or a subcommand)")
    host, port = _listen(listen)
    if print_unit:
        args = ["relay", "--listen", listen, "--upstream", upstream, "--refresh", str(refresh)]
        args += ["--max-in-flight", str(max_in_flight)] + (["--auth", auth] if auth else [])
        if tls_cert and tls_key:
            args += ["--tls-cert", os.path.abspath(tls_cert), "--tls-key", os.path.abspath(tls_key)]
        click.echo(_unit(c, args, "relay"))
        return
    from .relay import Relay, RelayOptions
    from .server import tls_context

    _setup_logging(c.verbose, c.quiet, log_format or c.log_format, service=True)
    try:
        tls = tls_context(tls_cert, tls_key)
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot use the TLS certificate and key: {err}") from None
    cfg = c.config(auth=auth)
    options = RelayOptions(
        host, port, upstream, tls=tls, refresh_every=refresh, max_in_flight=max_in_flight
    )
    server = Relay(cfg, options)
    import asyncio

    try:
        asyncio.run(server.run(ready=lambda url: click.echo(f"relay ready on {url}")))
    except OSError as err:
        raise click.ClickException(f"cannot listen on {listen}: {err.strerror or err}") from None
    finally:
        server.close()
    logging.getLogger("logbook.relay").info("relay stopped")


@relay.group("key")
def relay_key() -> None:
    """Relay keys: what lab machines send as HAIQU_API_KEY (stored hashed).

    \b
    Example:
      logbook relay key add lab-pc-3
      logbook relay key list
    """


@relay_key.command("add")
@click.argument("name")
@pass_ctx
@handle_errors
def relay_key_add(c: Ctx, name: str) -> None:
    """Make a key for NAME and print it (it is never shown again).

    \b
    Example:
      logbook relay key add lab-pc-3      # give it to that machine as HAIQU_API_KEY
    """
    store = c.open()
    assert store is not None
    click.echo(store.keys.add(name))


@relay_key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys' names as JSON.")
@pass_ctx
@handle_errors
def relay_key_list(c: Ctx, as_json: bool) -> None:
    """List the relay keys' names (never the keys).

    \b
    Example:
      logbook relay key list --json
    """
    store = c.open(readonly=True)
    keys = [] if store is None else store.keys.described()
    if as_json:
        _print_json(keys)
        return
    for k in keys:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        _echo(f"{k['name']}  created {k['created_at']}  {state}")


@relay_key.command("revoke")
@click.argument("name")
@pass_ctx
@handle_errors
def relay_key_revoke(c: Ctx, name: str) -> None:
    """Revoke NAME's key: its lab machine gets 401 from then on.

    \b
    Example:
      logbook relay key revoke lab-pc-3
    """
    store = c.open()
    assert store is not None
    store.keys.revoke(name)
    click.echo(f"revoked {name}")


@relay.command("doctor")
@click.option(
    "--upstream", metavar="URL", required=True, help="The Jobs API the relay forwards to."
)
@click.option("--url", metavar="URL", help="Where the relay listens, to check it answers.")
@click.option(
    "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP, show_default=AUTH_DEFAULT
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
@handle_errors
def relay_doctor(c: Ctx, upstream: str, url: str | None, auth: str | None, as_json: bool) -> None:
    """Check a relay: its store and keys, that it listens, that the upstream answers and
    takes the key.

    \b
    Example:
      logbook relay doctor --upstream https://api.haiqu.ai --url http://127.0.0.1:8700
    """
    from .doctor import relay_checks

    _report(relay_checks(c.config(endpoint=upstream, auth=auth), url), as_json)


@relay.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_ctx
@handle_errors
def relay_status_cmd(c: Ctx, as_json: bool) -> None:
    """Backlog, oldest unforwarded job, last upstream contact, and per-client counts.

    \b
    Example:
      logbook relay status --json
    """
    from .relay import relay_status

    data = relay_status(c.config())
    if as_json:
        _print_json(data)
        return
    _echo(f"store:                 {data['db']}")
    click.echo(f"backlog:               {data['backlog']} jobs not yet upstream")
    click.echo(f"oldest unforwarded:    {data['oldest_unforwarded'] or '-'}")
    click.echo(f"last upstream contact: {data['last_upstream_contact'] or 'never'}")
    for client, counts in sorted(data["clients"].items()):
        _echo(f"client {client}: " + ", ".join(f"{counts[s]} {s}" for s in STATES))


# --- doctor -------------------------------------------------------------------------------


@cli.command()
@click.option("--endpoint", metavar="URL", help="API base URL to check.")
@click.option(
    "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP, show_default=AUTH_DEFAULT
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
@handle_errors
def doctor(c: Ctx, endpoint: str | None, auth: str | None, as_json: bool) -> None:
    """Check the store, the configuration, the network and the endpoint; say what to fix.

    Exit 0 when all is well, 1 when something needs you.

    \b
    Example:
      logbook doctor
    """
    from .doctor import run_checks

    _report(run_checks(c.config(endpoint=endpoint, auth=auth)), as_json)


def _report(checks: list[Any], as_json: bool) -> None:
    """Doctor's checks, one a line (or JSON); exit 1 when one needs the user (a warning
    names a fix too: rejected entries, a key file others can read, ...)."""
    if as_json:
        _print_json([ch.to_dict() for ch in checks])
    else:
        for ch in checks:
            _echo(_redact(f"{ch.level.upper():5} {ch.name}: {ch.message}"))
    sys.exit(0 if all(ch.level == "ok" for ch in checks) else 1)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main() -> None:
    """Console-script entry point."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="logbook")
