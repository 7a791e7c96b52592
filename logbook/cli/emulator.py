"""``logbook emulator``: the bundled Jobs API emulator, as a command of the installed tool.

After ``pipx install`` or ``uv tool install`` the package lives in the tool's own
environment, where ``python -m logbook.emulator`` cannot reach it; this command
can.  Its options are built from the emulator's own declarations
(``emulator/options.py``), so both spellings take the same options, with the
same help and defaults; the key is taken from ``HAIQU_API_KEY`` only (a key
on the command line would show in ``ps``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

import click

from ..emulator.options import EPILOG, build_parser
from .context import LogbookCommand

#: Options of ``python -m logbook.emulator`` that ``logbook emulator`` leaves out.
LEFT_OUT = ("help", "api_key")


def _actions() -> list[argparse.Action]:
    parser = build_parser("logbook emulator")
    return [a for a in parser._actions if a.option_strings and a.dest not in LEFT_OUT]


def _option(action: argparse.Action) -> click.Option:
    """A click option that means what the argparse action means."""
    text = action.help or ""
    if isinstance(action, argparse._StoreTrueAction):
        return click.Option([*action.option_strings, action.dest], is_flag=True, help=text)
    kind: click.ParamType
    if action.choices:
        kind = click.Choice([str(c) for c in action.choices])
    else:
        kind = (
            click.INT
            if action.type is int
            else click.FLOAT
            if action.type is float
            else click.STRING
        )
    return click.Option(
        [*action.option_strings, action.dest], type=kind, default=action.default,
        show_default=action.default is not None, help=text,
    )  # fmt: skip


def _argv(values: dict[str, Any]) -> list[str]:
    """The emulator's own command line for the values click parsed (defaults left out)."""
    argv: list[str] = []
    for action in _actions():
        value = values.get(action.dest)
        if value is None or value == action.default or value is False:
            continue
        argv.append(action.option_strings[-1])
        if value is not True:
            argv.append(str(value))
    return argv


def _run(**values: Any) -> None:
    """Run the Haiqu Jobs API emulator on loopback, with faults on demand, until Ctrl-C.

    It serves the API's three routes from memory, checks the key
    (HAIQU_API_KEY), never de-duplicates (like the API), and moves jobs from
    Submitted to Done over --progress-seconds.  Faults can also be changed
    while it runs: POST /_admin/faults (README: "The emulator").
    """
    try:
        from ..emulator.server import main
    except ModuleNotFoundError as err:  # a partial install: one line, not a traceback
        raise click.ClickException(
            f"cannot start the emulator: {err.name or err} is not installed"
            " (reinstall haiqu-logbook)"
        ) from None
    sys.exit(main(_argv(values), prog="logbook emulator"))


def _epilog() -> str:
    # click re-wraps help text; \b keeps each block as written.
    blocks = EPILOG.replace("Example:\n", "\n\b\nExample:\n")
    return "\b\n" + blocks


#: The global options (--db, -v, ...) are taken after the name as everywhere, and mean
#: nothing to the emulator: its own log is its own.
emulator = LogbookCommand(
    "emulator",
    callback=_run,
    params=[_option(a) for a in _actions()],
    help=inspect.cleandoc(_run.__doc__ or "") + "\n\n" + _epilog(),
    short_help="Run the bundled Jobs API emulator (with faults) to try logbook.",
)
