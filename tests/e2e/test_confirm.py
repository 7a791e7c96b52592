"""A job is delivered when the API has it: end-to-end confirmation through a relay.

Real processes on loopback: lab machines (``logbook sync``), a relay, and its
upstream (the emulator).  Each scenario loses the relay's store in one way
(restored from a backup, put back to a snapshot, a fresh relay on the same
address) and is judged where it counts: the upstream holds exactly one job per
``(experiment_id, hash)``, and every lab entry names that job's API id.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from relaysupport import UP_KEY, RelayProcess
from support import (
    backup,
    cli,
    make_jobs,
    put_back,
    seed_store,
    set_row,
    started,
    states,
    wait_until,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess
from logbook.store import Store

N = 30


class Lab:
    """A lab machine: its own home and store, and the relay key it syncs with."""

    def __init__(
        self, tmp_path: Path, name: str, relay: RelayProcess, n: int = N, *,
        experiment: str | None = None, start: int = 0,
    ) -> None:  # fmt: skip
        self.name, self.relay = name, relay
        self.home = tmp_path / name
        self.home.mkdir(parents=True)
        self.db = self.home / "logbook.db"
        with Store(self.db) as s:
            assert s.record_many(make_jobs(n, experiment or f"exp-{name}", start))[0] == n
        self.key = relay.add_key(name)

    def sync(self, *args: str, endpoint: str | None = None, key: str | None = None) -> str:
        env = {"HAIQU_EDGE_URI": endpoint or self.relay.url, "HAIQU_API_KEY": key or self.key}
        run = cli(self.home, "--stats", "0", "-v", "sync", *args, env=env, timeout=120)
        assert run.code in (0, 1), run.err
        return run.out + run.err

    def entries(self) -> list[dict[str, object]]:
        with Store(self.db) as s:
            return [
                {**e.to_dict(), "upstream_id": e.upstream_id, "via": e.via, "api_id": e.api_id,
                 "confirmed": e.confirmed}
                for e in s.entries(newest_first=False)
            ]  # fmt: skip

    def confirmed(self) -> bool:
        return all(e["confirmed"] for e in self.entries())


def wait_confirmed(labs: list[Lab], **sync: str) -> None:
    def done() -> bool:
        for lab in labs:
            lab.sync(**sync)
        return all(lab.confirmed() for lab in labs)

    wait_until(done, 90, "every lab entry to name its API id")


def judge(upstream: EmulatorProcess, labs: list[Lab]) -> None:
    """Exactly one job per identity upstream, and each lab entry names that job's id."""
    stats = upstream.stats()
    want = sum(len(lab.entries()) for lab in labs)
    assert stats["duplicates"] == 0 and stats["jobs_created"] == want, stats
    by_identity = {(j["experiment_id"], j["hash"]): j["id"] for j in upstream.jobs()}
    for lab in labs:
        for e in lab.entries():
            assert e["state"] == "synced" and e["confirmed"], e
            assert e["api_id"] == by_identity[e["experiment_id"], e["hash"]], e


def restore(relay: RelayProcess, copy: Path) -> None:
    """The relay's disk is put back to ``copy``: stop it, replace its store, start it again."""
    assert relay.stop() == 0
    put_back(copy, relay.home / "logbook.db")
    relay.start()


def test_a_relay_restored_from_a_backup_taken_before_the_labs_synced(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """Scenario 1: the upstream is down while the relay holds the jobs; its disk is then
    replaced by last night's backup.  The labs offer their jobs again on their own.
    """
    labs = [Lab(tmp_path, "lab-a", relay), Lab(tmp_path, "lab-b", relay)]
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()
    relay.start()
    nightly = backup(relay.home / "logbook.db", tmp_path / "nightly.db")
    for lab in labs:
        lab.sync()
        assert states(lab.db)["synced"] == N and not any(e["confirmed"] for e in lab.entries())
    status = cli(labs[0].home, "status", "--json").json()
    assert status["unconfirmed"] == N and status["oldest_unconfirmed"]
    assert 0 <= status["oldest_unconfirmed_age_seconds"] < 600  # the age DESIGN names
    text = cli(labs[0].home, "status").out
    assert f"unconfirmed:    {N} accepted by a relay" in text and "the oldest waits " in text
    restore(relay, nightly)  # every job the relay had accepted is gone
    upstream.extra_args = ("--port", port)
    upstream.start()
    said = labs[0].sync()
    assert f"{N} offered again" in said, said  # the summary says how many and why
    assert "no longer holds them" in said, said  # the -v log says why
    wait_confirmed(labs)
    judge(upstream, labs)


def test_a_backup_restored_after_the_relay_forwarded_everything_posts_nothing_again(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """Scenario 2: the re-offered jobs are already upstream: looked up, never posted again;
    the API ids stay the same.
    """
    labs = [Lab(tmp_path, "lab-a", relay), Lab(tmp_path, "lab-b", relay)]
    relay.start()
    nightly = backup(relay.home / "logbook.db", tmp_path / "nightly.db")
    for lab in labs:
        lab.sync("--no-refresh")
    wait_until(lambda: upstream.stats()["jobs_created"] >= 2 * N, 60, "the relay to forward")
    first_ids = {(j["experiment_id"], j["hash"]): j["id"] for j in upstream.jobs()}
    restore(relay, nightly)
    for lab in labs:
        assert f"{N} offered again" in lab.sync()
    wait_confirmed(labs)
    judge(upstream, labs)
    assert {(j["experiment_id"], j["hash"]): j["id"] for j in upstream.jobs()} == first_ids


def test_a_fresh_relay_on_the_same_address_with_nothing(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """Scenario 3: a new relay (new store, new keys under the same names) hands out the
    same ids again, to other jobs: an answer for another job under an entry's id is a loss
    (one experiment for both labs: only the hash tells their jobs apart).
    """
    labs = [
        Lab(tmp_path, "lab-a", relay, experiment="shared"),
        Lab(tmp_path, "lab-b", relay, experiment="shared", start=N),
    ]
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()  # half of it never got upstream
    relay.start()
    labs[0].sync()
    upstream.extra_args = ("--port", port)
    upstream.start()
    wait_until(lambda: upstream.stats()["jobs_created"] >= N, 60, "lab-a's jobs upstream")
    labs[1].sync("--no-refresh")
    assert relay.stop() == 0
    shutil.rmtree(relay.home)
    keys = {lab.name: relay.add_key(lab.name) for lab in labs}  # a new relay, new keys
    relay.start()
    # lab-b goes first: the fresh relay gives its jobs relay-1.. again, the ids lab-a holds
    assert f"{N} offered again" in labs[1].sync(key=keys["lab-b"])
    assert f"{N} offered again" in labs[0].sync(key=keys["lab-a"])
    for lab in labs:
        lab.key = keys[lab.name]
    wait_confirmed(labs)
    judge(upstream, labs)


def test_a_relay_put_back_to_a_snapshot_of_jobs_it_has_since_forwarded(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """Scenario 3b: the snapshot holds the jobs as not yet forwarded; the relay forwarded
    them all after it was taken.  Started on it, the relay posts nothing again.
    """
    labs = [Lab(tmp_path, "lab-a", relay)]
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()
    relay.start()
    labs[0].sync()
    snapshot = backup(relay.home / "logbook.db", tmp_path / "snapshot.db")
    with sqlite3.connect(snapshot) as conn:  # not yet forwarded (some in a forwarding try)
        held = conn.execute(
            "SELECT count(*) FROM entries WHERE state IN ('pending', 'sending')"
        ).fetchone()[0]
    assert held == N
    upstream.extra_args = ("--port", port)
    upstream.start()
    wait_until(lambda: upstream.stats()["jobs_created"] >= N, 60, "the relay to forward")
    first_ids = {j["id"] for j in upstream.jobs()}
    restore(relay, snapshot)
    assert "offered again" not in labs[0].sync()  # the relay's ids did not change
    wait_confirmed(labs)
    judge(upstream, labs)
    assert {j["id"] for j in upstream.jobs()} == first_ids
    assert f"{N} jobs not yet forwarded" in relay.log.read_text()


def test_a_lab_that_now_syncs_straight_to_the_api_finds_what_the_relay_forwarded(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """The endpoint changed from the relay to the API: unconfirmed entries are looked up
    there first, so a job the relay had forwarded is found, not posted again.
    """
    lab = Lab(tmp_path, "lab-a", relay)
    relay.start()
    lab.sync("--no-refresh")
    wait_until(lambda: upstream.stats()["jobs_created"] >= N, 60, "the relay to forward")
    assert relay.stop() == 0
    said = lab.sync(endpoint=upstream.url, key=UP_KEY)
    assert f"{N} offered again" in said and "no longer the endpoint" in said, said
    judge(upstream, [lab])
    assert all(e["via"] is None for e in lab.entries())  # confirmed by the API itself


def test_a_job_the_api_refuses_reaches_the_lab_as_rejected_and_a_retry_gets_it_through_once(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    lab = Lab(tmp_path, "lab-a", relay, n=3)
    upstream.set_faults(fail_next=1, fail_status=422)  # the API refuses the first job
    relay.start()
    lab.sync("--no-refresh")
    wait_until(lambda: upstream.stats()["jobs_created"] >= 2, 60, "two jobs upstream")

    def one_rejected() -> bool:
        lab.sync()
        return states(lab.db)["rejected"] == 1

    wait_until(one_rejected, 60, "the refusal to reach the lab")
    status = cli(lab.home, "status", "--json").json()
    assert status["counts"]["rejected"] == 1
    rejected = [e for e in lab.entries() if e["state"] == "rejected"]
    assert "API refused it" in str(rejected[0]["last_error"])
    assert "422" in str(rejected[0]["last_error"])
    assert cli(lab.home, "retry", "--all").code == 0
    wait_confirmed([lab])
    judge(upstream, [lab])


def test_two_labs_with_one_identity_and_other_content_are_told_apart(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """The second is never linked to the first's job: 409, and its entry is rejected."""
    a, b = Lab(tmp_path, "lab-a", relay, n=0), Lab(tmp_path, "lab-b", relay, n=0)
    for lab, counts in ((a, '{"00": 1}'), (b, '{"11": 7}')):
        rec = cli(lab.home, "record", "-e", "shared", "--hash", "h-1", "--results", counts)
        assert rec.code == 0, rec.err
    relay.start()
    a.sync()
    b.sync()
    assert states(b.db)["rejected"] == 1
    reason = str(b.entries()[0]["last_error"])
    assert "HTTP 409" in reason and "relay-1" in reason and "other content" in reason, reason
    wait_confirmed([a])
    jobs = upstream.jobs()
    assert len(jobs) == 1 and jobs[0]["results"] == '{"00": 1}'


def test_straight_to_the_api_a_job_it_no_longer_has_is_shown_never_resent(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    home = tmp_path / "lab"
    db = seed_store(home, 5)
    env = {"HAIQU_EDGE_URI": emulator.url, "HAIQU_API_KEY": emulator.key}
    assert cli(home, "sync", "--no-refresh", env=env).code == 0
    emulator.reset()  # the API no longer has them (a person deleted them)
    run = cli(home, "sync", env=env)
    assert run.code == 0, run.err
    assert "5 the API no longer has" in run.out
    status = cli(home, "status", "--json").json()
    assert status["missing"] == 5 and status["counts"]["synced"] == 5
    assert "5 synced jobs the API no longer has" in cli(home, "status").out
    again = cli(home, "sync", env=env)
    assert again.code == 0 and emulator.stats()["jobs_created"] == 0  # never re-sent
    assert "no longer has" not in again.out  # and not asked about again
    set_row(db, 1, missing_at=None)  # keeps the fixture honest: the column is the record
    assert cli(home, "status", "--json").json()["missing"] == 4


def test_a_watcher_offers_again_on_its_own_what_its_relay_lost(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """``watch --sync``: no flag, no manual step; its periodic refresh notices the loss."""
    key = relay.add_key("watcher")
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()
    relay.start()
    nightly = backup(relay.home / "logbook.db", tmp_path / "nightly.db")
    home, results = tmp_path / "lab", tmp_path / "results"
    results.mkdir()
    args = ("watch", results, "-e", "exp-w", "--sync", "--settle", "0.1", "--refresh", "1")
    with started(home, *args, env=relay.env_for_lab(key)) as proc:
        for i in range(5):
            (results / f"r{i}.json").write_text(json.dumps({"hash": f"w{i}", "results": {"0": i}}))
        wait_until(lambda: states(home / "logbook.db")["synced"] == 5, 60, "the relay to take them")
        restore(relay, nightly)
        upstream.extra_args = ("--port", port)
        upstream.start()

        def confirmed() -> bool:
            assert proc.poll() is None, "the watcher stopped"
            with Store(home / "logbook.db", readonly=True) as s:
                return s.counts()["synced"] == 5 and s.unconfirmed()[0] == 0

        wait_until(confirmed, 90, "the watcher to offer its jobs again and see them confirmed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    stats = upstream.stats()
    assert stats["jobs_created"] == 5 and stats["duplicates"] == 0


def relay_states(relay: RelayProcess) -> dict[str, int]:
    with sqlite3.connect(relay.home / "logbook.db") as conn:
        return dict(conn.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())


def test_a_retry_gets_through_a_job_whose_answer_the_lab_never_saw_and_the_api_refused(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """The relay took the job but its answer never reached the lab (the relay was paused:
    the POST timed out), so the lab looks it up before it sends it again.  The API refuses
    it: the lab learns that.  Once the API takes it, the user's ``retry`` gets it through,
    exactly once (the look-up that finds the relay's old refusal must not refuse it again).
    """
    lab = Lab(tmp_path, "lab-a", relay, n=1)
    write_config(lab.home, ["request_timeout = 1"])
    upstream.set_faults(error_rate=1.0, error_status=422)  # the API refuses it, for now
    relay.start()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGSTOP)
    try:
        env = {"HAIQU_EDGE_URI": relay.url, "HAIQU_API_KEY": lab.key}
        run = cli(lab.home, "sync", "--no-refresh", env=env, timeout=120)
        assert run.code in (1, 4), run.err  # no answer: maybe sent
    finally:
        relay.proc.send_signal(signal.SIGCONT)
    assert states(lab.db)["pending"] == 1
    wait_until(lambda: relay_states(relay).get("rejected") == 1, 60, "the API to refuse it")

    def rejected() -> bool:
        lab.sync()
        return states(lab.db)["rejected"] == 1

    wait_until(rejected, 60, "the refusal to reach the lab")
    assert "API refused it" in str(lab.entries()[0]["last_error"])
    upstream.set_faults(error_rate=0.0)  # the API takes it now
    assert cli(lab.home, "retry", "--all").code == 0
    wait_confirmed([lab])
    judge(upstream, [lab])


def test_a_lab_that_goes_straight_to_the_api_while_its_relay_still_holds_the_jobs(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """The relay cannot reach the API (and is then paused), the lab can: the user points the
    lab at the API, which gets every job from the lab.  When the relay comes back it must
    not post them again: it finds them upstream.
    """
    lab = Lab(tmp_path, "lab-a", relay, n=5)
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()  # the relay cannot forward
    relay.start()
    lab.sync("--no-refresh")
    assert states(lab.db)["synced"] == 5 and not lab.confirmed()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGSTOP)
    try:
        upstream.extra_args = ("--port", port)
        upstream.start()
        said = lab.sync(endpoint=upstream.url, key=UP_KEY)
        assert "5 offered again" in said, said
        assert upstream.stats()["jobs_created"] == 5
    finally:
        relay.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: relay_states(relay).get("synced") == 5, 120, "the relay to forward")
    judge(upstream, [lab])


def test_a_chain_of_two_relays_whose_upstream_one_loses_its_store(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """lab -> edge relay -> relay -> API.  The relay next to the API is put back to an empty
    backup while it holds everything unforwarded: the edge relay notices (its refresh gets
    404s) and offers its jobs again; the API's ids flow back through both hops.
    """
    inner = relay
    edge_home = tmp_path / "edge"
    edge_key = inner.add_key("edge")
    edge = RelayProcess(edge_home, f"http://127.0.0.1:{inner.port}", edge_key)
    try:
        labs = [Lab(tmp_path, "lab-a", edge), Lab(tmp_path, "lab-b", edge)]
        port = upstream.url.rsplit(":", 1)[1]
        upstream.stop()
        inner.start()
        empty = backup(inner.home / "logbook.db", tmp_path / "empty.db")
        edge.start()
        for lab in labs:
            lab.sync()
        wait_until(lambda: relay_states(inner).get("pending") == 2 * N, 60, "the edge to forward")
        restore(inner, empty)  # everything the edge forwarded to it is gone
        upstream.extra_args = ("--port", port)
        upstream.start()
        wait_confirmed(labs)
        judge(upstream, labs)
    finally:
        edge.stop()


def test_a_fresh_relay_that_gives_one_identity_with_other_content_the_same_id(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """Two labs hold one (experiment_id, hash) with other content.  The relay takes lab-a's,
    loses its store, then takes lab-b's under the same id.  lab-a must not take lab-b's job
    for its own (its results would never reach the API, silently): it is told, as a POST of
    that identity would be (409, rejected with the reason).
    """
    a, b = Lab(tmp_path, "lab-a", relay, n=0), Lab(tmp_path, "lab-b", relay, n=0)
    for lab, counts in ((a, '{"00": 1}'), (b, '{"11": 7}')):
        rec = cli(lab.home, "record", "-e", "shared", "--hash", "h-1", "--results", counts)
        assert rec.code == 0, rec.err
    port = upstream.url.rsplit(":", 1)[1]
    upstream.stop()
    relay.start()
    empty = backup(relay.home / "logbook.db", tmp_path / "empty.db")
    a.sync()
    restore(relay, empty)
    b.sync()
    assert a.entries()[0]["remote_id"] == b.entries()[0]["remote_id"] == "relay-1"
    upstream.extra_args = ("--port", port)
    upstream.start()
    wait_confirmed([b])

    def told() -> bool:
        a.sync()
        return states(a.db)["rejected"] == 1

    wait_until(told, 60, "lab-a to be told its job is not the relay's")
    reason = str(a.entries()[0]["last_error"])
    assert "HTTP 409" in reason and "other content" in reason, reason
    jobs = upstream.jobs()
    assert len(jobs) == 1 and jobs[0]["results"] == '{"11": 7}'


def test_the_haiqu_sdks_post_of_a_result_and_logbooks_file_of_it_are_one_job(
    tmp_path: Path, relay: RelayProcess, upstream: EmulatorProcess
) -> None:
    """A lab logs a Qiskit Result with the Haiqu SDK (its own client, through the relay:
    with the circuit's hash) and keeps the Result's JSON, which ``logbook import`` reads
    (no circuit in it, so no circuit hash).  One job: the relay links the entry to the
    SDK's, never answers it 409 as another lab's content.
    """
    pytest.importorskip("haiqu.sdk.api_client")
    from haiqu.sdk.api_client import ApiClient
    from haiqu.sdk.schemas import LocalJobSubmitModel
    from haiqu.sdk.utils import (
        get_circuit_hash,
        get_job_device,
        get_job_hash,
        get_job_name,
        get_job_results,
        get_job_shots,
    )
    from qiskit import QuantumCircuit
    from qiskit.providers.basic_provider import BasicSimulator

    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    result = BasicSimulator().run(qc, shots=64, seed_simulator=7).result()
    lab = Lab(tmp_path, "lab-a", relay, n=0)
    sdk_key = relay.add_key("sdk")
    relay.start()
    sdk = ApiClient(rest_api_uri=relay.url + "/", api_access_key=sdk_key)
    posted = sdk.submit_job(  # what haiqu.log(circuit, result) posts after its 404 look-up
        LocalJobSubmitModel(
            experiment_id="bell", hash=str(get_job_hash(job_data=result)),
            circuit_hash=get_circuit_hash(qc), results=json.dumps(get_job_results(result)),
            device_id=get_job_device(result), shots=json.dumps(get_job_shots(result)),
            name=get_job_name(result), status="Done", job_type="User local job",
        )
    )  # fmt: skip
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(result.to_dict(), default=str))
    assert cli(lab.home, "import", saved, "--experiment", "bell").code == 0
    lab.sync()
    got = lab.entries()[0]
    assert got["state"] == "synced" and got["remote_id"] == posted.id, got
    wait_confirmed([lab])
    judge(upstream, [lab])
