"""Machines that are never online, end to end: real ``logbook`` processes, the emulator (and
a relay) on loopback, files carried between homes as a USB stick would carry them.

A is the air-gapped machine: no key, its endpoint a closed port.  B syncs.  What a lab
checks: every job reaches the API once, and A learns each job's id from a receipt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from adversary import closed_port
from bundlesupport import bundle_jobs, read_lines, receipt_lines, write_lines
from relaysupport import UP_KEY, RelayProcess
from support import (
    REPO_ROOT,
    Run,
    assert_no_key,
    assert_no_traceback,
    assert_one_line_error,
    base_env,
    cli,
    entries,
    make_jobs,
    sync_until_done,
    wait_until,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess
from logbook.jobs import JOB_FIELDS

Key = tuple[str, str]
V4_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "old_stores" / "v4.db"


def offline() -> dict[str, str]:
    """An air-gapped machine's environment: no key, and nothing listens at its endpoint."""
    return {"HAIQU_EDGE_URI": f"http://127.0.0.1:{closed_port()}"}


def record(home: Path, n: int, experiment: str = "exp-gap", start: int = 0) -> None:
    """``logbook import`` of ``n`` jobs (JSON Lines), as a lab machine records a batch."""
    home.mkdir(parents=True, exist_ok=True)
    src = home.parent / f"{home.name}-{experiment}-{start}.jsonl"
    src.write_text("".join(json.dumps(j) + "\n" for j in make_jobs(n, experiment, start)))
    run = cli(home, "import", src, env=offline())
    assert run.code == 0, run.err


def ok(run: Run) -> Run:
    assert run.code == 0, (run.out, run.err)
    assert_no_traceback(run.err)
    return run


def jobs_in(db: Path) -> dict[Key, dict[str, Any]]:
    return {(e["experiment_id"], e["hash"]): {k: e[k] for k in JOB_FIELDS} for e in entries(db)}


def server_ids(emu: EmulatorProcess) -> dict[Key, str]:
    return {(j["experiment_id"], j["hash"]): j["id"] for j in emu.jobs()}


def assert_once_upstream(emu: EmulatorProcess, n: int) -> None:
    stats = emu.stats()
    assert stats["duplicates"] == 0, stats["duplicate_keys"]
    assert stats["jobs_created"] == n == stats["unique_jobs"], stats


def test_300_jobs_out_of_an_air_gapped_machine_and_their_ids_back(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    record(a, 300)
    stick = tmp_path / "stick"
    stick.mkdir()
    out = ok(cli(a, "bundle", "export", stick / "a.bundle", env=offline()))
    digest = hashlib.sha256((stick / "a.bundle").read_bytes()).hexdigest()
    assert "exported 300 jobs" in out.out and digest in out.out
    assert list(stick.iterdir()) == [stick / "a.bundle"]  # no temporary file left
    assert bundle_jobs(stick / "a.bundle") == jobs_in(a / "logbook.db")
    assert cli(a, "status", "--json").json()["counts"]["pending"] == 300  # nothing changed

    imported = ok(cli(b, "bundle", "import", stick / "a.bundle", "--json"))
    a_id = read_lines(stick / "a.bundle")[0]["store_id"]
    assert {k: imported.json()[k] for k in ("new", "known", "store_id")} == {
        "new": 300, "known": 0, "store_id": a_id}  # fmt: skip
    sync_until_done(b, emulator.env())
    ok(cli(b, "bundle", "receipt", stick / "a.bundle", "-o", stick / "a.receipt"))
    applied = ok(cli(a, "bundle", "apply", stick / "a.receipt", env=offline()))
    assert "300 now synced" in applied.out

    assert_once_upstream(emulator, 300)
    ids = server_ids(emulator)
    for e in entries(a / "logbook.db"):
        assert e["state"] == "synced", e
        assert e["remote_id"] == ids[(e["experiment_id"], e["hash"])], e
    status = ok(cli(a, "status", "--json")).json()
    assert status["last_bundle_export"] and status["last_receipt_applied"]
    assert status["last_receipt_applied"] > status["last_bundle_export"]
    assert "last receipt:" in ok(cli(a, "status")).out
    nothing = ok(cli(a, "bundle", "export", stick / "next.bundle", env=offline()))
    assert "nothing to export" in nothing.out and not (stick / "next.bundle").exists()


def test_bundles_imported_three_times_overlapping_and_on_two_machines_make_each_job_once(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    record(a, 60)
    ok(cli(a, "bundle", "export", tmp_path / "1.bundle"))
    record(a, 30, start=60)
    ok(cli(a, "bundle", "export", tmp_path / "2.bundle"))  # the first 60 again, and 30 more
    runs = [ok(cli(b, "bundle", "import", tmp_path / "1.bundle")).out for _ in range(3)]
    assert runs[0].startswith("60 new, 0 already here; from store ")
    assert runs[1].startswith("0 new, 60 already here") and runs[2] == runs[1]
    assert ok(cli(b, "bundle", "import", tmp_path / "2.bundle")).out.startswith(
        "30 new, 60 already here")  # fmt: skip
    assert jobs_in(b / "logbook.db") == jobs_in(a / "logbook.db")
    # The same bundle imported on a second machine that syncs too: still one job each.
    ok(cli(c, "bundle", "import", tmp_path / "2.bundle"))
    sync_until_done(b, emulator.env())
    sync_until_done(c, emulator.env())
    assert_once_upstream(emulator, 90)
    for name in ("1", "2"):
        ok(cli(c, "bundle", "receipt", tmp_path / f"{name}.bundle", "-o", tmp_path / name))
        ok(cli(a, "bundle", "apply", tmp_path / name))
    ids = server_ids(emulator)
    got = {(e["experiment_id"], e["hash"]): e["remote_id"] for e in entries(a / "logbook.db")}
    assert got == ids


def test_a_receipt_applied_twice_or_after_a_newer_one_changes_nothing(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    record(a, 20)
    ok(cli(a, "bundle", "export", tmp_path / "x.bundle"))
    ok(cli(b, "bundle", "import", tmp_path / "x.bundle"))
    ok(cli(b, "bundle", "receipt", tmp_path / "x.bundle", "-o", tmp_path / "older"))
    sync_until_done(b, emulator.env())
    ok(cli(b, "bundle", "receipt", tmp_path / "x.bundle", "-o", tmp_path / "newer"))
    assert "20 now synced" in ok(cli(a, "bundle", "apply", tmp_path / "newer")).out
    after = entries(a / "logbook.db")
    for receipt in ("newer", "older"):
        again = ok(cli(a, "bundle", "apply", tmp_path / receipt, "--json")).json()
        assert again["superseded_by"] is not None
        assert entries(a / "logbook.db") == after
    assert all(e["state"] == "synced" for e in after)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A with three jobs exported and B with them imported, and the receipt B made."""
    a, b = tmp_path / "a", tmp_path / "b"
    record(a, 3)
    ok(cli(a, "bundle", "export", tmp_path / "x.bundle"))
    ok(cli(b, "bundle", "import", tmp_path / "x.bundle"))
    ok(cli(b, "bundle", "receipt", tmp_path / "x.bundle", "-o", tmp_path / "x.receipt"))
    return a, b, tmp_path / "x.bundle", tmp_path / "x.receipt"


def test_damaged_and_foreign_files_are_one_line_exit_2_and_change_nothing(
    tmp_path: Path, pair: tuple[Path, Path, Path, Path]
) -> None:
    a, b, bundle, receipt = pair
    data = bundle.read_bytes()
    other = tmp_path / "other"
    record(other, 1, "exp-other")
    ok(cli(other, "bundle", "export", tmp_path / "other.bundle"))
    ok(cli(b, "bundle", "import", tmp_path / "other.bundle"))
    ok(cli(b, "bundle", "receipt", tmp_path / "other.bundle", "-o", tmp_path / "other.receipt"))
    manifest = read_lines(bundle)[0]
    write_lines(tmp_path / "newer", {**manifest, "format": 2}, [])
    forms = {
        "empty": b"", "cut": data[: len(data) // 2], "flipped": data[:40] + b"\x00" + data[41:],
        "random": bytes(range(256)), "json": json.dumps({"jobs": []}).encode(),
        "a receipt": receipt.read_bytes(), "newer": (tmp_path / "newer").read_bytes(),
    }  # fmt: skip
    says = {"empty": "empty", "cut": "cut short", "flipped": "damaged", "random": "not a logbook",
            "json": "looks like JSON", "a receipt": "is a receipt, not a bundle",
            "newer": "made by a newer logbook"}  # fmt: skip
    fresh = tmp_path / "fresh"
    for name, content in forms.items():
        (tmp_path / "in").write_bytes(content)
        run = cli(fresh, "bundle", "import", tmp_path / "in")
        assert run.code == 2 and says[name] in run.err, (name, run.err)
        assert_one_line_error(run.err)
        assert not (fresh / "logbook.db").exists(), name  # not even a store was made
    before = entries(a / "logbook.db")
    applies = {
        bundle: "is a bundle, not a receipt",
        tmp_path / "other.receipt": "is a receipt for the store",
        tmp_path / "in": "empty",
    }
    (tmp_path / "in").write_bytes(b"")
    for path, message in applies.items():
        run = cli(a, "bundle", "apply", path)
        assert run.code == 2 and message in run.err, (path, run.err)
        assert_one_line_error(run.err)
    assert entries(a / "logbook.db") == before
    cut = receipt.read_bytes()[:-9]
    (tmp_path / "cut.receipt").write_bytes(cut)
    run = cli(a, "bundle", "apply", tmp_path / "cut.receipt")
    assert run.code == 2 and "cut short" in run.err and entries(a / "logbook.db") == before


WRITER = """
import sys, logbook
db, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    logbook.log({"results": {"00": i, "11": n - i}, "shots": [n], "metrics": {"i": i},
                 "name": f"run {i}"}, experiment_id="busy", db=db, hash=f"h-{i:05d}")
print("done", flush=True)
"""


def test_export_while_another_process_records_takes_exactly_what_was_recorded(
    tmp_path: Path,
) -> None:
    a = tmp_path / "a"
    a.mkdir()
    db = a / "logbook.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "1500"], env=base_env(a),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    bundles: list[Path] = []
    try:
        while writer.poll() is None:
            path = tmp_path / f"{len(bundles)}.bundle"
            run = cli(a, "bundle", "export", path)
            assert run.code == 0, run.err
            if path.exists():
                bundles.append(path)
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0 and out.strip() == "done", err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    ok(cli(a, "bundle", "export", tmp_path / "last.bundle"))
    bundles.append(tmp_path / "last.bundle")
    recorded = jobs_in(db)
    order = sorted(recorded, key=lambda k: k[1])  # h-00000, h-00001, ...: the writer's order
    sizes = []
    for i, path in enumerate(bundles):
        carried = bundle_jobs(path)
        # A snapshot: the first k jobs the writer committed, each exactly as recorded.
        assert list(carried) == order[: len(carried)], path
        assert carried == {k: recorded[k] for k in carried}, path
        home = tmp_path / f"b{i}"
        ok(cli(home, "bundle", "import", path))
        assert jobs_in(home / "logbook.db") == carried
        sizes.append(len(carried))
    assert sizes[-1] == 1500
    assert any(0 < n < 1500 for n in sizes), f"no export ran while the writer recorded: {sizes}"


def test_a_store_of_the_previous_schema_version_exports_a_bundle_that_imports(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.db"
    shutil.copy(V4_FIXTURE, old)
    with sqlite3.connect(V4_FIXTURE) as conn:
        conn.row_factory = sqlite3.Row
        want = {
            (r["experiment_id"], r["hash"]): {
                k: (json.loads(r[k]) if k == "metrics" else r[k] or "") for k in JOB_FIELDS
            }
            for r in conn.execute("SELECT * FROM entries WHERE state IN ('pending', 'sending')")
        }
    assert want, "the fixture has entries not yet synced"
    ok(cli(tmp_path / "a", "--db", old, "bundle", "export", tmp_path / "v4.bundle"))
    ok(cli(tmp_path / "b", "bundle", "import", tmp_path / "v4.bundle"))
    assert jobs_in(tmp_path / "b" / "logbook.db") == want


def test_into_a_running_relays_store_the_relay_forwards_and_its_receipt_has_the_api_ids(
    tmp_path: Path, upstream: EmulatorProcess
) -> None:
    a = tmp_path / "a"
    record(a, 40)
    ok(cli(a, "bundle", "export", tmp_path / "a.bundle"))
    # --refresh 0: no periodic run; only the relay noticing its backlog grew forwards them
    relay = RelayProcess(tmp_path / "relay", upstream.url, UP_KEY, extra=("--refresh", "0"))
    try:
        relay.start()
        ok(cli(relay.home, "bundle", "import", tmp_path / "a.bundle"))
        wait_until(lambda: upstream.stats()["jobs_created"] >= 40, 60, "the relay to forward")

        def forwarded() -> bool:
            return all(e["state"] == "synced" for e in entries(relay.home / "logbook.db"))

        wait_until(forwarded, 60, "the relay's store to hold every job as forwarded")
        ok(cli(relay.home, "bundle", "receipt", tmp_path / "a.bundle", "-o", tmp_path / "r"))
        assert relay.stop() == 0
    finally:
        relay.stop()
    assert_once_upstream(upstream, 40)
    ids = server_ids(upstream)
    assert {k: d["remote_id"] for k, d in receipt_lines(tmp_path / "r").items()} == ids
    ok(cli(a, "bundle", "apply", tmp_path / "r"))
    got = {(e["experiment_id"], e["hash"]): e for e in entries(a / "logbook.db")}
    assert {k: (e["state"], e["remote_id"]) for k, e in got.items()} == {
        k: ("synced", v) for k, v in ids.items()}  # fmt: skip


CANARY = "canary+KEY/in=env-and-config"
PROXY_PASSWORD = "pr0xy-s3cret"


def test_neither_file_holds_the_key_or_a_proxy_password(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    proxy = f"http://user:{PROXY_PASSWORD}@127.0.0.1:{closed_port()}"
    write_config(a, [f'api_key = "{CANARY}"', f'proxy = "{proxy}"'])
    write_config(b, [f'api_key = "{CANARY}"'])  # its sync below goes straight to the emulator
    record(a, 5)
    env = {"HAIQU_API_KEY": CANARY, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy}
    ok(cli(a, "bundle", "export", tmp_path / "x.bundle", env=env))
    ok(cli(b, "bundle", "import", tmp_path / "x.bundle", env=env))
    sync_until_done(b, emulator.env())  # B's real key is the emulator's
    ok(cli(b, "bundle", "receipt", tmp_path / "x.bundle", "-o", tmp_path / "x.receipt", env=env))
    for path in (tmp_path / "x.bundle", tmp_path / "x.receipt"):
        raw = path.read_bytes()
        text = json.dumps(read_lines(path), ensure_ascii=False) + raw.decode("latin-1")
        for secret in (CANARY, emulator.key, PROXY_PASSWORD):
            assert_no_key(text, secret, str(path))
