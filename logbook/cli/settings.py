"""The commands about logbook itself: config, path, completion, doctor, help."""

from __future__ import annotations

import sys
from typing import Any

import click

from .context import Ctx, LogbookCommand, LogbookGroup, auth_option, pass_ctx
from .output import echo, print_json, printable, redacted

#: Items of a check (invalid files) listed on a terminal; --json lists them all.
MAX_ITEMS_SHOWN = 20


@click.command(cls=LogbookCommand)
@pass_ctx
def path(c: Ctx) -> None:
    """Print the store's path (it opens in datasette and sqlite-utils).

    \b
    Example:
      datasette "$(logbook path)"
    """
    echo(str(c.config().db))


@click.group("config", cls=LogbookGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.pass_context
def config_(ctx: click.Context, as_json: bool) -> None:
    """Show each setting in effect and where it came from (key masked).

    \b
    Example:
      logbook config
      logbook config path
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..doctor import cas_in_effect, proxy_in_effect

    cfg = ctx.find_object(Ctx).config()  # type: ignore[union-attr]
    # The proxy and CAs in effect (the environment's too), as for every other setting.
    effective = {"proxy": proxy_in_effect(cfg), "ca_bundle": cas_in_effect(cfg)}
    rows = [
        (name, *effective[name]) if name in effective else (name, value, source)
        for name, value, source in cfg.shown()
    ]
    if as_json:
        print_json({name: {"value": value, "source": source} for name, value, source in rows})
        return
    from ..config import config_path

    click.echo(f"config file: {config_path()}{'' if cfg.config_file else ' (none yet)'}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        echo(f"{name:<{width}}  {value}  ({source})")


@config_.command("path")
def config_path_cmd() -> None:
    """Print the config file's path (whether it exists or not).

    \b
    Example:
      $EDITOR "$(logbook config path)"
    """
    from ..config import config_path

    echo(str(config_path()))


@click.command(cls=LogbookCommand)
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
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "logbook", "_LOGBOOK_COMPLETE").source())


@click.command("help", cls=LogbookCommand)
@click.argument("command", nargs=-1, metavar="[COMMAND]...")
@click.pass_context
def help_(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show a command's help, as `logbook COMMAND --help` does.

    `logbook help sync` is `logbook sync --help`.

    \b
    Example:
      logbook help
      logbook help relay key add
    """
    sub = ctx.find_root()
    for name in command:
        group = sub.command
        found = group.get_command(sub, name) if isinstance(group, click.Group) else None
        if found is None:
            where = " ".join(["logbook", *command[: command.index(name)]])
            from ..errors import BadInput

            raise BadInput(f"no such command: {where} {name} (see `{where} --help`)")
        sub = click.Context(found, info_name=name, parent=sub)
    click.echo(sub.get_help())


# --- doctor -------------------------------------------------------------------------------


@click.command(cls=LogbookCommand)
@click.option("--endpoint", metavar="URL", help="API base URL to check.")
@auth_option()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
def doctor(c: Ctx, endpoint: str | None, auth: str | None, as_json: bool) -> None:
    """Check the store, configuration and endpoint; say what to fix.

    It checks the network too (proxy, CAs) and whether the API takes the key.

    Exit 0 when all is well, 1 when something needs you.

    \b
    Example:
      logbook doctor
    """
    from ..doctor import run_checks

    report_checks(run_checks(c.config(endpoint=endpoint, auth=auth)), as_json)


def report_checks(checks: list[Any], as_json: bool) -> None:
    """Doctor's checks, one a line (or JSON); exit 1 when one needs the user (a warning
    names a fix too: rejected entries, a key file others can read, ...)."""
    if as_json:
        print_json([ch.to_dict() for ch in checks])
    else:
        for ch in checks:
            echo(redacted(f"{ch.level.upper():5} {ch.name}: {ch.message}"))
            for item in ch.items[:MAX_ITEMS_SHOWN]:
                echo(redacted(printable("        " + ": ".join(item.values()))))
            if len(ch.items) > MAX_ITEMS_SHOWN:
                echo(f"        ... and {len(ch.items) - MAX_ITEMS_SHOWN} more (--json lists them)")
    sys.exit(0 if all(ch.level == "ok" for ch in checks) else 1)
