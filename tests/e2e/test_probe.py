"""What the second adversarial probe broke, each as a real process: a base URL with a path
the API does not serve, and a wall clock that was ahead then corrected.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relaysupport import UP_KEY, RelayProcess
from support import assert_one_line_error, cli, seed_store, states, wait_until

from logbook.emulator.testing import EmulatorProcess


def test_a_base_url_with_a_path_the_api_does_not_serve_rejects_nothing(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Every POST answers 404: the endpoint is wrong, not the jobs (it rejected 18,043)."""
    home = tmp_path / "lab"
    seed_store(home, 20)
    wrong = f"{emulator.url}/api/v1"
    run = cli(home, "sync", env={"HAIQU_EDGE_URI": wrong, "HAIQU_API_KEY": emulator.key})
    assert run.code == 2, run
    assert_one_line_error(run.err)
    assert wrong in run.err and "HAIQU_EDGE_URI" in run.err
    assert states(home / "logbook.db") == {"pending": 20, "sending": 0, "synced": 0, "rejected": 0}
    # the right endpoint then takes every one
    assert cli(home, "sync", env=emulator.env()).code == 0
    assert emulator.stats()["jobs_created"] == 20


def test_a_relay_whose_upstream_has_a_wrong_path_holds_its_backlog(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", f"{upstream.url}/api/v1", UP_KEY)
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 10)
    try:
        relay.start()
        assert cli(home, "sync", env=relay.env_for_lab(key)).code == 0
        wait_until(
            lambda: "answered 404" in relay.log.read_text(), 30, "the relay to say its upstream"
            " is wrong",
        )  # fmt: skip
        assert states(relay.home / "logbook.db")["pending"] == 10  # held, none rejected
        assert relay.log.read_text().count("answered 404") == 1  # said once, not per job
        assert upstream.stats()["jobs_created"] == 0
    finally:
        relay.stop()


def test_a_clock_that_was_a_year_ahead_never_stalls_the_relays_backlog(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    """The relay's retry times lie a year ahead (written under a wrong clock): forwarded."""
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 10)
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()
    try:
        relay.start()
        assert cli(home, "sync", env=relay.env_for_lab(key)).code == 0
        assert relay.stop() == 0
        with sqlite3.connect(relay.home / "logbook.db") as conn:
            conn.execute(
                "UPDATE entries SET next_attempt_at = ?, attempts = 9 WHERE state = 'pending'",
                (time.time() + 365 * 86400,),
            )
        upstream.extra_args = ("--port", port)
        upstream.start()
        relay.start()
        wait_until(lambda: upstream.stats()["jobs_created"] >= 10, 60, "the backlog forwarded")
        assert upstream.stats()["duplicates"] == 0
    finally:
        relay.stop()
