"""``logbook relay``: the lab gateway, its keys, its doctor and its status."""

from __future__ import annotations

import logging
import os

import click

from ..vocab import STATES
from .context import Ctx, LogbookGroup, auth_option, pass_ctx
from .output import echo, print_json
from .settings import report_checks
from .units import unit


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


@click.group(cls=LogbookGroup, invoke_without_command=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where lab machines reach the relay (port 0: any free one).",
)
@click.option("--upstream", metavar="URL", help="The Jobs API the relay forwards to.")
@auth_option()
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
@click.option(
    "--print-unit", is_flag=True, help="Print a systemd user unit for this command and exit."
)
@click.pass_context
def relay(
    ctx: click.Context, listen: str | None, upstream: str | None, auth: str | None,
    tls_cert: str | None, tls_key: str | None, refresh: float, max_in_flight: int,
    print_unit: bool,
) -> None:  # fmt: skip
    """Serve the Jobs API on a lab network; forward jobs upstream once.

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
        click.echo(unit(c.db_option, args, "relay"))
        return
    from ..relay import Relay, RelayOptions
    from ..server import tls_context

    c.setup_logging(service=True)
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
def relay_key_list(c: Ctx, as_json: bool) -> None:
    """List the relay keys' names (never the keys).

    \b
    Example:
      logbook relay key list --json
    """
    store = c.open(readonly=True)
    keys = [] if store is None else store.keys.described()
    if as_json:
        print_json(keys)
        return
    for k in keys:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        echo(f"{k['name']}  created {k['created_at']}  {state}")


@relay_key.command("revoke")
@click.argument("name")
@pass_ctx
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
@auth_option()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
def relay_doctor(c: Ctx, upstream: str, url: str | None, auth: str | None, as_json: bool) -> None:
    """Check a relay: its store and keys, that it listens, that the upstream answers and
    takes the key.

    \b
    Example:
      logbook relay doctor --upstream https://api.haiqu.ai --url http://127.0.0.1:8700
    """
    from ..doctor import relay_checks

    report_checks(relay_checks(c.config(endpoint=upstream, auth=auth), url), as_json)


@relay.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_ctx
def relay_status_cmd(c: Ctx, as_json: bool) -> None:
    """Backlog, oldest unforwarded job, last upstream contact, and per-client counts.

    \b
    Example:
      logbook relay status --json
    """
    from ..relay import relay_status

    data = relay_status(c.config())
    if as_json:
        print_json(data)
        return
    echo(f"store:                 {data['db']}")
    click.echo(f"backlog:               {data['backlog']} jobs not yet upstream")
    click.echo(f"oldest unforwarded:    {data['oldest_unforwarded'] or '-'}")
    click.echo(f"last upstream contact: {data['last_upstream_contact'] or 'never'}")
    for client, counts in sorted(data["clients"].items()):
        echo(f"client {client}: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
