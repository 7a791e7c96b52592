"""``logbook relay`` against hostile lab clients: real sockets against a real relay process.

What an operator would check: half-open and idle connections are closed, one
address cannot hold every connection, a flood never runs the relay out of
descriptors (its limit lowered with ``resource.setrlimit``), its log stays
small and holds no key, odd ids are a 404, and large bodies never take its
memory without bound.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
from pathlib import Path

import httpx2
import psutil
import pytest
from relaysupport import UP_KEY, RelayProcess, free_port
from support import assert_no_key, cli, seed_store, states, wait_until

from logbook.emulator.testing import EmulatorProcess

PARTIAL = b"GET /jobs/relay-1 HTTP/1.1\r\nHost: relay\r\n"  # the headers never end


def connect(port: int, data: bytes = b"", source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if data:
        s.sendall(data)
    return s


def closed(s: socket.socket) -> bool:
    """Whether the relay closed ``s`` (what it sent first, a 408 or 400, is read and dropped)."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def answer(s: socket.socket) -> bytes:
    s.settimeout(20)
    return s.recv(65536)


def test_half_open_idle_and_stalled_connections_are_closed(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY,
                         extra=("--header-timeout", "1", "--idle-timeout", "2"))  # fmt: skip
    key = relay.add_key("lab")
    relay.start()
    socks: list[socket.socket] = []
    try:
        partial = connect(relay.port, PARTIAL)
        silent = connect(relay.port)
        kept = connect(relay.port, f"GET /jobs/relay-1?HAIQU_API_KEY={key} HTTP/1.1\r\n"
                       "Host: relay\r\n\r\n".encode())  # fmt: skip
        stalled = connect(relay.port, f"POST /jobs?HAIQU_API_KEY={key} HTTP/1.1\r\nHost: relay"
                          "\r\nContent-Length: 100\r\n\r\n{\"experim".encode())  # fmt: skip
        socks = [partial, silent, kept, stalled]
        assert answer(kept).startswith(b"HTTP/1.1 404"), "a complete request is answered"
        assert answer(stalled).startswith(b"HTTP/1.1 408"), "a body that stalls is a 408"
        names = ("half-open", "silent", "idle keep-alive", "stalled")
        for name, s in zip(names, socks, strict=True):
            wait_until(lambda s=s: closed(s), 30, f"the relay to close the {name} connection")
        log = relay.log_text()
    finally:
        for s in socks:
            s.close()
        relay.stop()
    assert "Traceback" not in log
    assert "--header-timeout" in log  # the half-open one is named, once


def test_one_address_cannot_hold_every_connection(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(
        tmp_path / "relay", upstream.url, UP_KEY,
        extra=("--max-connections-per-client", "20", "--header-timeout", "300"),
    )  # fmt: skip
    key = relay.add_key("lab")
    relay.start()
    flood = [connect(relay.port, PARTIAL) for _ in range(60)]
    try:
        # Those over the cap are closed at once (not after the 300 s header timeout).
        wait_until(lambda: sum(closed(s) for s in flood) >= 40, 30, "40 connections closed")
        assert sum(closed(s) for s in flood) == 40
        # Another address is served meanwhile.
        lab = connect(relay.port, f"GET /jobs/relay-1 HTTP/1.1\r\nHost: relay\r\n"
                      f"Authorization: {key}\r\n\r\n".encode(), source="127.0.0.2")  # fmt: skip
        assert answer(lab).startswith(b"HTTP/1.1 404")
        lab.close()
        log = relay.log_text()
    finally:
        for s in flood:
            s.close()
        relay.stop()
    lines = [line for line in log.splitlines() if "--max-connections-per-client" in line]
    assert len(lines) == 1, log  # 40 refusals, one line a minute


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


def test_a_flood_from_many_addresses_never_runs_the_relay_out_of_descriptors(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    """600 half-open connections from 6 addresses against a relay allowed 512 descriptors:
    it keeps its descriptors, closes them after the header timeout, and a lab syncs."""
    relay = RelayProcess(
        tmp_path / "relay", upstream.url, UP_KEY, preexec_fn=_few_descriptors,
        extra=("--max-connections-per-client", "1000", "--header-timeout", "2"),
    )  # fmt: skip
    key = relay.add_key("lab")
    home = tmp_path / "lab"
    seed_store(home, 5, experiment="exp-lab")
    relay.start()
    proc = psutil.Process(relay.pid)
    most_fds = [proc.num_fds()]
    flood = [connect(relay.port, PARTIAL, source=f"127.0.0.{2 + i % 6}") for i in range(600)]
    try:
        # 512 descriptors, less the reserve for its store (64) and its upstream pool (four
        # times the concurrency: a look-up and a post a job): it takes the 192 left, no more
        wait_until(lambda: most_fds.append(proc.num_fds()) or most_fds[-1] > 150, 30,
                   "the relay to take connections")  # fmt: skip
        run = cli(home, "--stats", "0", "sync", env=relay.env_for_lab(key), timeout=120)
        most_fds.append(proc.num_fds())
        assert relay.proc is not None and relay.proc.poll() is None, "the relay is alive"
        log = relay.log_text()
    finally:
        for s in flood:
            s.close()
        relay.stop()
    assert run.code == 0, run.err
    assert states(home / "logbook.db")["synced"] == 5
    assert max(most_fds) < 512
    assert "Traceback" not in log
    assert len(log.splitlines()) < 20, log
    assert "out of file descriptors" not in log  # the cap kept it below its limit
    assert "LimitNOFILE" in log  # and it said why it allows fewer connections than asked


def test_malformed_requests_are_one_line_each_and_never_log_a_key(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    """The canary: a relay key and the upstream key in malformed request lines and headers
    (which aiohttp would log with a traceback quoting them), and in well-formed requests."""
    for fmt in ("text", "json"):
        relay = RelayProcess(tmp_path / f"relay-{fmt}", upstream.url, UP_KEY,
                             extra=("--log-format", fmt))  # fmt: skip
        key = relay.add_key("lab")
        relay.start()
        try:
            for raw in (
                f"GET /jobs/relay-1?HAIQU_API_KEY={key} HTTP/1.1 x\r\nHost: a\r\n\r\n",
                f"GET /jobs/relay-1 HTTP/1.1\r\nHost: a\r\nAuthorization: {key}\x7f\r\n\r\n",
                f"GET /jobs/relay-1 HTTP/1.1\r\nHost: a\r\nAuthorization: {UP_KEY}\x7f\r\n\r\n",
                f"GET /jobs/relay-1?HAIQU_API_KEY={UP_KEY} HTTP/1.1 x\r\nHost: a\r\n\r\n",
                f"GET /jobs/relay-1?HAIQU_API_KEY={key}x HTTP/1.1\r\nHost: a\r\n\r\n",
            ):
                s = connect(relay.port, raw.encode())
                assert answer(s)[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 401")
                s.close()
            wait_until(lambda r=relay: "request from 127.0.0.1" in r.log_text(), 20, "a log line")
            for _ in range(30):  # a flood of them is not a flood of lines
                s = connect(relay.port, b"GET / HTTP/1.1 x\r\n\r\n")
                answer(s)
                s.close()
        finally:
            relay.stop()
        log = relay.log_text()
        for secret in (key, UP_KEY):
            assert_no_key(log, secret, f"the relay's log ({fmt})")
        assert "Traceback" not in log
        assert 1 <= sum("request from 127.0.0.1" in line for line in log.splitlines()) <= 3, log
        for line in log.splitlines():
            if fmt == "json":
                json.loads(line)  # one JSON object a line
            else:
                assert line[:4].isdigit() and " logbook: " in line, line  # one line a record


@pytest.mark.parametrize("job_id", ["relay-²", "relay-١", "relay-１", "relay-1²", "relay-+1"])
def test_an_id_that_is_not_ascii_digits_is_a_404(
    tmp_path: Path, upstream: EmulatorProcess, job_id: str
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY)
    key = relay.add_key("lab")
    relay.start()
    try:
        with httpx2.Client(base_url=relay.url, timeout=30, params={"HAIQU_API_KEY": key}) as c:
            body = {"experiment_id": "odd", "name": "one", "results": "{}"}
            assert c.post("/jobs", json=body).json()["id"] == "relay-1"
            assert c.get("/jobs/relay-1").status_code == 200
            res = c.get(f"/jobs/{job_id}")
        log = relay.log_text()
    finally:
        relay.stop()
    assert res.status_code == 404, res.text
    assert "Traceback" not in log and "failed" not in log


def _big_body(i: int, size: int) -> bytes:
    counts = {format(j, "020b") + f"-{i}": j for j in range(size // 38)}
    doc = {"experiment_id": "big", "name": f"big {i}", "results": json.dumps(counts)}
    return json.dumps(doc).encode()


def test_concurrent_large_posts_never_take_memory_without_bound(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    """24 lab posts of 15 MB at once (about 1.3 GB of the relay's memory before the cap)."""
    relay = RelayProcess(tmp_path / "relay", f"http://127.0.0.1:{free_port()}", UP_KEY)
    key = relay.add_key("lab")
    relay.start()
    proc = psutil.Process(relay.pid)
    rss = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss.append(proc.memory_info().rss)
            done.wait(0.02)

    bodies = [_big_body(i, 15 * 1024 * 1024) for i in range(24)]
    answers: list[tuple[int, str | None]] = []

    def post(body: bytes) -> None:
        res = httpx2.post(
            f"{relay.url}/jobs", content=body, params={"HAIQU_API_KEY": key}, timeout=300,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        answers.append((res.status_code, res.headers.get("retry-after")))

    sampler = threading.Thread(target=sample)
    sampler.start()
    posters = [threading.Thread(target=post, args=(b,)) for b in bodies]
    try:
        for t in posters:
            t.start()
        for t in posters:
            t.join(300)
    finally:
        done.set()
        sampler.join()
        alive = relay.proc is not None and relay.proc.poll() is None
        relay.stop()
    assert alive and len(answers) == 24
    assert {code for code, _ in answers} <= {200, 429}, answers
    assert any(code == 200 for code, _ in answers)
    assert all(ra == "1" for code, ra in answers if code == 429)
    assert max(rss) < 768 * 1024 * 1024, f"peak RSS {max(rss) / 2**20:.0f} MiB"


def test_a_body_that_could_never_fit_is_a_413(tmp_path: Path, upstream: EmulatorProcess) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY,
                         extra=("--max-mb-in-flight-per-client", "1"))  # fmt: skip
    key = relay.add_key("lab")
    relay.start()
    try:
        res = httpx2.post(f"{relay.url}/jobs", content=_big_body(0, 2 * 1024 * 1024),
                          params={"HAIQU_API_KEY": key}, timeout=60,
                          headers={"content-type": "application/json"})  # fmt: skip
        small = httpx2.post(f"{relay.url}/jobs", params={"HAIQU_API_KEY": key}, timeout=60,
                            json={"experiment_id": "s", "name": "small"})  # fmt: skip
    finally:
        relay.stop()
    assert res.status_code == 413
    assert small.status_code == 200
