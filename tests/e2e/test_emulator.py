"""The emulator, tested as a real HTTP server on loopback (a subprocess), with httpx2."""

from __future__ import annotations

import json
import os
import signal
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
import yaml
from support import wait_until

from logbook.emulator.testing import EmulatorError, EmulatorProcess

SPEC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "logbook/emulator/openapi.yaml").read_text()
)
JOB_SCHEMA = {"$ref": "#/components/schemas/Job", "components": SPEC["components"]}
POST_JOBS = "POST /jobs"
GET_JOB = "GET /jobs/{job_id}"
GET_BY_HASH = "GET /experiments/{experiment_id}/jobs/{job_hash}"


def check_job(doc: dict[str, Any]) -> dict[str, Any]:
    """Validate against the Job schema of openapi.yaml, dates included."""
    jsonschema.validate(doc, JOB_SCHEMA)
    for name in ("creation_date", "run_date", "finish_date"):
        if doc.get(name) is not None:
            # RFC 3339, as the reference shows: 2023-11-07T05:31:56Z
            assert doc[name].endswith("Z")
            time.strptime(doc[name][:19], "%Y-%m-%dT%H:%M:%S")
    return doc


def client(emu: EmulatorProcess) -> httpx2.Client:
    return httpx2.Client(base_url=emu.url, timeout=10)


def post(emu: EmulatorProcess, body: Any, **kw: Any) -> httpx2.Response:
    with client(emu) as c:
        return c.post("/jobs", params={"HAIQU_API_KEY": emu.key}, json=body, **kw)


def get(emu: EmulatorProcess, path: str) -> httpx2.Response:
    with client(emu) as c:
        return c.get(path, params={"HAIQU_API_KEY": emu.key})


def job(n: int = 1, exp: str = "exp-1", **extra: Any) -> dict[str, Any]:
    return {"experiment_id": exp, "hash": f"h{n}", "results": '{"00": 3}', **extra}


# --- routes and the Job contract -------------------------------------------------


def test_the_three_routes_answer_jobs_that_match_the_schema(emulator: EmulatorProcess) -> None:
    body = job(1, device_id="ibm_brisbane", name="bell", shots="[1024]", metrics={"f": 0.9})
    created = check_job(post(emulator, body).raise_for_status().json())
    assert created["status"] == "Submitted"
    assert created["experiment_id"] == "exp-1" and created["hash"] == "h1"
    assert created["backend_name"] == "ibm_brisbane"
    assert created["results"] == '{"00": 3}' and created["metrics"] == {"f": 0.9}

    by_id = check_job(get(emulator, f"/jobs/{created['id']}").raise_for_status().json())
    by_hash = check_job(get(emulator, "/experiments/exp-1/jobs/h1").raise_for_status().json())
    assert by_id["id"] == by_hash["id"] == created["id"]

    bare = check_job(post(emulator, {"experiment_id": "exp-2"}).raise_for_status().json())
    assert bare["backend_name"] == "Haiqu OS" and bare["job_type"] == "User local job"

    # The reference page's own example sends empty status and job_type.
    example = {"experiment_id": "e", "hash": "", "status": "", "job_type": "", "metrics": {}}
    check_job(post(emulator, example).raise_for_status().json())


def test_unknown_jobs_are_404(emulator: EmulatorProcess) -> None:
    post(emulator, job(1)).raise_for_status()
    assert get(emulator, "/jobs/no-such-id").status_code == 404
    assert get(emulator, "/experiments/exp-1/jobs/other-hash").status_code == 404
    assert get(emulator, "/experiments/other-exp/jobs/h1").status_code == 404


def test_posts_are_not_deduplicated_and_stats_count_duplicates(
    emulator: EmulatorProcess,
) -> None:
    ids = [post(emulator, job(1)).json()["id"] for _ in range(3)]
    post(emulator, job(2)).raise_for_status()
    post(emulator, job(1, exp="exp-2")).raise_for_status()
    assert len(set(ids)) == 3

    first = get(emulator, "/experiments/exp-1/jobs/h1").json()
    assert first["id"] == ids[0]
    get(emulator, f"/jobs/{ids[1]}").raise_for_status()

    stats = emulator.stats()
    assert stats["requests"] == {POST_JOBS: 5, GET_JOB: 1, GET_BY_HASH: 1}
    assert stats["jobs_created"] == 5
    assert stats["unique_jobs"] == 3
    assert stats["duplicates"] == 2
    assert stats["duplicate_keys"] == [["exp-1", "h1", 3]]
    assert [j["id"] for j in emulator.jobs()][:3] == ids


def test_reset_forgets_jobs_counters_and_faults(emulator: EmulatorProcess) -> None:
    post(emulator, job(1)).raise_for_status()
    emulator.set_faults(error_rate=1.0)
    emulator.reset()
    assert emulator.jobs() == []
    stats = emulator.stats()
    assert stats["jobs_created"] == 0 and stats["requests"][POST_JOBS] == 0
    assert emulator.faults()["error_rate"] == 0
    assert post(emulator, job(1)).status_code == 200


# --- the key -----------------------------------------------------------------------


def test_key_in_query_or_header(emulator: EmulatorProcess) -> None:
    key = emulator.key
    assert "+" in key and "/" in key and "=" in key
    with client(emulator) as c:
        assert c.post("/jobs", params={"HAIQU_API_KEY": key}, json=job(1)).status_code == 200
        assert c.post("/jobs", headers={"authorization": key}, json=job(2)).status_code == 200
        bearer = {"authorization": f"Bearer {key}"}
        assert c.post("/jobs", headers=bearer, json=job(3)).status_code == 200
        assert c.get("/jobs/x", headers=bearer).status_code == 404

        refused = [
            c.post("/jobs", json=job(4)),
            c.post("/jobs", params={"HAIQU_API_KEY": key + "x"}, json=job(4)),
            c.post("/jobs", headers={"authorization": "Bearer wrong"}, json=job(4)),
            # un-encoded: each "+" arrives as a space
            c.post(f"/jobs?HAIQU_API_KEY={key}", json=job(4)),
            c.get(f"/experiments/exp-1/jobs/h1?HAIQU_API_KEY={key}"),
            c.get("/jobs/x"),
        ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert emulator.stats()["jobs_created"] == 3


def test_key_is_not_on_the_command_line(emulator: EmulatorProcess) -> None:
    psutil = pytest.importorskip("psutil")
    cmdline = " ".join(psutil.Process(emulator.pid).cmdline())
    assert "logbook.emulator" in cmdline and emulator.key not in cmdline


# --- validation (422, FastAPI style) ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hash": "h"}, "experiment_id"),
        (job(1, status="Finished"), "status"),
        (job(1, job_type="Batch"), "job_type"),
        (job(1, name="n" * 201), "name"),
        (job(1, device_id="d" * 201), "device_id"),
        ({"experiment_id": 42}, "experiment_id"),
        (job(1, shots=1024), "shots"),
        (job(1, metrics=[1, 2]), "metrics"),
        (job(1, status=None), "status"),
    ],
)
def test_invalid_bodies_are_422_with_field_detail(
    emulator: EmulatorProcess, body: dict[str, Any], field: str
) -> None:
    resp = post(emulator, body)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert isinstance(detail, list) and detail
    assert ["body", field] in [d["loc"][:2] for d in detail]
    assert all(isinstance(d["msg"], str) and isinstance(d["type"], str) for d in detail)
    assert emulator.stats()["jobs_created"] == 0


@pytest.mark.parametrize("raw", [b"{not json", b"", b'["a list"]', b'"text"'])
def test_bodies_that_are_not_a_json_object_are_422(emulator: EmulatorProcess, raw: bytes) -> None:
    headers = {"content-type": "application/json"}
    with client(emulator) as c:
        resp = c.post("/jobs", params={"HAIQU_API_KEY": emulator.key}, content=raw, headers=headers)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][0] == "body"
    assert emulator.stats()["jobs_created"] == 0


def test_limits_are_inclusive_and_unknown_fields_ignored(emulator: EmulatorProcess) -> None:
    body = job(1, name="n" * 200, device_id="d" * 200, colour="blue", status="Running")
    resp = post(emulator, body)
    assert resp.status_code == 200
    assert "colour" not in resp.json()
    assert emulator.jobs()[0]["submitted_status"] == "Running"


# --- status progression -----------------------------------------------------------------


def test_jobs_progress_from_submitted_to_done(emulator: EmulatorProcess) -> None:
    order = ["Submitted", "Queued", "Running", "Done"]
    posted = time.monotonic()
    created = post(emulator, job(1, status="Done")).json()
    assert created["status"] == "Submitted" and created["finish_date"] is None
    seen = [created["status"]]
    done_after = 0.0

    def poll() -> dict[str, Any] | None:
        nonlocal done_after
        doc = check_job(get(emulator, f"/jobs/{created['id']}").json())
        if doc["status"] != seen[-1]:
            seen.append(doc["status"])
            done_after = time.monotonic() - posted
        return doc if doc["status"] == "Done" else None

    doc = wait_until(poll, what="the job to reach Done")
    # Every state in order (a slow poll may miss the short Queued phase), ending in Done
    # no sooner than --progress-seconds (1 s in the fixture): a lower bound, never flaky.
    assert seen == sorted(set(seen), key=order.index) and seen[-1] == "Done"
    assert "Running" in seen and done_after >= 0.9
    assert doc["finish_date"] is not None and doc["run_date"] is not None
    assert doc["finish_date"] >= doc["run_date"] >= doc["creation_date"]


# --- faults ------------------------------------------------------------------------------


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_latency_is_added_to_every_route(emulator: EmulatorProcess) -> None:
    emulator.set_faults(latency_ms=300)
    # Lower bounds only: the server waits at least that long, however loaded the machine is.
    assert timed(lambda: get(emulator, "/jobs/x")) >= 0.3
    assert timed(lambda: post(emulator, job(1)).raise_for_status()) >= 0.3
    assert timed(lambda: get(emulator, "/experiments/exp-1/jobs/h1")) >= 0.3


def test_error_rate_one_gives_the_chosen_status_on_post_only(emulator: EmulatorProcess) -> None:
    emulator.set_faults(error_rate=1.0, error_status=502)
    assert [post(emulator, job(i)).status_code for i in range(3)] == [502] * 3
    assert get(emulator, "/jobs/x").status_code == 404  # faults hit POST /jobs by default
    assert emulator.stats()["jobs_created"] == 0

    emulator.set_faults(routes=["*"])
    assert get(emulator, "/jobs/x").status_code == 502


def test_error_rate_is_seeded(emulator: EmulatorProcess) -> None:
    def pattern() -> list[int]:
        emulator.reset()
        emulator.set_faults(error_rate=0.5)
        return [post(emulator, job(i)).status_code for i in range(16)]

    first = pattern()
    assert set(first) == {200, 500}
    assert pattern() == first


def test_next_n_requests_fail(emulator: EmulatorProcess) -> None:
    emulator.set_faults(fail_next=2, fail_status=504)
    codes = [post(emulator, job(i)).status_code for i in range(3)]
    assert codes == [504, 504, 200]
    assert emulator.faults()["fail_next"] == 0
    assert emulator.stats()["jobs_created"] == 1


def test_429_with_retry_after_seconds_and_date(emulator: EmulatorProcess) -> None:
    emulator.set_faults(rate_limit_next=1, retry_after=7)
    limited = post(emulator, job(1))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert post(emulator, job(1)).status_code == 200

    emulator.set_faults(rate_limit_rate=1.0, retry_after=30, retry_after_format="date")
    limited = post(emulator, job(2))
    assert limited.status_code == 429
    # 30 s after the answer's own Date (both whole seconds): no reading of this machine's clock
    when = parsedate_to_datetime(limited.headers["retry-after"])
    sent = parsedate_to_datetime(limited.headers["date"])
    assert 29 <= (when - sent).total_seconds() <= 31
    assert emulator.stats()["jobs_created"] == 1


def test_drop_after_store(emulator: EmulatorProcess) -> None:
    emulator.set_faults(drop_rate=1.0)
    with pytest.raises(httpx2.TransportError):
        post(emulator, job(1))
    # The job was stored although the client never saw an answer.
    found = get(emulator, "/experiments/exp-1/jobs/h1")
    assert found.status_code == 200
    assert emulator.stats()["jobs_created"] == 1


def test_bad_json_2xx_still_stores_the_job(emulator: EmulatorProcess) -> None:
    emulator.set_faults(bad_json_rate=1.0)
    resp = post(emulator, job(1))
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)
    assert [j["hash"] for j in emulator.jobs()] == ["h1"]


def test_trickled_body_arrives_slowly_but_whole(emulator: EmulatorProcess) -> None:
    emulator.set_faults(trickle_seconds=1.0)
    arrivals: list[float] = []
    chunks: list[bytes] = []
    start = time.perf_counter()
    with (
        client(emulator) as c,
        c.stream("POST", "/jobs", params={"HAIQU_API_KEY": emulator.key}, json=job(1)) as resp,
    ):
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            arrivals.append(time.perf_counter() - start)
            chunks.append(chunk)
    assert len(chunks) >= 5
    assert arrivals[-1] >= 0.8  # spread over the second (a lower bound: never flaky)
    assert arrivals == sorted(arrivals)
    check_job(json.loads(b"".join(chunks)))


def test_unauthorized_fault_refuses_the_right_key(emulator: EmulatorProcess) -> None:
    emulator.set_faults(unauthorized=True)
    assert post(emulator, job(1)).status_code == 401
    assert get(emulator, "/jobs/x").status_code == 401
    emulator.set_faults(unauthorized=False)
    assert post(emulator, job(1)).status_code == 200


def test_bad_fault_settings_are_refused(emulator: EmulatorProcess) -> None:
    for bad in ({"error_rate": 2}, {"no_such_fault": 1}, {"routes": ["GET /nowhere"]}):
        with pytest.raises(EmulatorError, match="422"):
            emulator.set_faults(**bad)
    assert emulator.faults()["error_rate"] == 0


# --- the process: command line, ready line, persistence, shutdown -----------------


def test_command_line_faults_persistence_and_clean_shutdown(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    args = ("--state-file", str(state), "--fail-next", "1", "--fail-status", "500")
    emu = EmulatorProcess("other+key", progress_seconds=0, extra_args=args)
    try:
        emu.start()
        assert emu.url.startswith("http://127.0.0.1:") and not emu.url.endswith(":0")
        assert emu.faults()["fail_next"] == 1
        assert post(emu, job(1)).status_code == 500
        created = post(emu, job(1)).json()
        assert created["status"] == "Done"  # --progress-seconds 0
        post(emu, job(1)).raise_for_status()
        assert emu.stop() == 0  # SIGTERM: a clean exit, state saved
        assert state.exists()

        emu.start()
        assert [j["hash"] for j in emu.jobs()] == ["h1", "h1"]
        assert get(emu, "/experiments/exp-1/jobs/h1").json()["id"] == created["id"]
        assert emu.stats()["duplicate_keys"] == [["exp-1", "h1", 2]]
    finally:
        emu.stop()
    assert not emu.running()


def test_a_failed_start_reports_why() -> None:
    emu = EmulatorProcess("k", extra_args=("--state-file", "/proc/version"))
    with pytest.raises(EmulatorError, match="cannot load"):
        emu.start()
    assert not emu.running()


def test_state_is_saved_periodically_and_sigint_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    args = ("--state-file", str(state), "--save-interval", "0.2")
    emu = EmulatorProcess("other+key", extra_args=args)
    try:
        emu.start()
        created = post(emu, job(1)).json()
        wait_until(
            lambda: state.exists() and created["id"] in state.read_text(),
            what="the periodic save of the new job",
        )
        assert emu.proc is not None and emu.pid is not None
        os.kill(emu.pid, signal.SIGKILL)  # no chance to save on the way out
        emu.proc.wait(timeout=5)
        emu.start()
        assert [j["id"] for j in emu.jobs()] == [created["id"]]

        assert emu.proc is not None and emu.pid is not None
        os.kill(emu.pid, signal.SIGINT)
        assert emu.proc.wait(timeout=15) == 0
    finally:
        emu.stop()


# --- answers in the API's shape, beyond its three routes ------------------------------------


def test_unknown_routes_and_methods_are_answered_in_json_as_fastapi_does(
    emulator: EmulatorProcess,
) -> None:
    for resp in (get(emulator, "/not-the-api/jobs/x"), get(emulator, "/")):
        assert resp.status_code == 404
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json() == {"detail": "Not Found"}
    with client(emulator) as c:
        wrong_method = c.delete("/jobs/x", params={"HAIQU_API_KEY": emulator.key})
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"].startswith("application/json")
    # A route of the API that finds nothing says so differently.
    assert get(emulator, "/jobs/x").json() == {"detail": "Job not found"}


def test_redirect_fault_stores_nothing(emulator: EmulatorProcess) -> None:
    emulator.set_faults(redirect_to="http://127.0.0.1:9/elsewhere", redirect_status=308)
    with client(emulator) as c:
        resp = c.post("/jobs", params={"HAIQU_API_KEY": emulator.key}, json=job(1))
    assert resp.status_code == 308
    assert resp.headers["location"] == "http://127.0.0.1:9/elsewhere"
    assert emulator.stats()["jobs_created"] == 0


# --- `logbook emulator`: the same emulator, as a command of the installed tool ---------------


def test_logbook_emulator_command_takes_the_same_options_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """After a pipx or uv install ``python -m logbook.emulator`` is out of reach; the
    ``logbook emulator`` command runs it with the same fault options."""
    import sys

    from support import base_env, cli

    state = tmp_path / "state.json"
    args = ("--state-file", str(state), "--fail-next", "1", "--retry-after", "none",
            "--seed", "7", "--unauthorized")  # fmt: skip
    emu = EmulatorProcess("cmd+key", progress_seconds=0, extra_args=args,
                          command=("-m", "logbook", "emulator"))  # fmt: skip
    try:
        emu.start()
        assert emu.proc is not None
        assert emu.proc.args[1:4] == ["-m", "logbook", "emulator"]  # type: ignore[index]
        faults = emu.faults()
        assert faults["fail_next"] == 1 and faults["retry_after"] is None
        assert faults["unauthorized"] is True
        assert post(emu, job(1)).status_code == 401
        emu.clear_faults()
        assert post(emu, job(1)).status_code == 200
        # A logbook sync against it, as README's quick start does.
        home = tmp_path / "home"
        assert cli(home, "record", "-e", "bell", "--results", "{}").code == 0
        synced = cli(home, "sync", "--json", env=emu.env())
        assert synced.code == 0 and synced.json()["synced"] == 1, synced.err
        assert emu.stats()["jobs_created"] == 2
        assert emu.stop() == 0  # SIGTERM: a clean exit, its state saved
        assert len(json.loads(state.read_text())["jobs"]) == 2
    finally:
        emu.stop()
    # Every flag has a help text, and the key is never a command-line option.
    import subprocess

    helped = subprocess.run(
        [sys.executable, "-m", "logbook", "emulator", "--help"], capture_output=True, text=True,
        env=base_env(tmp_path), timeout=60,
    )  # fmt: skip
    assert helped.returncode == 0 and "--api-key" not in helped.stdout
    assert "--rate-limit-rate" in helped.stdout and "/_admin/stats" in helped.stdout
    from click import Context

    from logbook.cli.emulator import emulator

    for param in emulator.get_params(Context(emulator)):
        assert param.help, param.name  # type: ignore[attr-defined]


def test_logbook_emulator_without_a_key_is_one_line(tmp_path: Path) -> None:
    from support import cli

    res = cli(tmp_path, "emulator", "--port", "0")
    assert res.code == 2 and "HAIQU_API_KEY" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1
