"""Endpoints and proxies that cannot be used: one line saying what is wrong, exit 2, nothing
changed — whether they come from config.toml or the environment.

Real ``logbook`` processes; an emulator listens on loopback so that a sync
that wrongly went ahead would change the store (and the test would see it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Run, assert_no_key, assert_one_line_error, cli, entries, seed_store

from logbook.emulator.testing import EmulatorProcess

KEY = "k+ey/with=chars+/="


def assert_config_error(run: Run, *words: str) -> None:
    assert run.code == 2, (run.code, run.err)
    assert_one_line_error(run.err)
    assert run.err.startswith("logbook: error: "), run.err
    assert "unexpected" not in run.err
    for word in words:
        assert word in run.err, (word, run.err)


BAD_PROXIES = [
    pytest.param("http://:0", "no host", id="no-host"),
    pytest.param("http://[::1", "Invalid IPv6 URL", id="open-bracket"),
    pytest.param("http://127.0.0.1:70000", "Port out of range", id="port-too-big"),
    pytest.param("http://127.0.0.1:3128\n", "control character", id="newline"),
    pytest.param("http://127.0.0.1\n:3128", "control character", id="newline-inside"),
    pytest.param("http://127.0.0.1:0", "port 0", id="port-0"),
    pytest.param("socks5://127.0.0.1:1080", "supported: http://, https://", id="socks5"),
    pytest.param("ftp://127.0.0.1:21", "supported: http://, https://", id="ftp"),
]


@pytest.mark.parametrize(("proxy", "word"), BAD_PROXIES)
def test_a_malformed_proxy_in_the_environment_is_exit_2_and_changes_nothing(
    emulator: EmulatorProcess, tmp_path: Path, proxy: str, word: str
) -> None:
    home = tmp_path / "home"
    db = seed_store(home, 2)
    before = entries(db)
    env = {**emulator.env(), "HTTP_PROXY": proxy}
    for command in (["sync"], ["watch", str(tmp_path), "--sync"]):
        assert_config_error(cli(home, *command, env=env), "HTTP_PROXY", word)
    assert entries(db) == before  # pending, never maybe-sent
    assert emulator.stats()["jobs_created"] == 0
    doctor = cli(home, "doctor", env=env)
    assert doctor.code == 1, doctor.out + doctor.err
    assert "Traceback" not in doctor.err and "unexpected" not in doctor.out + doctor.err
    proxy_line = next(line for line in doctor.out.splitlines() if " proxy: " in line)
    assert proxy_line.startswith("FAIL") and word in proxy_line, doctor.out


def test_a_malformed_proxy_in_config_toml_is_checked_the_same_way(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    seed_store(home, 1)
    (home / "config.toml").write_text('proxy = "socks5://127.0.0.1:1080"\n')
    assert_config_error(cli(home, "sync", env=emulator.env()), "supported: http://, https://")


def test_an_upstream_proxy_that_cannot_be_used_stops_the_relay_at_start(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    run = cli(tmp_path / "relay", "relay", "--listen", "127.0.0.1:0", "--upstream", emulator.url,
              env={"HAIQU_API_KEY": KEY, "HTTP_PROXY": "http://[::1"})  # fmt: skip
    assert_config_error(run, "HTTP_PROXY", "Invalid IPv6 URL")


BAD_ENDPOINTS = [
    pytest.param("http://127.0.0.1:{port}/?", "query string", id="empty-query"),
    pytest.param("http://127.0.0.1:{port}?", "query string", id="empty-query-no-slash"),
    pytest.param("http://127.0.0.1:{port}/#frag", "fragment", id="fragment"),
    pytest.param("http://127.0.0.1:{port}#", "fragment", id="empty-fragment"),
    pytest.param("http://127.1:{port}", "no IP address", id="short-ipv4"),
    pytest.param("http://127.0.0.256:{port}", "no IP address", id="octet-over-255"),
    pytest.param("http://127.0.0.1.5:{port}", "no IP address", id="five-numbers"),
    pytest.param("http://lab..gateway:{port}", "no host name", id="empty-label"),
    pytest.param("http://127.0.0.1:{port}/a b", "a space", id="space"),
]


@pytest.mark.parametrize(("template", "word"), BAD_ENDPOINTS)
def test_an_endpoint_that_cannot_be_used_is_exit_2_and_changes_nothing(
    emulator: EmulatorProcess, tmp_path: Path, template: str, word: str
) -> None:
    home = tmp_path / "home"
    db = seed_store(home, 2)
    before = entries(db)
    endpoint = template.format(port=emulator.url.rsplit(":", 1)[1])
    env = {"HAIQU_EDGE_URI": endpoint, "HAIQU_API_KEY": KEY}
    for command in (["sync"], ["doctor"]):
        assert_config_error(cli(home, *command, env=env), "HAIQU_EDGE_URI", word)
    relay = cli(tmp_path / "relay", "relay", "--listen", "127.0.0.1:0", "--upstream", endpoint,
                env={"HAIQU_API_KEY": KEY})  # fmt: skip
    assert_config_error(relay, "--upstream", word)
    assert entries(db) == before
    assert emulator.stats()["jobs_created"] == 0


def test_a_fragment_is_not_called_a_query_string(tmp_path: Path) -> None:
    run = cli(tmp_path, "sync", env={"HAIQU_EDGE_URI": "http://127.0.0.1:9/#secret123456",
                                     "HAIQU_API_KEY": KEY})  # fmt: skip
    assert_config_error(run, "fragment")
    assert "query" not in run.err
    assert_no_key(run.err, "secret123456")
