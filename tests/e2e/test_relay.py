"""``logbook relay``, end to end: lab machines -> relay -> emulator, all real processes on loopback.

What a lab would check: every job reaches the API once, whatever fails in
between (the upstream down for a while, the relay killed with SIGKILL); the
ids and statuses come back; a wrong relay key is refused; the upstream key
never leaves the relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest
import trustme
from netsupport import write_server_cert
from relaysupport import UP_KEY, RelayProcess, free_port
from support import (
    assert_no_key,
    cli,
    dump_db,
    entries,
    seed_store,
    started,
    states,
    sync_until_done,
    wait_until,
)

from logbook.emulator.testing import EmulatorProcess
from logbook.relay import COMMIT_BATCH


def lab(tmp_path: Path, name: str, n: int) -> Path:
    home = tmp_path / name
    seed_store(home, n, experiment=f"exp-{name}")
    return home


def upstream_pairs(emu: EmulatorProcess) -> list[tuple[str, str]]:
    return [(j["experiment_id"], j["hash"]) for j in emu.jobs()]


def test_keys_are_shown_once_stored_hashed_and_revocable(relay: RelayProcess) -> None:
    key = relay.add_key("lab-pc-1")
    assert key.startswith("lbr_") and len(key) > 30
    listed = cli(relay.home, "relay", "key", "list", "--json")
    assert [k["name"] for k in listed.json()] == ["lab-pc-1"] and key not in listed.out
    assert key not in dump_db(relay.home / "logbook.db")
    again = cli(relay.home, "relay", "key", "add", "lab-pc-1")
    assert again.code == 2 and "exists" in again.err
    assert cli(relay.home, "relay", "key", "revoke", "lab-pc-1").code == 0
    assert cli(relay.home, "relay", "key", "revoke", "nobody").code == 1


def test_two_labs_through_the_relay_with_the_upstream_down_for_a_while(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    keys = {name: relay.add_key(name) for name in ("lab-a", "lab-b")}
    homes = {name: lab(tmp_path, name, 40) for name in keys}
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()  # the internet is down
    relay.start()
    for name, home in homes.items():
        run = cli(home, "--stats", "0", "sync", "--json", env=relay.env_for_lab(keys[name]))
        assert run.code == 0, run.err  # durable at the relay: done for the lab machine
        assert states(home / "logbook.db")["synced"] == 40
    status = cli(relay.home, "relay", "status", "--json").json()
    assert status["backlog"] == 80 and status["oldest_unforwarded"]
    assert set(status["clients"]) == {"lab-a", "lab-b"}
    assert status["last_upstream_contact"] is None  # the upstream never answered
    upstream.extra_args = ("--port", port)
    upstream.start()  # back, on the same address
    wait_until(lambda: upstream.stats()["jobs_created"] >= 80, 60, "the relay to forward")
    stats = upstream.stats()
    assert stats["jobs_created"] == 80 and stats["duplicates"] == 0
    expected = {
        (e["experiment_id"], e["hash"]) for h in homes.values() for e in entries(h / "logbook.db")
    }
    assert set(upstream_pairs(upstream)) == expected

    # Ids and statuses flow back: a lab's refresh ends with every entry Done.
    def all_done() -> bool:
        for name, home in homes.items():
            cli(home, "--stats", "0", "sync", env=relay.env_for_lab(keys[name]))
        return all(
            e["remote_status"] == "Done" for h in homes.values() for e in entries(h / "logbook.db")
        )

    wait_until(all_done, 60, "every lab entry to be Done")
    shown = cli(homes["lab-a"], "show", "1").out
    upstream_ids = {j["id"] for j in upstream.jobs()}
    assert "server id:        relay-" in shown
    assert any(f"API id:           {uid}" in shown for uid in upstream_ids), shown
    status = cli(relay.home, "relay", "status", "--json").json()
    assert status["backlog"] == 0 and status["oldest_unforwarded"] is None
    assert status["last_upstream_contact"]  # when it last reached the API
    assert relay.stop() == 0  # SIGTERM: drained, exit 0
    log = relay.log.read_text()
    assert_no_key(log, UP_KEY, "relay log")
    for home in homes.values():
        assert_no_key(dump_db(home / "logbook.db"), UP_KEY, "a lab store")


def test_a_repeated_post_returns_the_job_the_relay_holds(relay: RelayProcess) -> None:
    key = relay.add_key("lab")
    relay.start()
    body = {"experiment_id": "dup", "hash": "h-1", "results": '{"00": 1}'}
    with httpx2.Client(base_url=relay.url, timeout=10) as c:
        first = c.post("/jobs", params={"HAIQU_API_KEY": key}, json=body).json()
        second = c.post("/jobs", headers={"authorization": key}, json=body).json()
        assert first["id"] == second["id"] and first["id"].startswith("relay-")
        by_id = c.get(f"/jobs/{first['id']}", params={"HAIQU_API_KEY": key}).json()
        by_hash = c.get(
            "/experiments/dup/jobs/h-1", headers={"authorization": f"Bearer {key}"}
        ).json()
        assert by_id["id"] == by_hash["id"] == first["id"]
        # Like the API: 422 for a bad body or bad JSON, 404 for an unknown route, 401 for a bad key.
        assert c.post("/jobs", params={"HAIQU_API_KEY": key}, json={"hash": "x"}).status_code == 422
        bad = c.post("/jobs", params={"HAIQU_API_KEY": key}, content=b"{nope")
        assert bad.status_code == 422 and "detail" in bad.json()
        assert c.get("/nowhere", params={"HAIQU_API_KEY": key}).status_code == 404
        assert c.post("/jobs", params={"HAIQU_API_KEY": "lbr_wrong"}, json=body).status_code == 401
        big = c.post(
            "/jobs", params={"HAIQU_API_KEY": key}, content=b"{" + b" " * (17 << 20) + b"}"
        )
        assert big.status_code == 413
    with sqlite3.connect(relay.home / "logbook.db") as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1


def test_a_wrong_relay_key_is_exit_3_and_changes_nothing(
    tmp_path: Path, relay: RelayProcess
) -> None:
    relay.add_key("lab")
    home = lab(tmp_path, "lab", 5)
    relay.start()
    run = cli(home, "--stats", "0", "sync", env=relay.env_for_lab("lbr_not-a-key"))
    assert run.code == 3, run.err
    assert states(home / "logbook.db")["pending"] == 5


def test_a_key_revoked_while_the_relay_runs_is_refused(tmp_path: Path, relay: RelayProcess) -> None:
    key = relay.add_key("lab")
    home = lab(tmp_path, "lab", 5)
    relay.start()
    env = relay.env_for_lab(key)
    assert cli(home, "--stats", "0", "sync", env=env).code == 0
    assert cli(relay.home, "relay", "key", "revoke", "lab").code == 0  # the relay keeps running

    def refused() -> bool:
        with httpx2.Client(base_url=relay.url, timeout=30) as c:
            res = c.get("/experiments/exp-lab/jobs/none", params={"HAIQU_API_KEY": key})
        return res.status_code == 401

    wait_until(refused, 30, "the running relay to refuse the revoked key")
    seed_store(home, 3, experiment="exp-lab-later")
    run = cli(home, "--stats", "0", "sync", env=env)
    assert run.code == 3, run.err
    assert states(home / "logbook.db") == {"pending": 3, "sending": 0, "synced": 5, "rejected": 0}


def test_a_watcher_syncs_through_the_relay(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """``logbook watch --sync`` on a lab machine, pointed at the relay, changes nothing else."""
    key = relay.add_key("watcher")
    relay.start()
    home, results = tmp_path / "lab", tmp_path / "results"
    results.mkdir()
    args = ("watch", results, "-e", "exp-watch", "--sync", "--settle", "0.1")
    with started(home, *args, env=relay.env_for_lab(key)) as proc:
        for i in range(5):
            (results / f"r{i}.json").write_text(json.dumps({"hash": f"w{i}", "results": {"0": i}}))

        def forwarded() -> bool:
            assert proc.poll() is None, "the watcher stopped"
            return upstream.stats()["jobs_created"] >= 5

        wait_until(forwarded, 60, "the watcher's jobs upstream through the relay")
        wait_until(
            lambda: states(home / "logbook.db")["synced"] == 5, 60, "the lab's entries synced"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    stats = upstream.stats()
    assert stats["jobs_created"] == 5 and stats["duplicates"] == 0
    assert {h for _, h in upstream_pairs(upstream)} == {f"w{i}" for i in range(5)}


def test_the_haiqu_sdk_client_posts_through_the_relay(
    relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    sdk = pytest.importorskip("haiqu.sdk.api_client")
    from haiqu.sdk.schemas import LocalJobSubmitModel

    key = relay.add_key("sdk")
    relay.start()
    client = sdk.ApiClient(rest_api_uri=relay.url + "/", api_access_key=key)
    job = LocalJobSubmitModel(
        experiment_id="sdk-exp", hash="sdk-h", results='{"0": 3}', shots="[3]",
        name="from the SDK", status="Done", job_type="User local job",
    )  # fmt: skip
    created = client.submit_job(job)
    assert str(created.id).startswith("relay-") and created.hash == "sdk-h"
    # The SDK's own duplicate check goes through the relay too.
    assert client.get_job(experiment_id="sdk-exp", job_hash="sdk-h").id == created.id
    wait_until(lambda: upstream.stats()["jobs_created"] == 1, 30, "the job upstream")
    assert upstream.jobs()[0]["hash"] == "sdk-h"


def test_killing_the_relay_loses_nothing_and_doubles_nothing(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """SIGKILL in a loop while lab machines post and while it forwards; then a final sync.

    A relay restarted on its own store keeps every id it gave: no lab ever offers a job
    again, and every lab entry ends confirmed with the API's id.
    """
    keys = {name: relay.add_key(name) for name in ("k1", "k2")}
    homes = {name: lab(tmp_path, name, 100) for name in keys}
    # slow enough upstream that labs refresh entries the relay has not forwarded yet
    upstream.set_faults(latency_ms=400, routes="*")
    relay.start()
    stop = threading.Event()
    said: list[str] = []

    def lab_syncs(name: str) -> None:
        while not stop.is_set():
            run = cli(homes[name], "--stats", "0", "-v", "sync", "--concurrency", "8",
                      env=relay.env_for_lab(keys[name]), timeout=120)  # fmt: skip
            said.append(run.out + run.err)  # on and on: refreshes meet every restart

    threads = [threading.Thread(target=lab_syncs, args=(n,)) for n in keys]
    for t in threads:
        t.start()

    def progress() -> int:
        """Jobs the relay holds plus jobs upstream: it grows while lab machines post and it
        forwards.
        """
        return len(entries(relay.home / "logbook.db")) + upstream.stats()["jobs_created"]

    most = 2 * 2 * 100  # every job in the relay's store and upstream: progress stops there
    try:
        for _ in range(2):
            target = min(progress() + 20, most)
            wait_until(lambda: progress() >= target, 60, "traffic before the kill")  # noqa: B023
            relay.kill()  # mid-stream: lab machines are posting and the relay is forwarding
            relay.start()
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    for name, home in homes.items():
        said += [r.out + r.err for r in sync_until_done(home, relay.env_for_lab(keys[name]))]
    upstream.clear_faults()
    wait_until(lambda: upstream.stats()["jobs_created"] >= 200, 90, "everything upstream")
    stats = upstream.stats()
    assert stats["duplicates"] == 0 and stats["jobs_created"] == 200, stats
    expected = {
        (e["experiment_id"], e["hash"]) for h in homes.values() for e in entries(h / "logbook.db")
    }
    assert set(upstream_pairs(upstream)) == expected

    def confirmed() -> bool:
        for name, home in homes.items():
            run = cli(home, "--stats", "0", "-v", "sync", env=relay.env_for_lab(keys[name]))
            said.append(run.out + run.err)
        return all(cli(h, "status", "--json").json()["unconfirmed"] == 0 for h in homes.values())

    wait_until(confirmed, 90, "every lab entry confirmed")
    assert not [s for s in said if "offered again" in s or "offering" in s], "a job re-offered"


def test_one_client_flooding_does_not_starve_another(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY, extra=("--max-in-flight", "4"))
    flood, calm = relay.add_key("flood"), relay.add_key("calm")
    relay.start()
    db = relay.home / "logbook.db"
    # Hold the store's write lock so that requests stay in flight.
    locker = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None);"
         " c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(3);"
         " c.execute('COMMIT')", str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"

        retry_afters: list[str | None] = []

        def post(key: str, i: int) -> int:
            body = {"experiment_id": "fair", "hash": f"{key[-6:]}-{i}"}
            with httpx2.Client(base_url=relay.url, timeout=30) as c:
                res = c.post("/jobs", params={"HAIQU_API_KEY": key}, json=body)
            if res.status_code == 429:
                retry_afters.append(res.headers.get("Retry-After"))
            return res.status_code

        results: dict[str, list[int]] = {"flood": [], "calm": []}
        threads = [
            threading.Thread(target=lambda i=i: results["flood"].append(post(flood, i)))
            for i in range(12)
        ]
        for t in threads:
            t.start()
        wait_until(
            lambda: len(results["flood"]) >= 8, 20, "the flood to be refused beyond its share"
        )
        calm_threads = [
            threading.Thread(target=lambda i=i: results["calm"].append(post(calm, i)))
            for i in range(2)
        ]
        for t in calm_threads:
            t.start()
        for t in threads + calm_threads:
            t.join(60)
    finally:
        locker.wait(30)
        relay.stop()
    assert results["flood"].count(429) >= 8, results
    assert results["calm"] == [200, 200], results
    # every refusal says when to come back, as the API's own 429 does
    assert retry_afters and all(ra and ra.isdigit() and int(ra) >= 1 for ra in retry_afters), (
        retry_afters
    )


def test_sigterm_drains_and_exits_0(tmp_path: Path, relay: RelayProcess) -> None:
    key = relay.add_key("lab")
    home = lab(tmp_path, "lab", 60)
    relay.start()
    with started(
        home, "--stats", "0", "sync", "--concurrency", "16", env=relay.env_for_lab(key)
    ) as proc:
        wait_until(lambda: states(home / "logbook.db")["synced"] > 0, 30, "the first jobs")
        assert relay.stop(signal.SIGTERM) == 0
        proc.wait(60)
    # Whatever the lab machine counts as synced, the relay committed.
    held = {(e["experiment_id"], e["hash"]) for e in entries(relay.home / "logbook.db")}
    done = {
        (e["experiment_id"], e["hash"])
        for e in entries(home / "logbook.db")
        if e["state"] == "synced"
    }
    assert done <= held


def test_relay_doctor(relay: RelayProcess, upstream: EmulatorProcess) -> None:
    relay.add_key("lab")
    relay.start()
    run = cli(relay.home, "relay", "doctor", "--upstream", upstream.url, "--url", relay.url,
              env={"HAIQU_API_KEY": UP_KEY})  # fmt: skip
    assert run.code == 0, run.out + run.err
    assert "listening at" in run.out and "accepts the key" in run.out
    bad = cli(
        relay.home, "relay", "doctor", "--upstream", upstream.url, env={"HAIQU_API_KEY": "wrong"}
    )
    assert bad.code == 1 and "refused the key" in bad.out


def test_print_unit(relay: RelayProcess) -> None:
    run = cli(
        relay.home,
        "relay",
        "--listen",
        "0.0.0.0:8700",
        "--upstream",
        "https://api.example.test",
        "--max-connections-per-client",
        "64",
        "--print-unit",
    )
    assert run.code == 0 and "ExecStart=" in run.out and "relay --listen 0.0.0.0:8700" in run.out
    assert "--max-connections-per-client 64" in run.out  # the limits given are kept
    assert "\nLimitNOFILE=65536\n" in run.out  # room for --max-connections
    # The service reads the store that `relay key add` wrote its keys to, in that shell.
    assert f'Environment="LOGBOOK_HOME={relay.home.absolute()}"' in run.out.splitlines()
    assert "@HOME@" not in run.out


def test_a_relay_listening_with_tls_takes_syncs_from_machines_that_trust_its_ca(
    tmp_path: Path, upstream: EmulatorProcess, ca: trustme.CA, ca_file: str
) -> None:
    cert, key = write_server_cert(ca, tmp_path)
    relay = RelayProcess(
        tmp_path / "relay", upstream.url, UP_KEY, extra=("--tls-cert", cert, "--tls-key", key)
    )
    lab_key = relay.add_key("lab-tls")
    relay.start()
    try:
        assert relay.url.startswith("https://127.0.0.1:"), relay.url
        home = lab(tmp_path, "lab-tls", 10)
        env = relay.env_for_lab(lab_key)
        untrusted = cli(home, "--stats", "0", "sync", env=env)
        assert untrusted.code == 4, untrusted.err  # a certificate it cannot verify: unreachable
        assert "certificate" in untrusted.err and "SSL_CERT_FILE" in untrusted.err
        assert states(home / "logbook.db")["pending"] == 10  # nothing changed
        trusted = cli(home, "--stats", "0", "sync", env={**env, "SSL_CERT_FILE": ca_file})
        assert trusted.code == 0, trusted.err
        assert states(home / "logbook.db")["synced"] == 10
        wait_until(lambda: upstream.stats()["jobs_created"] == 10, 60, "the relay to forward")
    finally:
        assert relay.stop() == 0


def _sockets(pid: int) -> int:
    """How many sockets process ``pid`` holds open (Linux /proc)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return n


def _hold_write_lock(db: Path) -> subprocess.Popen[str]:
    """Another process holding the store's write lock until a line arrives on its stdin."""
    locker = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None);"
         " c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.readline();"
         " c.execute('COMMIT')", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets in /proc")
def test_more_posts_at_once_than_one_commit_holds_are_all_answered_and_stored(
    tmp_path: Path,
) -> None:
    """1,200 concurrent POSTs pile up behind a held write lock, more than ``COMMIT_BATCH``:
    once it is released every one is answered 2xx with its own job, and all are stored."""
    n = 1200
    assert n > 2 * COMMIT_BATCH
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3 * n:
        pytest.skip(f"needs {3 * n} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 3 * n), hard))  # the relay inherits it
    upstream_down = f"http://127.0.0.1:{free_port()}"  # nothing forwards meanwhile
    relay = RelayProcess(
        tmp_path / "relay", upstream_down, UP_KEY,
        extra=(
            "--max-in-flight", str(2 * n), "--max-connections", str(2 * n),
            "--max-connections-per-client", str(2 * n),
        ),
    )  # fmt: skip
    key = relay.add_key("lab")
    locker: subprocess.Popen[str] | None = None
    try:
        relay.start()
        assert relay.proc is not None
        relay_pid = relay.proc.pid
        locker = _hold_write_lock(relay.home / "logbook.db")
        bodies = [
            {"experiment_id": f"flood-{i % 2}", "hash": f"h{i // 2}", "results": '{"0": 1}'}
            for i in range(n)
        ]

        async def flood() -> list[httpx2.Response]:
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
            async with httpx2.AsyncClient(
                base_url=relay.url, timeout=60, limits=limits,
                headers={"authorization": key},
            ) as client:  # fmt: skip
                posts = [asyncio.ensure_future(client.post("/jobs", json=b)) for b in bodies]
                await asyncio.to_thread(
                    wait_until, lambda: _sockets(relay_pid) >= n, 60, "every POST at the relay"
                )
                assert not any(p.done() for p in posts)  # held behind the lock
                assert locker is not None and locker.stdin is not None
                locker.stdin.write("release\n")
                locker.stdin.flush()
                return await asyncio.gather(*posts)

        answers = asyncio.run(flood())
        assert [a.status_code for a in answers] == [200] * n
        jobs = [a.json() for a in answers]
        assert [(j["experiment_id"], j["hash"]) for j in jobs] == [
            (b["experiment_id"], b["hash"]) for b in bodies
        ]
        assert len({j["id"] for j in jobs}) == n
        assert relay.stop() == 0
    finally:
        if locker is not None:
            if locker.poll() is None:
                locker.kill()
            locker.communicate()
        relay.stop()
    with sqlite3.connect(relay.home / "logbook.db") as conn:
        rows = conn.execute("SELECT id, experiment_id, hash FROM entries").fetchall()
    assert len(rows) == n
    assert {(f"relay-{i}", e, h) for i, e, h in rows} == {
        (j["id"], j["experiment_id"], j["hash"]) for j in jobs
    }
