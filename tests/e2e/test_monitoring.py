"""Watching the daemons, end to end: real ``logbook relay`` and ``logbook watch`` processes,
the emulator failing and recovering, systemd's notify socket played by the test.

What an operator checks: the backlog shows in /metrics; /readyz turns 503 once the oldest
undelivered entry is older than --max-lag and 200 again once it is delivered; systemd hears
READY=1, a status line, WATCHDOG=1 while the loop runs (and not once it is stuck) and
STOPPING=1; a cron sync leaves a textfile node_exporter reads and pings a heartbeat only when
it left nothing to send; no key or password shows anywhere.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitorsupport import NotifySocket, Watcher, get, metric
from prometheus_client.parser import text_string_to_metric_families
from relaysupport import RelayProcess, free_port
from support import (
    assert_no_key,
    assert_no_traceback,
    cli,
    seed_store,
    wait_until,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess

FAILING = {"error_rate": 1.0, "error_status": 503, "routes": "*"}
RESULT = {"experiment_id": "exp-mon", "name": "bell", "results": '{"00": 5, "11": 5}'}


def key_of(emulator: EmulatorProcess) -> str:
    return emulator.env()["HAIQU_API_KEY"]


def api_env(emulator: EmulatorProcess) -> dict[str, str]:
    return emulator.env()


@pytest.fixture
def relay(tmp_path: Path, emulator: EmulatorProcess) -> Iterator[RelayProcess]:
    r = RelayProcess(
        tmp_path / "relay", emulator.url, key_of(emulator),
        extra=("--metrics", f"127.0.0.1:{free_port()}", "--max-lag", "2"),
    )  # fmt: skip
    try:
        yield r
    finally:
        r.stop()


def relay_get(relay: RelayProcess, path: str) -> tuple[int, str]:
    return get(f"http://{relay.extra[1]}{path}")


def backlog(text: str) -> float:
    return (metric(text, "logbook_entries", state="pending") or 0) + (
        metric(text, "logbook_entries", state="sending") or 0
    )


# --- the relay ---------------------------------------------------------------------------------


def test_a_relay_with_its_upstream_down_is_unready_past_the_max_lag_then_ready_again(
    tmp_path: Path, emulator: EmulatorProcess, relay: RelayProcess
) -> None:
    emulator.set_faults(**FAILING)
    key = relay.add_key("lab-1")
    relay.start()
    lab = tmp_path / "lab"
    seed_store(lab, 3)
    run = cli(lab, "sync", env=relay.env_for_lab(key))
    assert run.code == 0, run.err  # the relay holds them: the lab machine is done

    text = wait_until(
        lambda: (
            (t := relay_get(relay, "/metrics")[1])
            and backlog(t) == 3
            and (metric(t, "logbook_http_requests_total", code="503") or 0) > 0
            and t
        ),
        what="the backlog and the upstream's 503s in /metrics",
    )
    assert metric(text, "logbook_relay_requests_total", client="lab-1", code="200") == 3
    status, line = wait_until(
        lambda: (r := relay_get(relay, "/readyz"))[0] == 503 and r, what="/readyz 503"
    )
    assert line.startswith("not ready: 3 undelivered, the oldest "), line
    assert metric(relay_get(relay, "/metrics")[1], "logbook_oldest_undelivered_age_seconds") > 2  # type: ignore[operator]
    shown = cli(relay.home, "relay", "status", "--max-lag", "2")
    assert shown.out.splitlines()[-1].startswith("not ready: 3 undelivered"), shown.out
    page = relay_get(relay, "/")[1]
    assert "not ready: 3 undelivered" in page and "lab-1" in page

    emulator.clear_faults()
    wait_until(lambda: relay_get(relay, "/readyz")[0] == 200, timeout=120, what="/readyz 200")
    text = relay_get(relay, "/metrics")[1]
    assert backlog(text) == 0 and metric(text, "logbook_entries", state="synced") == 3
    assert (metric(text, "logbook_last_delivery_timestamp_seconds") or 0) > time.time() - 120
    assert relay_get(relay, "/readyz")[1] == "ready: nothing undelivered\n"
    assert emulator.stats()["jobs_created"] == 3


def test_systemd_hears_ready_status_watchdog_and_stopping_and_a_stopped_relay_goes_quiet(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    with NotifySocket(abstract=True) as systemd:
        relay = RelayProcess(
            tmp_path / "relay", emulator.url, key_of(emulator), env=systemd.env(1_000_000)
        )
        relay.start()
        try:
            wait_until(lambda: systemd.lines("READY=1"), what="READY=1")
            wait_until(lambda: systemd.lines("STATUS=ready: nothing undelivered"), what="STATUS")
            # WATCHDOG_USEC=1 s: one every half second while the loop runs.
            start = time.monotonic()
            wait_until(lambda: systemd.count("WATCHDOG=1", since=start) >= 6, what="WATCHDOG=1")
            took = time.monotonic() - start
            assert systemd.count("WATCHDOG=1", since=start) <= 2 * took / 0.5 + 2

            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                time.sleep(3)  # six watchdog periods: the absence of datagrams is the point
                assert systemd.count("WATCHDOG=1", since=stopped + 0.5) == 0
            finally:
                relay.proc.send_signal(signal.SIGCONT)
            woke = time.monotonic()
            wait_until(lambda: systemd.count("WATCHDOG=1", since=woke) >= 2, what="WATCHDOG again")
            assert relay.stop() == 0
            assert systemd.lines("STOPPING=1")
        finally:
            relay.stop()


# --- the watcher ----------------------------------------------------------------------------


def write_result(folder: Path, name: str, **fields: str) -> None:
    (folder / f"{name}.json").write_text(json.dumps({**RESULT, "name": name, **fields}))


def test_watch_sync_with_the_api_failing_is_unready_past_the_max_lag_then_ready_again(
    tmp_path: Path, logbook_home: Path, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(**FAILING)
    results = tmp_path / "results"
    results.mkdir()
    w = Watcher(
        logbook_home, results, "--sync", "--settle", "0.1", "--max-lag", "2",
        env=api_env(emulator),
    )  # fmt: skip
    try:
        assert w.get("/readyz") == (200, "ready: nothing undelivered\n")
        assert w.get("/healthz")[0] == 200
        write_result(results, "one")
        wait_until(
            lambda: (
                (t := w.get("/metrics")[1])
                and backlog(t) == 1
                and (metric(t, "logbook_http_requests_total", code="503") or 0) > 0
            ),
            what="the pending entry and the API's 503s in /metrics",
        )
        line = wait_until(lambda: (r := w.get("/readyz"))[0] == 503 and r[1], what="503")
        assert line.startswith("not ready: 1 undelivered, the oldest ")
        status = cli(logbook_home, "status", "--max-lag", "2", "--json").json()
        assert status["ready"] is False and status["verdict"].startswith("not ready: 1 ")
        assert "not ready: 1 undelivered" in w.get("/")[1]

        emulator.clear_faults()
        wait_until(lambda: w.get("/readyz")[0] == 200, timeout=120, what="/readyz 200")
        text = w.get("/metrics")[1]
        assert metric(text, "logbook_entries", state="synced") == 1
        assert (metric(text, "logbook_http_requests_total", code="200") or 0) >= 1
        assert cli(logbook_home, "status").out.splitlines()[-1] == "ready: nothing undelivered"
    finally:
        code, _, err = w.stop()
    assert code == 0, err
    assert_no_traceback(err)


def test_a_stuck_watch_loop_stops_feeding_the_watchdog_and_fails_healthz(
    tmp_path: Path, logbook_home: Path
) -> None:
    """The loop, not a timer, feeds systemd: held up by a store another process locks, it
    goes quiet and /healthz says stuck, while /metrics (its own thread) still answers."""
    results = tmp_path / "results"
    results.mkdir()
    with NotifySocket() as systemd:
        w = Watcher(logbook_home, results, "--settle", "0.1", env=systemd.env(2_000_000))
        try:
            wait_until(lambda: systemd.lines("READY=1"), what="READY=1")
            start = time.monotonic()
            wait_until(lambda: systemd.count("WATCHDOG=1", since=start) >= 3, what="WATCHDOG")
            assert w.get("/healthz") == (200, "ok: the watch loop runs\n")

            lock = sqlite3.connect(logbook_home / "logbook.db", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # the watcher's next write waits up to 30 s
            try:
                write_result(results, "held")
                status, body = wait_until(
                    lambda: (r := w.get("/healthz"))[0] == 503 and r, what="/healthz 503"
                )
                assert body.startswith("stuck: the watch loop has not turned for ")
                quiet = time.monotonic()
                assert w.get("/metrics")[0] == 200
                time.sleep(2.5)  # more than two watchdog periods of silence
                assert systemd.count("WATCHDOG=1", since=quiet) == 0
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            resumed = time.monotonic()
            wait_until(lambda: systemd.count("WATCHDOG=1", since=resumed) >= 1, what="WATCHDOG")
            wait_until(lambda: w.get("/healthz")[0] == 200, what="/healthz 200")
            wait_until(lambda: cli(logbook_home, "status", "--json").json()["counts"]["pending"])
        finally:
            code, _, err = w.stop()
        assert code == 0, err
        assert systemd.lines("STOPPING=1")


def test_metrics_on_port_0_says_where_and_serves_nothing_else(
    tmp_path: Path, logbook_home: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    w = Watcher(logbook_home, results)
    try:
        assert w.url.startswith("http://127.0.0.1:") and not w.url.endswith(":0")
        assert w.get("/jobs")[0] == 404
        assert w.get("/metrics")[0] == 200
        port = int(w.url.rsplit(":", 1)[1])
        taken = cli(logbook_home, "watch", results, "--metrics", f"127.0.0.1:{port}")
        assert taken.code == 2 and f"cannot listen on 127.0.0.1:{port} for --metrics" in taken.err
        assert_no_traceback(taken.err)
    finally:
        w.stop()
    bad = cli(logbook_home, "watch", results, "--metrics", "9100")
    assert bad.code == 2 and "HOST:PORT" in bad.err


# --- cron: the textfile and the heartbeat ---------------------------------------------------


class Heartbeats(http.server.ThreadingHTTPServer):
    """A healthchecks.io stand-in on loopback: counts GETs per path."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def heartbeats() -> Iterator[Heartbeats]:
    server = Heartbeats()
    try:
        yield server
    finally:
        server.close()


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def test_a_cron_sync_leaves_a_textfile_and_pings_only_after_a_clean_run(
    tmp_path: Path, logbook_home: Path, emulator: EmulatorProcess, heartbeats: Heartbeats
) -> None:
    seed_store(logbook_home, 4)
    prom = tmp_path / "textfile" / "logbook.prom"
    prom.parent.mkdir()
    ping = f"{heartbeats.url}/ping/0f5e-secret-uuid-41c2"
    write_config(logbook_home, [f'metrics_textfile = "{prom}"', f'heartbeat_url = "{ping}"'])

    emulator.set_faults(**FAILING)
    failed = cli(logbook_home, "sync", "--max-time", "5", env=api_env(emulator))
    assert failed.code == 1, failed.err
    assert heartbeats.hits == [], "a run that left entries to send is no heartbeat"
    got = parse(prom)
    assert got[("logbook_entries", (("state", "pending"),))] == 4
    assert got[("logbook_http_requests_total", (("code", "503"),))] >= 1

    emulator.clear_faults()
    done = cli(logbook_home, "sync", env=api_env(emulator))
    assert done.code == 0, done.err
    assert heartbeats.hits == ["/ping/0f5e-secret-uuid-41c2"]
    got = parse(prom)
    assert got[("logbook_entries", (("state", "synced"),))] == 4
    assert got[("logbook_ready", ())] == 1
    assert sorted(p.name for p in prom.parent.iterdir()) == ["logbook.prom"]

    # A heartbeat that fails is a warning, not a failed sync; the URL's secret part stays out.
    gone = f"http://127.0.0.1:{free_port()}/ping/0f5e-secret-uuid-41c2"
    again = cli(logbook_home, "sync", "--heartbeat-url", gone, env=api_env(emulator))
    assert again.code == 0, again.err
    assert "heartbeat to http://127.0.0.1/... not sent" in again.err
    assert "secret-uuid" not in again.err + again.out
    assert len(heartbeats.hits) == 1


# --- no secret anywhere --------------------------------------------------------------------


def everything_shown(url: str, systemd: NotifySocket, *status: str) -> str:
    parts = [get(url + p)[1] for p in ("/metrics", "/", "/readyz", "/healthz")]
    return "\n".join([*parts, *systemd.lines(), *status])


def test_no_key_relay_key_or_proxy_password_in_any_metric_page_or_status_line(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    # The upstream echoes the request target (with its key) in its errors, as some proxies do.
    emulator.set_faults(echo_rate=1.0, routes="*")
    up_key = key_of(emulator)
    with NotifySocket() as systemd:
        relay = RelayProcess(
            tmp_path / "relay", emulator.url, up_key,
            extra=("--metrics", f"127.0.0.1:{free_port()}", "--max-lag", "1"),
            env=systemd.env(1_000_000),
        )  # fmt: skip
        relay_key = relay.add_key("lab-1")
        relay.start()
        metrics_url = f"http://{relay.extra[1]}"
        try:
            lab = tmp_path / "lab"
            seed_store(lab, 2)
            assert cli(lab, "sync", env=relay.env_for_lab(relay_key)).code == 0
            bad = cli(lab, "sync", env=relay.env_for_lab(relay_key[:-3] + "xyz"))
            assert bad.code in (0, 3)
            wait_until(lambda: "warning" in get(metrics_url + "/")[1], what="a warning shown")
            wait_until(lambda: get(metrics_url + "/readyz")[0] == 503, what="not ready")
            wait_until(lambda: systemd.lines("STATUS=NOT READY"), timeout=30, what="STATUS")
            shown = everything_shown(
                metrics_url, systemd,
                cli(relay.home, "relay", "status").out,
                cli(relay.home, "relay", "status", "--json").out,
            )  # fmt: skip
        finally:
            relay.stop()
    assert "/jobs" in shown  # the echoed error did reach the page, redacted
    assert_no_key(shown, up_key, "the relay's metrics, page and status lines")
    assert_no_key(shown, relay_key, "the relay's metrics, page and status lines")


def test_no_key_or_proxy_password_from_a_watcher_behind_a_failing_proxy(
    tmp_path: Path, logbook_home: Path, emulator: EmulatorProcess
) -> None:
    password = "proxy-Canary-Pa55word"
    proxy = f"http://lab-user:{password}@127.0.0.1:{free_port()}"  # nothing listens there
    results = tmp_path / "results"
    results.mkdir()
    env = {**api_env(emulator), "HTTP_PROXY": proxy, "http_proxy": proxy}
    with NotifySocket() as systemd:
        w = Watcher(
            logbook_home, results, "--sync", "--settle", "0.1", "--max-lag", "1",
            env={**env, **systemd.env(2_000_000)},
        )  # fmt: skip
        try:
            write_result(results, "one")
            wait_until(lambda: "proxy" in w.get("/")[1], what="the proxy's failure on the page")
            wait_until(lambda: w.get("/readyz")[0] == 503, what="not ready")
            status = cli(logbook_home, "status", env=env).out
            shown = everything_shown(w.url, systemd, status)
        finally:
            w.stop()
    assert password not in shown and password[:10] not in shown
    assert_no_key(shown, key_of(emulator), "the watcher's metrics, page and status lines")


# --- the units ----------------------------------------------------------------------------


def unit_lines(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("kind", ["watch", "relay"])
def test_the_units_are_notify_services_with_a_watchdog_and_hardening(
    tmp_path: Path, kind: str
) -> None:
    home = tmp_path / "lab home 100%"
    home.mkdir()
    args = (
        ("watch", tmp_path, "--sync", "--metrics", "127.0.0.1:9464", "--max-lag", "600")
        if kind == "watch"
        else ("relay", "--listen", "127.0.0.1:8700", "--upstream", "http://api.test",
              "--metrics", "127.0.0.1:9465")
    )  # fmt: skip
    run = cli(home, *args, "--print-unit")
    assert run.code == 0 and run.err == "", run.err
    got = unit_lines(run.out)
    assert got["Type"] == ["notify"] and int(got["WatchdogSec"][0]) >= 30
    assert got["NoNewPrivileges"] == ["yes"] and got["PrivateTmp"] == ["yes"]
    assert got["ProtectSystem"] == ["strict"]
    escaped = str(home).replace("%", "%%")
    assert got["ReadWritePaths"] == [f'"-{escaped}"']  # the store's directory, and no other
    # The key may live in config.toml (what `logbook config path` prints): the environment
    # file beside it is optional ("-"), so the service starts without one.
    config_path = cli(home, "config", "path").out.strip()
    assert config_path == str(home / "config.toml")
    assert got["EnvironmentFile"] == [f"-{escaped}/service.env"]
    assert f"{escaped}/config.toml" in run.out
    assert "--metrics 127.0.0.1:" in got["ExecStart"][0]
    if kind == "watch":
        assert "--max-lag 600" in got["ExecStart"][0]


def test_a_unit_for_a_store_elsewhere_may_write_there(tmp_path: Path) -> None:
    home, store_dir = tmp_path / "home", tmp_path / "stores"
    home.mkdir()
    store_dir.mkdir()
    run = cli(home, "--db", store_dir / "lab.db", "watch", tmp_path, "--print-unit")
    assert unit_lines(run.out)["ReadWritePaths"] == [f"-{home} -{store_dir}"]


def test_print_unit_warns_about_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    run = cli(home, "watch", tmp_path / "typo", "--print-unit")
    assert run.code == 0 and "ExecStart=" in run.out
    assert "typo does not exist (yet): the service exits 2 until it does" in run.err
    fresh = cli(tmp_path / "no-home-yet", "watch", tmp_path, "--print-unit")
    assert "no-home-yet does not exist yet: create it" in fresh.err


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("kind", ["watch", "relay"])
def test_systemd_reads_the_units_without_a_complaint(tmp_path: Path, kind: str) -> None:
    home = tmp_path / 'odd "home" 100% $HOME'
    home.mkdir()
    args = (
        ("watch", tmp_path, "--sync", "--metrics", "127.0.0.1:9464")
        if kind == "watch"
        else ("relay", "--listen", "0.0.0.0:8700", "--upstream", "http://api.test")
    )
    path = tmp_path / f"logbook-{kind}.service"
    path.write_text(cli(home, *args, "--print-unit").out)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    complaints = [ln for ln in check.stderr.splitlines() if path.name in ln]
    assert check.returncode == 0 and not complaints, check.stderr


def test_the_settings_in_config_toml(tmp_path: Path, logbook_home: Path) -> None:
    """`config` shows a heartbeat URL's host alone; max_lag there is what status judges by."""
    write_config(
        logbook_home,
        ['heartbeat_url = "https://hc-ping.com/5b1e-check-secret"', "max_lag = 0.5",
         f'metrics_textfile = "{tmp_path}/logbook.prom"'],
    )  # fmt: skip
    shown = cli(logbook_home, "config", "--json")
    assert shown.code == 0, shown.err
    settings = shown.json()
    assert settings["heartbeat_url"]["value"] == "https://hc-ping.com/..."
    assert settings["max_lag"]["value"] == "0.5"
    assert "check-secret" not in shown.out + cli(logbook_home, "config").out
    seed_store(logbook_home, 1)
    wait_until(
        lambda: cli(logbook_home, "status").out.splitlines()[-1].startswith("not ready: 1 "),
        what="status judging by max_lag from config.toml",
    )
    assert (
        cli(logbook_home, "status", "--max-lag", "3600")
        .out.splitlines()[-1]
        .startswith("ready: 1 undelivered")
    )
    write_config(logbook_home, ['heartbeat_url = "hc-ping.com/x"'])
    bad = cli(logbook_home, "status")
    assert bad.code == 2 and "heartbeat_url must start with http:// or https://" in bad.err
