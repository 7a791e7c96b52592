"""The ``logbook`` command: a thin click layer over the library.

This package is the only code that prints or exits.  Its rooms:

- ``context.py``: the global options, ``Ctx`` (what they give every command),
  and the group classes; the root group maps every error to one line, once;
- ``output.py``: error lines, log lines, progress bars and stats lines, data
  on stdout;
- ``entries.py``: record, import, list, show, status, export, retry;
- ``sync.py``: sync and watch;
- ``relay.py``: the relay group (serve, keys, doctor, status);
- ``bundle.py``: the bundle group (export, import, receipt, apply: air-gapped machines);
- ``settings.py``: config, path, completion, doctor;
- ``units.py``: the systemd units ``--print-unit`` prints;
- ``emulator.py``: the bundled Jobs API emulator as ``logbook emulator``.

Library modules are imported inside the commands so that ``logbook --help``
is fast.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from . import bundle, emulator, entries, relay, settings, sync
from .context import HELP_WIDTH, Ctx, RootGroup, global_options
from .output import Terminated

__all__ = ["cli", "main"]


@click.group(
    cls=RootGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)
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
      logbook help sync      # a command's help (the same as: logbook sync --help)
    """
    ctx.obj = Ctx(db, verbose, quiet, stats, log_format)
    ctx.obj.setup_logging()


cli.params[:0] = global_options()

for command in (
    entries.record, entries.import_, entries.list_, entries.show, entries.status,
    entries.export, settings.path, settings.config_, settings.completion, entries.retry, entries.rm,
    sync.sync, sync.watch, relay.relay, bundle.bundle, settings.doctor, emulator.emulator,
    settings.help_,
):  # fmt: skip
    cli.add_command(command)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main() -> None:
    """Console-script entry point."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="logbook")
