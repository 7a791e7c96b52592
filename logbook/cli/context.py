"""The command line's frame: the global options, what they give every command, and the
classes that map every error to one line, once.

Global options (``--db``, ``-v``, ``-q``, ``--stats``, ``--log-format``) are
accepted before or after the command, as git and rclone users type them:
``logbook sync -v --stats 1`` is ``logbook -v --stats 1 sync``.  Each command
carries them (so its ``--help`` lists them) and hands what it was given to
the one ``Ctx``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from .output import LogbookClickError, error_line, redacted, setup_logging, show_progress

if TYPE_CHECKING:
    from ..config import Config
    from ..progress import Progress
    from ..store import Store

AUTH_HELP = "How the key is sent: query (the API reference) or header (as the Haiqu SDK does)."
AUTH_DEFAULT = "query, or auth in config.toml"
DEFAULT_STATS = 10.0
GLOBAL_NAMES = ("db", "verbose", "quiet", "stats", "log_format")
DEFAULT = ParameterSource.DEFAULT


def global_options() -> list[click.Option]:
    """The global options, made anew for each command that takes them."""
    return [
        click.Option(
            ["--db"], metavar="PATH",
            help="Store file (default: $LOGBOOK_DB or $LOGBOOK_HOME/logbook.db).",
        ),
        click.Option(
            ["-v", "--verbose"], count=True,
            help="More log output on stderr (-vv: debug, and each HTTP request with its status"
            " and time).",
        ),
        click.Option(
            ["-q", "--quiet"], is_flag=True, help="Only errors on stderr: no progress, no notes."
        ),
        click.Option(
            ["--stats"], type=click.FloatRange(min=0), metavar="S", default=DEFAULT_STATS,
            show_default=True,
            help="When stderr is not a terminal: a progress line every S seconds (0: off).",
        ),
        click.Option(
            ["--log-format"], type=click.Choice(["text", "json"]), default="text",
            show_default=True,
            help="Log lines as timestamped text or one JSON object a line (for log shippers).",
        ),
    ]  # fmt: skip


class Ctx:
    """What the global options give every command."""

    def __init__(
        self, db: str | None, verbose: int, quiet: bool, stats: float, log_format: str
    ) -> None:
        self.db_option = db
        self.verbose = verbose
        self.quiet = quiet
        self.stats = stats
        self.log_format = log_format
        self.service = False
        self._configs: dict[tuple[tuple[str, Any], ...], Config] = {}

    def given(self, params: dict[str, Any]) -> None:
        """Global options given after the command: they add to (``-v``) or win over the group's."""
        if params.get("db") is not None:
            self.db_option = params["db"]
            self._configs.clear()
        self.verbose += params.get("verbose") or 0
        if params.get("quiet"):
            self.quiet = True
        if params.get("stats") is not None:
            self.stats = params["stats"]
        if params.get("log_format") is not None:
            self.log_format = params["log_format"]
        self.setup_logging()

    def setup_logging(self, *, service: bool | None = None) -> None:
        """Logging as the options say; a service (watch, relay) also says what it does."""
        if service is not None:
            self.service = service
        setup_logging(self.verbose, self.quiet, self.log_format, self.service)

    def config(self, **overrides: Any) -> Config:
        """The configuration for this command (read once; the options given win)."""
        from ..config import load_config

        key = tuple(sorted(overrides.items()))
        if key not in self._configs:
            cfg = load_config(db=self.db_option, **overrides)
            for note in cfg.notes:
                logging.getLogger("logbook").info(note)
            self._configs[key] = cfg
        return self._configs[key]

    def open(self, *, readonly: bool = False, create: bool = True) -> Store | None:
        """The store; ``None`` when it does not exist and only reading (``readonly``) or
        changing what is there (``create=False``) was asked for.

        A path the user gave (``--db``, ``LOGBOOK_DB``) that does not exist is an
        error for those commands, never an empty store: a typo shows, and creates
        nothing.  Only the default store reads as empty before its first entry.
        """
        from ..store import Store

        cfg = self.config()
        if readonly or not create:
            if not cfg.db.exists():
                source = cfg.sources.get("db")
                if source in ("--db", "LOGBOOK_DB"):
                    from ..errors import NotFound

                    raise NotFound(
                        f"no store at {cfg.db} (from {source}): check the path; nothing was"
                        " created (`logbook record` or `import` starts a store)"
                    )
                return None
            if readonly:
                return Store(cfg.db, readonly=True)
        store = Store(cfg.db)
        from ..fsinfo import network_filesystem

        fstype = network_filesystem(cfg.db)
        if fstype:
            logging.getLogger("logbook").warning(
                "the store %s is on a network filesystem (%s); SQLite locking is unreliable"
                " there: set LOGBOOK_HOME or --db to a local disk", cfg.db, fstype,
            )  # fmt: skip
        return store

    def progress(
        self, progress: Progress, unit: str, *, as_json: bool = False
    ) -> AbstractContextManager[None]:
        """Progress on stderr as the options say (a bar, stats lines, or nothing)."""
        return show_progress(progress, unit, quiet=self.quiet, stats=self.stats, as_json=as_json)


pass_ctx = click.make_pass_decorator(Ctx)


def _one_line(err: click.UsageError) -> LogbookClickError:
    """A usage error as one line (click's own display takes three), exit 2."""
    message = " ".join(err.format_message().split())  # click's choices come one a line
    # One hint: a message that names where to look already (an id: `logbook list`) keeps it.
    hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
    if "(see " in message:
        hint = ""
    return LogbookClickError(redacted(message) + hint, 2)


class _TakesGlobals(click.Command):
    """A command (or group) that also takes the global options after its name."""

    takes_globals = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.takes_globals:
            mine = {o for p in self.params for o in p.opts}
            self.params += [o for o in global_options() if not set(o.opts) & mine]

    def invoke(self, ctx: click.Context) -> Any:
        if self.takes_globals:
            given = {
                name: ctx.params.pop(name) for name in GLOBAL_NAMES
                if name in ctx.params and ctx.get_parameter_source(name) is not DEFAULT
            }  # fmt: skip
            for name in GLOBAL_NAMES:
                ctx.params.pop(name, None)
            c = ctx.find_object(Ctx)
            if c is not None:
                c.given(given)
        return super().invoke(ctx)


class LogbookCommand(_TakesGlobals):
    """A ``logbook`` command."""


class LogbookGroup(_TakesGlobals, click.Group):
    """A group whose commands and subgroups take the global options; usage errors print one
    line.
    """

    command_class = LogbookCommand
    group_class = type  # subgroups are LogbookGroups too

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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first sentence, never cut with "..." (a description
        that does not fit wraps on the next line)."""
        rows = [
            (name, cmd.get_short_help_str(limit=10_000))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


#: Wide enough for a command's whole one-line description (click's default is 80).
HELP_WIDTH = 100


class RootGroup(LogbookGroup):
    """The ``logbook`` group: it declares the global options with their defaults, and maps
    every error of every command to one line, here, once.
    """

    takes_globals = False

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line(err) from None
        except BaseException as err:  # noqa: BLE001 - mapped, or passed on as it is
            mapped = error_line(err)
            if mapped is err:
                raise
            raise mapped from None


class EntryId(click.ParamType):
    """An entry id: ASCII digits that fit SQLite's integers (not ``²``, not 10**20)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value)
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            self.fail(f"not an entry id: {text[:40]!r} (see `logbook list`)", param, ctx)
        return int(text)


def auth_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--auth", type=click.Choice(["query", "header"]), help=AUTH_HELP,
        show_default=AUTH_DEFAULT,
    )  # fmt: skip


def json_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")
