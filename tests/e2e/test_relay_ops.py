"""Operating ``logbook relay``: its keys, its status, its stop line, its port, its trust domain.

Real processes on loopback: the relay, ``logbook relay key``/``status`` run
beside it as an operator would, the emulator upstream, and raw HTTP clients
as lab machines.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx2
from relaysupport import UP_KEY, RelayProcess, free_port
from support import ISO_UTC, assert_no_key, cli, entries, seed_store, states, wait_until

from logbook.emulator.testing import EmulatorProcess


def lookup(relay: RelayProcess, key: str) -> int:
    with httpx2.Client(base_url=relay.url, timeout=30) as c:
        return c.get("/experiments/e/jobs/none", params={"HAIQU_API_KEY": key}).status_code


def test_keys_added_or_revoked_take_effect_at_the_next_request(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    relay.add_key("first")
    relay.start()
    try:
        keys = []
        for i in range(3):
            key = relay.add_key(f"lab-{i}")  # another process, while the relay runs
            keys.append(key)
            assert lookup(relay, key) == 404, "a new key works at once"
            assert cli(relay.home, "relay", "key", "revoke", f"lab-{i}").code == 0
            assert lookup(relay, key) == 401, "a revoked key is refused at once"
        for _ in range(20):
            assert lookup(relay, keys[0]) == 401
            assert lookup(relay, "lbr_made-up-key-0123456789") == 401
        log = relay.log_text()
    finally:
        relay.stop()
    refusals = [line for line in log.splitlines() if "refused" in line]
    assert any("the revoked relay key 'lab-0' from 127.0.0.1" in line for line in refusals), log
    assert any("an unknown key (sha256 " in line and "127.0.0.1" in line for line in refusals)
    assert len(refusals) <= 4, log  # one a minute for each revoked key and for unknown keys
    for key in keys:
        assert_no_key(log, key, "the relay's log")


def test_relay_status_shows_the_last_upstream_error_naming_upstream(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    relay = RelayProcess(tmp_path / "relay", dead, UP_KEY)
    key = relay.add_key("lab")
    before = cli(relay.home, "relay", "status")
    assert "last upstream error:   none" in before.out, before.out
    home = tmp_path / "lab"
    seed_store(home, 3, experiment="exp-lab")
    relay.start()
    try:
        assert cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key)).code == 0

        def error() -> dict[str, str] | None:
            run = cli(relay.home, "relay", "status", "--json")
            assert run.code == 0, run.err
            return run.json()["last_upstream_error"]  # type: ignore[no-any-return]

        found = wait_until(error, 30, "relay status to show the upstream error")
        text = cli(relay.home, "relay", "status").out
        log = relay.log_text()
    finally:
        relay.stop()
    assert ISO_UTC.match(found["at"]), found
    assert "127.0.0.1" in found["message"] and "--upstream" in found["message"], found
    line = next(line for line in text.splitlines() if line.startswith("last upstream error:"))
    assert "--upstream" in line and ISO_UTC.match(line.split()[3]), line
    assert "--upstream" in log and "HAIQU_EDGE_URI" not in log, log
    assert_no_key(text + log, UP_KEY)


def test_an_upstream_that_redirects_is_named_by_upstream(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    upstream.set_faults(redirect_to="http://moved.example.test/v2", routes="*")
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 2, experiment="exp-lab")
    relay.start()
    try:
        assert cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key)).code == 0
        wait_until(lambda: "redirects" in relay.log_text(), 30, "the redirect in the log")
        log = relay.log_text()
        status = cli(relay.home, "relay", "status", "--json").json()
    finally:
        relay.stop()
    line = next(line for line in log.splitlines() if "redirects" in line)
    assert "set --upstream to it" in line and "HAIQU_EDGE_URI" not in log, line
    assert "set --upstream to it" in status["last_upstream_error"]["message"]
    assert status["backlog"] == 2  # held, not rejected
    assert upstream.stats()["jobs_created"] == 0


def test_sigterm_prints_one_relay_stopped_line_with_a_summary(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 5, experiment="exp-lab")
    relay.start()
    try:
        assert cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key)).code == 0
        wait_until(lambda: upstream.stats()["jobs_created"] == 5, 30, "the jobs upstream")
        wait_until(lambda: states(relay.home / "logbook.db")["synced"] == 5, 30, "forwarded")
    finally:
        code = relay.stop(signal.SIGTERM)
    assert code == 0
    lines = [line for line in relay.log_text().splitlines() if "relay stopped" in line]
    assert len(lines) == 1, lines
    assert "relay stopped: 5 jobs taken (5 new), 5 forwarded upstream, 0 waiting" in lines[0]


def test_a_busy_port_is_one_line_exit_1_and_forwards_nothing(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    """The relay's own store holds jobs to forward; it must not start on them when it cannot
    even listen."""
    home = tmp_path / "relay"
    seed_store(home, 5, experiment="held")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        run = cli(home, "relay", "--listen", f"127.0.0.1:{port}", "--upstream", upstream.url,
                  env={"HAIQU_API_KEY": UP_KEY})  # fmt: skip
    finally:
        taken.close()
    assert run.code == 1, run.err
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    assert lines[0].startswith(f"logbook: error: cannot listen on 127.0.0.1:{port}: "), lines
    assert upstream.stats()["jobs_created"] == 0
    assert {e["state"] for e in entries(home / "logbook.db")} == {"pending"}
    assert all(e["attempts"] == 0 for e in entries(home / "logbook.db"))


def test_one_relay_is_one_trust_domain(tmp_path: Path, upstream: EmulatorProcess) -> None:
    """README: any live relay key reads any job of the relay, and a POST of an identity
    another key posted returns that job (de-duplication across the lab) — so run one relay
    per group that may see each other's jobs.  A revoked key reads nothing."""
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    alice, bob = relay.add_key("alice"), relay.add_key("bob")
    relay.start()
    body = {"experiment_id": "shared", "name": "bell", "results": '{"00": 1}'}
    try:
        with httpx2.Client(base_url=relay.url, timeout=30) as c:
            posted = c.post("/jobs", json=body, params={"HAIQU_API_KEY": alice}).json()
            by_id = c.get(f"/jobs/{posted['id']}", params={"HAIQU_API_KEY": bob})
            by_hash = c.get(f"/experiments/shared/jobs/{posted['hash']}",
                            params={"HAIQU_API_KEY": bob})  # fmt: skip
            again = c.post("/jobs", json=body, params={"HAIQU_API_KEY": bob})
            assert cli(relay.home, "relay", "key", "revoke", "bob").code == 0
            revoked = c.get(f"/jobs/{posted['id']}", params={"HAIQU_API_KEY": bob})
    finally:
        relay.stop()
    assert by_id.status_code == 200 and by_id.json()["hash"] == posted["hash"]
    assert by_hash.status_code == 200 and by_hash.json()["id"] == posted["id"]
    assert again.status_code == 200 and again.json()["id"] == posted["id"]  # de-duplicated
    assert len(entries(relay.home / "logbook.db")) == 1
    assert revoked.status_code == 401


def test_relay_doctor_names_upstream(tmp_path: Path, upstream: EmulatorProcess) -> None:
    upstream.set_faults(redirect_to="http://moved.example.test/v2", routes="*")
    run = cli(tmp_path / "relay", "relay", "doctor", "--upstream", upstream.url,
              env={"HAIQU_API_KEY": UP_KEY})  # fmt: skip
    assert run.code == 1, run.out + run.err
    assert "set --upstream to where it points" in run.out, run.out
    assert "from --upstream" in run.out and "HAIQU_EDGE_URI" not in run.out, run.out


def test_an_upstream_base_path_the_api_does_not_serve_holds_the_backlog_and_says_so_once(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url + "/api/v1", UP_KEY)
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 3, experiment="exp-lab")
    relay.start()
    try:
        assert cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key)).code == 0
        wait_until(lambda: "answered 404" in relay.log_text(), 30, "the 404 in the log")
        assert cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key)).code == 0
        status = cli(relay.home, "relay", "status", "--json").json()
        log = relay.log_text()
    finally:
        relay.stop()
    lines = [line for line in log.splitlines() if "answered 404" in line]
    assert len(lines) == 1 and "set --upstream to the API's base URL" in lines[0], log
    assert "answered 404" in status["last_upstream_error"]["message"]
    assert status["backlog"] == 3 and status["counts"]["rejected"] == 0, status
    assert upstream.stats()["jobs_created"] == 0
