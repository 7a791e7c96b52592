"""``logbook relay``: the lab gateway, its keys, its doctor and its status."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import click

from ..vocab import STATES
from .context import Ctx, LogbookGroup, auth_option, pass_ctx
from .monitoring import (
    daemon_monitor,
    host_port,
    max_lag_option,
    metrics_option,
    say_metrics,
    verdict_line,
)
from .output import LogbookClickError, echo, print_json
from .settings import report_checks
from .units import unit

if TYPE_CHECKING:
    from ..config import Config
    from ..monitor import Monitor
    from ..relay import Relay

#: The defaults of the relay's limits: ``server.listen.Limits``'s and ``server.ByteBudget``'s
#: (written here so that the command line starts without importing the server).
MAX_CONNECTIONS, MAX_PER_CLIENT, HEADER_TIMEOUT, IDLE_TIMEOUT = 1024, 256, 10.0, 60.0
MAX_MB, MAX_MB_CLIENT = 32, 16


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
@metrics_option()
@max_lag_option("/readyz answers 503")
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=MAX_CONNECTIONS,
    show_default=True,
    help="Connections open at once (kept below the descriptor limit); more wait.",
)
@click.option(
    "--max-connections-per-client",
    type=click.IntRange(min=1),
    default=MAX_PER_CLIENT,
    show_default=True,
    help="Connections one client address may hold; more are closed at once.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=HEADER_TIMEOUT,
    show_default=True,
    metavar="S",
    help="Seconds for a request's line and headers (and a TLS handshake) to arrive.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=IDLE_TIMEOUT,
    show_default=True,
    metavar="S",
    help="Seconds a connection may wait between requests, or a body may stall.",
)
@click.option(
    "--max-mb-in-flight",
    type=click.IntRange(min=1),
    default=MAX_MB,
    show_default=True,
    metavar="MB",
    help="Request bodies held in memory at once (MiB); beyond it, 429 with Retry-After.",
)
@click.option(
    "--max-mb-in-flight-per-client",
    type=click.IntRange(min=1),
    default=MAX_MB_CLIENT,
    show_default=True,
    metavar="MB",
    help="The same, for one client key.",
)
@click.option(
    "--print-unit", is_flag=True, help="Print a systemd user unit for this command and exit."
)
@click.pass_context
def relay(ctx: click.Context, listen: str | None, upstream: str | None, print_unit: bool,
          **options: Any) -> None:  # fmt: skip
    """Serve the Jobs API on a lab network; forward jobs upstream once.

    Lab machines set HAIQU_EDGE_URI to the relay and HAIQU_API_KEY to a relay
    key; only the relay holds the upstream HAIQU_API_KEY.  Jobs are committed
    to the relay's store before it answers; a repeated POST returns the job it
    holds.  SIGTERM drains it and exits 0.

    \b
    Example:
      logbook relay key add lab-pc-3          # prints the key, once
      HAIQU_API_KEY=... logbook relay --listen 0.0.0.0:8700 --upstream https://api.haiqu.ai
      logbook relay --listen 0.0.0.0:8700 --upstream https://api.haiqu.ai --metrics 127.0.0.1:9465
    """
    if ctx.invoked_subcommand is not None:
        return
    c = ctx.find_object(Ctx)
    assert c is not None
    if not listen or not upstream:
        raise click.UsageError("give --listen HOST:PORT and --upstream URL (or a subcommand)")
    host, port = _listen(listen)
    if print_unit:
        click.echo(unit(c.db_option, _unit_args(listen, upstream, options), "relay"))
        return
    c.setup_logging(service=True)
    server = _relay(c, host, port, upstream, options)
    server.monitor = _monitor(
        c.config(auth=options["auth"]), options["metrics"], options["max_lag"]
    )
    import asyncio

    try:
        asyncio.run(server.run(ready=lambda url: _ready(url, server)))
    except OSError as err:
        raise LogbookClickError(f"cannot listen on {listen}: {err.strerror or err}", 1) from None
    finally:
        server.close()
    logging.getLogger("logbook.relay").info("relay stopped: %s", server.summary())


def _unit_args(listen: str, upstream: str, options: dict[str, Any]) -> list[str]:
    """The command line a unit runs: every option as given (or its default), paths absolute."""
    args = ["relay", "--listen", listen, "--upstream", upstream]
    for name, value in options.items():
        if value is None:
            continue
        if name in ("tls_cert", "tls_key"):
            value = os.path.abspath(value)
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def _relay(c: Ctx, host: str, port: int, upstream: str, o: dict[str, Any]) -> Relay:
    from ..relay import Relay, RelayOptions
    from ..server import MIB, ByteBudget, tls_context
    from ..server.listen import Limits

    try:
        tls = tls_context(o["tls_cert"], o["tls_key"])
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot use the TLS certificate and key: {err}") from None
    limits = Limits(
        max_connections=o["max_connections"], max_per_client=o["max_connections_per_client"],
        header_timeout=o["header_timeout"], idle_timeout=o["idle_timeout"],
    )  # fmt: skip
    budget = ByteBudget(o["max_mb_in_flight"] * MIB, o["max_mb_in_flight_per_client"] * MIB)
    options = RelayOptions(
        host, port, upstream, tls=tls, refresh_every=o["refresh"],
        max_in_flight=o["max_in_flight"], limits=limits, budget=budget,
    )  # fmt: skip
    return Relay(c.config(auth=o["auth"]), options)


def _monitor(cfg: Config, metrics: str | None, max_lag: float | None) -> Monitor | None:
    if metrics:
        host_port(metrics, "--metrics")  # a usage error before anything starts
    return daemon_monitor(cfg, "relay", metrics, max_lag)


def _ready(url: str, server: Relay) -> None:
    """It listens: say where (and where its metrics are), then tell systemd."""
    click.echo(f"relay ready on {url}")
    say_metrics(server.monitor)
    if server.monitor is not None:
        server.monitor.ready()


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
    from dataclasses import replace

    from ..doctor import relay_checks

    cfg = c.config(endpoint=upstream, auth=auth)
    cfg = replace(
        cfg, endpoint_setting="--upstream", sources={**cfg.sources, "endpoint": "--upstream"}
    )
    report_checks(relay_checks(cfg, url), as_json)


@relay.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@max_lag_option("Say not ready")
@pass_ctx
def relay_status_cmd(c: Ctx, as_json: bool, max_lag: float | None) -> None:
    """Backlog, oldest unforwarded job, last upstream contact and error, per-client counts,
    and the verdict /readyz gives.

    \b
    Example:
      logbook relay status --json
    """
    from ..relay import relay_status

    cfg = c.config()
    data = relay_status(cfg)
    data["ready"], data["verdict"] = verdict_line(cfg, max_lag)
    if as_json:
        print_json(data)
        return
    echo(f"store:                 {data['db']}")
    click.echo(f"backlog:               {data['backlog']} jobs not yet upstream")
    click.echo(f"oldest unforwarded:    {data['oldest_unforwarded'] or '-'}")
    click.echo(f"last upstream contact: {data['last_upstream_contact'] or 'never'}")
    error = data["last_upstream_error"]
    echo(f"last upstream error:   {error['at']} {error['message']}" if error else
         "last upstream error:   none")  # fmt: skip
    for client, counts in sorted(data["clients"].items()):
        echo(f"client {client}: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    click.echo(data["verdict"])
