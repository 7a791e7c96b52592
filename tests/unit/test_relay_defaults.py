"""The relay's command line shows its limits' defaults without importing the server (a fast
start for every other command): the numbers it shows are the server's own."""

from __future__ import annotations

from logbook.cli import relay as cli_relay
from logbook.server import MIB, ByteBudget
from logbook.server.listen import Limits


def test_the_relay_options_default_to_the_servers_limits() -> None:
    shown = Limits(
        max_connections=cli_relay.MAX_CONNECTIONS, max_per_client=cli_relay.MAX_PER_CLIENT,
        header_timeout=cli_relay.HEADER_TIMEOUT, idle_timeout=cli_relay.IDLE_TIMEOUT,
    )  # fmt: skip
    assert shown == Limits()
    budget = ByteBudget()
    assert (budget.total, budget.per_client) == (
        cli_relay.MAX_MB * MIB, cli_relay.MAX_MB_CLIENT * MIB,
    )  # fmt: skip
