"""The ``logbook`` command as a user runs it: outputs, exit codes, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_entry_shape, assert_no_traceback, assert_one_line_error

from logbook.store import STATES, Outcome, Store


def record_json(cli_runner: Any, *args: str) -> dict[str, Any]:
    res = cli_runner("record", "--json", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# --- the command itself ------------------------------------------------------------


def test_help_and_python_dash_m(run_cli: Any) -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("record", "import", "list", "show", "status", "export", "retry", "sync"):
        assert cmd in res.stdout
    assert res.stderr == ""
    sub = run_cli("record", "--help")
    assert sub.returncode == 0 and "--results-file" in sub.stdout


def test_record_list_show_status_in_real_processes(run_cli: Any, db_path: Path) -> None:
    first = run_cli("record", "-e", "bell", "--name", "run 1", "--results", '{"00": 3}')
    assert first.returncode == 0, first.stderr
    entry_id = first.stdout.strip()
    assert entry_id.isdigit()
    assert db_path.exists()
    listed = run_cli("list", "--json")
    assert listed.returncode == 0
    assert [e["id"] for e in json.loads(listed.stdout)] == [entry_id]
    shown = run_cli("show", entry_id, "--json")
    assert json.loads(shown.stdout)["name"] == "run 1"
    status = run_cli("status", "--json")
    assert json.loads(status.stdout)["counts"]["pending"] == 1
    for res in (first, listed, shown, status):
        assert_no_traceback(res.stdout, res.stderr)


# --- record ------------------------------------------------------------------------


def test_record_defaults_and_contract_keys(cli_runner: Any) -> None:
    entry = record_json(cli_runner, "--experiment", "exp1")
    assert_entry_shape(entry)
    assert entry["status"] == "Done"
    assert entry["job_type"] == "User local job"
    assert entry["state"] == "pending" and entry["attempts"] == 0
    assert entry["experiment_id"] == "exp1" and entry["hash"]
    assert entry["remote_id"] is None and entry["synced_at"] is None
    assert entry["created_at"].endswith("Z")


def test_record_prints_the_id(cli_runner: Any) -> None:
    res = cli_runner("record", "-e", "x")
    assert res.exit_code == 0 and res.stdout.strip() == "1"
    res = cli_runner("record", "-e", "x", "--name", "second")
    assert res.stdout.strip() == "2"


def test_record_all_fields_and_metrics(cli_runner: Any) -> None:
    entry = record_json(
        cli_runner,
        "-e", "exp", "--name", "n", "--device", "ibm_x", "--shots", "[1024]",
        "--status", "Running", "--job-type", "Run", "--results", '{"00": 1}',
        "--hash", "myhash", "--circuit-hash", "ch",
        "--metric", "fidelity=0.93", "--metric", "depth=4", "--metric", "note=hello world",
        "--metric", "flag=true", "--metric", "eq=a=b",
    )  # fmt: skip
    assert entry["metrics"] == {
        "fidelity": 0.93, "depth": 4, "note": "hello world", "flag": True, "eq": "a=b",
    }  # fmt: skip
    assert (entry["name"], entry["device_id"], entry["shots"]) == ("n", "ibm_x", "[1024]")
    assert (entry["status"], entry["job_type"]) == ("Running", "Run")
    assert (entry["hash"], entry["circuit_hash"], entry["results"]) == ("myhash", "ch", '{"00": 1}')


def test_record_results_file_and_stdin(cli_runner: Any, tmp_path: Path) -> None:
    f = tmp_path / "counts.json"
    f.write_text('{"00": 510, "11": 490}\n')
    entry = record_json(cli_runner, "-e", "e", "--results-file", str(f))
    assert json.loads(entry["results"]) == {"00": 510, "11": 490}
    res = cli_runner("record", "-e", "e2", "--results-file", "-", "--json", input='{"1": 2}')
    assert json.loads(json.loads(res.stdout)["results"]) == {"1": 2}


def test_same_job_twice_gives_the_same_id(cli_runner: Any) -> None:
    args = ("-e", "e", "--results", '{"0": 1}', "--shots", "[1]")
    a = record_json(cli_runner, *args)
    b = record_json(cli_runner, *args)
    assert a["id"] == b["id"] and a["hash"] == b["hash"]
    res = cli_runner("record", *args)
    assert res.stdout.strip() == a["id"] and "already recorded" in res.stderr
    c = record_json(cli_runner, "-e", "e", "--results", '{"0": 2}', "--shots", "[1]")
    assert c["id"] != a["id"]
    listed = json.loads(cli_runner("list", "--json").stdout)
    assert len(listed) == 2


BAD_RECORDS = [
    pytest.param(["--status", "Finished"], "status", id="status"),
    pytest.param(["--job-type", "Local"], "job_type", id="job_type"),
    pytest.param(["--name", "n" * 201], "name", id="long-name"),
    pytest.param(["--device", "d" * 201], "device", id="long-device"),
    pytest.param(["--results", "{not json"], "results", id="results-not-json"),
    pytest.param(["--shots", "1024,2"], "shots", id="shots-not-json"),
    pytest.param(["--results-file", "/no/such/file.json"], "results-file", id="missing-file"),
    pytest.param(["--results", "{}", "--results-file", "x.json"], "results", id="both"),
    pytest.param(["--metric", "novalue"], "metric", id="bad-metric"),
]


@pytest.mark.parametrize("args,word", BAD_RECORDS)
def test_bad_record_is_one_line_exit_2_and_stores_nothing(
    run_cli: Any, db_path: Path, args: list[str], word: str
) -> None:
    ok = run_cli("record", "-e", "keep", "--name", "precious")
    assert ok.returncode == 0
    before = db_path.read_bytes()
    res = run_cli("record", "-e", "e", *args)
    assert res.returncode == 2, res.stderr
    assert_one_line_error(res.stderr)
    assert word in res.stderr
    assert res.stdout == ""
    entries = json.loads(run_cli("list", "--json").stdout)
    assert [e["name"] for e in entries] == ["precious"]
    assert len(db_path.read_bytes()) == len(before)


def test_bad_record_on_a_new_store_creates_nothing(run_cli: Any, db_path: Path) -> None:
    res = run_cli("record", "-e", "e", "--status", "nope")
    assert res.returncode == 2
    assert not db_path.exists()


def test_missing_experiment_is_a_usage_error(run_cli: Any) -> None:
    res = run_cli("record", "--name", "x")
    assert res.returncode == 2
    assert_one_line_error(res.stderr)
    assert "--experiment" in res.stderr


def test_unknown_command_and_option(run_cli: Any) -> None:
    for args in (["frobnicate"], ["list", "--colour"], ["list", "--limit", "-3"]):
        res = run_cli(*args)
        assert res.returncode == 2
        assert_one_line_error(res.stderr)


# --- import ------------------------------------------------------------------------


def _write_jobs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_import_counts_and_exit_codes(run_cli: Any, tmp_path: Path) -> None:
    d = tmp_path / "results"
    d.mkdir()
    _write_jobs(d / "batch.jsonl", [{"name": f"j{i}", "results": {"0": i}} for i in range(3)])
    (d / "one.json").write_text(json.dumps({"experiment_id": "own", "name": "single"}))
    (d / ".hidden.json").write_text("garbage")
    (d / "partial.json.part").write_text("garbage")
    res = run_cli("import", d, "--experiment", "imp")
    assert res.returncode == 0, res.stderr
    assert "4 recorded, 0 already known, 0 invalid" in res.stdout
    again = run_cli("import", d, "--experiment", "imp", "--json")
    assert again.returncode == 0
    report = json.loads(again.stdout)
    assert (report["recorded"], report["known"], report["invalid"]) == (0, 4, 0)
    entries = json.loads(run_cli("list", "--json").stdout)
    assert sorted(e["experiment_id"] for e in entries) == ["imp", "imp", "imp", "own"]


def test_import_invalid_files_are_reported_and_exit_1(run_cli: Any, tmp_path: Path) -> None:
    good = _write_jobs(tmp_path / "good.jsonl", [{"experiment_id": "e", "name": "ok"}])
    bad = tmp_path / "bad.json"
    bad.write_text('{"experiment_id": "e", "status": "Finished"}')
    junk = tmp_path / "junk.json"
    junk.write_text("not json at all")
    res = run_cli("import", good, bad, junk, tmp_path / "missing.json")
    assert res.returncode == 1
    assert_no_traceback(res.stdout, res.stderr)
    assert "1 recorded, 0 already known, 3 invalid" in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("bad.json" in ln and "status" in ln for ln in lines)
    assert any("junk.json" in ln for ln in lines)
    assert any("missing.json" in ln for ln in lines)
    js = run_cli("import", bad, "--json")
    assert js.returncode == 1
    report = json.loads(js.stdout)
    assert report["invalid"] == 1 and report["invalid_files"][0]["path"].endswith("bad.json")
    assert "status" in report["invalid_files"][0]["reason"]


# --- list / show -------------------------------------------------------------------


def test_list_json_newest_first_with_filters(cli_runner: Any, db_path: Path) -> None:
    ids = [record_json(cli_runner, "-e", "ab"[i % 2], "--name", f"j{i}")["id"] for i in range(6)]
    entries = json.loads(cli_runner("list", "--json").stdout)
    assert [e["id"] for e in entries] == ids[::-1]
    for e in entries:
        assert_entry_shape(e)
    only_b = json.loads(cli_runner("list", "--json", "--experiment", "b").stdout)
    assert [e["id"] for e in only_b] == [ids[5], ids[3], ids[1]]
    assert [e["id"] for e in json.loads(cli_runner("list", "--json", "--limit", "2").stdout)] == [
        ids[5],
        ids[4],
    ]
    with Store(db_path) as s:
        claimed = s.claim(2, lease_seconds=60)
        s.settle([Outcome(claimed[0].id, "rejected", error="422 bad")])
    rejected = json.loads(cli_runner("list", "--json", "--state", "rejected").stdout)
    assert [e["id"] for e in rejected] == [ids[0]] and rejected[0]["last_error"] == "422 bad"
    assert json.loads(cli_runner("list", "--json", "--state", "synced").stdout) == []
    table = cli_runner("list").stdout
    assert "j5" in table and table.index("j5") < table.index("j0")


def test_list_on_a_new_store(cli_runner: Any, db_path: Path) -> None:
    assert json.loads(cli_runner("list", "--json").stdout) == []
    assert not db_path.exists()


def test_show_text_json_and_missing(cli_runner: Any) -> None:
    entry = record_json(cli_runner, "-e", "e", "--name", "shown", "--metric", "k=1")
    js = cli_runner("show", entry["id"], "--json")
    assert json.loads(js.stdout) == entry
    text = cli_runner("show", entry["id"]).stdout
    assert "shown" in text and entry["hash"] in text and '{"k": 1}' in text
    for missing, code in (("999", 1), ("abc", 2)):  # no such entry; not an id (bad input)
        res = cli_runner("show", missing)
        assert res.exit_code == code
        assert_one_line_error(res.stderr)


# --- status ------------------------------------------------------------------------


def test_status_on_a_store_that_does_not_exist(run_cli: Any, db_path: Path) -> None:
    res = run_cli("status", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["db"] == str(db_path)
    assert data["counts"] == dict.fromkeys(STATES, 0)
    assert data["oldest_pending"] is None and data["last_sync"] is None
    assert not db_path.exists()
    assert run_cli("status").returncode == 0
    assert not db_path.exists()


def test_status_counts(cli_runner: Any, db_path: Path) -> None:
    first = record_json(cli_runner, "-e", "e", "--name", "a")
    record_json(cli_runner, "-e", "e", "--name", "b")
    record_json(cli_runner, "-e", "e", "--name", "c")
    with Store(db_path) as s:
        c = s.claim(2, lease_seconds=60)
        s.settle([Outcome(c[0].id, "synced", remote_id="r", remote_status="Done")])
        s.set_meta("last_sync", "2025-05-05T00:00:00Z")
    data = json.loads(cli_runner("status", "--json").stdout)
    assert list(data)[:5] == ["db", "counts", "oldest_pending", "last_sync", "invalid_files"]
    assert data["counts"] == {"pending": 1, "sending": 1, "synced": 1, "rejected": 0}
    assert data["oldest_pending"] != first["created_at"]  # the first one is synced
    assert data["last_sync"] == "2025-05-05T00:00:00Z"
    text = cli_runner("status").stdout
    assert "1 pending" in text and "1 synced" in text


# --- export / retry ----------------------------------------------------------------


def test_export_jsonl_and_csv(cli_runner: Any) -> None:
    ids = [
        record_json(cli_runner, "-e", "e", "--name", f"n,{i}", "--metric", f"i={i}")["id"]
        for i in range(3)
    ]
    lines = cli_runner("export").stdout.splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert [r["id"] for r in rows] == ids  # oldest first
    for r in rows:
        assert_entry_shape(r)
    out = cli_runner("export", "--format", "csv").stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["id"] for r in table] == ids
    assert table[1]["name"] == "n,1" and json.loads(table[1]["metrics"]) == {"i": 1}
    assert cli_runner("export", "--state", "synced").stdout == ""


def test_retry(cli_runner: Any, db_path: Path) -> None:
    ids = [record_json(cli_runner, "-e", "e", "--name", f"{i}")["id"] for i in range(3)]
    with Store(db_path) as s:
        c = s.claim(3, lease_seconds=60)
        s.settle([Outcome(e.id, "rejected", error="422") for e in c])
    res = cli_runner("retry", ids[0], "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"retried": 1}
    assert cli_runner("retry", "--all").stdout.strip() == "2 entries back to pending"
    states = {e["state"] for e in json.loads(cli_runner("list", "--json").stdout)}
    assert states == {"pending"}
    missing = cli_runner("retry", "4242")
    assert missing.exit_code == 1
    assert_one_line_error(missing.stderr)
    usage = cli_runner("retry")
    assert usage.exit_code == 2
    assert_one_line_error(usage.stderr)


# --- broken stores and configuration -------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["list"], ["show", "1"], ["record", "-e", "e"]])
def test_corrupt_store_is_one_line_exit_1(run_cli: Any, tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"definitely not sqlite " * 200)
    res = run_cli("--db", bad, *command)
    assert res.returncode == 1
    assert_one_line_error(res.stderr)
    assert str(bad) in res.stderr and "corrupt" in res.stderr
    assert bad.read_bytes().startswith(b"definitely not sqlite")


def test_unopenable_store_is_one_line_exit_1(run_cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("--db", blocker / "sub" / "store.db", "record", "-e", "e")
    assert res.returncode == 1
    assert_one_line_error(res.stderr)


@pytest.mark.parametrize("command", [["status"], ["list"], ["record", "-e", "e"]])
def test_store_path_is_a_directory(run_cli: Any, tmp_path: Path, command: list[str]) -> None:
    res = run_cli("--db", tmp_path, *command)
    assert res.returncode == 1
    assert_one_line_error(res.stderr)
    assert "is a directory" in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_store_is_one_line_exit_1(run_cli: Any, db_path: Path) -> None:
    assert run_cli("record", "-e", "e").returncode == 0
    db_path.chmod(0)
    try:
        res = run_cli("list")
        assert res.returncode == 1
        assert_one_line_error(res.stderr)
        assert str(db_path) in res.stderr
    finally:
        db_path.chmod(0o600)


def test_store_from_a_newer_logbook(run_cli: Any, db_path: Path) -> None:
    assert run_cli("record", "-e", "e").returncode == 0
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    res = run_cli("list")
    assert res.returncode == 1
    assert_one_line_error(res.stderr)
    assert "upgrade" in res.stderr


def test_db_option_beats_env_beats_config(run_cli: Any, logbook_home: Path, tmp_path: Path) -> None:
    opt, env, conf = tmp_path / "opt.db", tmp_path / "env.db", tmp_path / "conf.db"
    (logbook_home / "config.toml").write_text(f'db = "{conf}"\n')
    assert run_cli("record", "-e", "c").returncode == 0
    assert conf.exists()
    assert run_cli("record", "-e", "v", env={"LOGBOOK_DB": str(env)}).returncode == 0
    assert env.exists()
    res = run_cli("--db", opt, "record", "-e", "o", env={"LOGBOOK_DB": str(env)})
    assert res.returncode == 0
    for path, exp in ((opt, "o"), (env, "v"), (conf, "c")):
        with Store(path) as s:
            assert [e.experiment_id for e in s.list()] == [exp]
    status = json.loads(run_cli("status", "--json", env={"LOGBOOK_DB": str(env)}).stdout)
    assert status["db"] == str(env)


@pytest.mark.parametrize(
    "text,word",
    [
        ("db = [\n", "config.toml"),
        ('colour = "blue"\n', "colour"),
        ("db = 3\n", "db"),
        ('auth = "cookie"\n', "auth"),
        ('endpoint = "ftp://x"\n', "endpoint"),
    ],
)
def test_config_errors(run_cli: Any, logbook_home: Path, text: str, word: str) -> None:
    (logbook_home / "config.toml").write_text(text)
    res = run_cli("status")
    assert res.returncode == 2
    assert_one_line_error(res.stderr)
    assert word in res.stderr


def test_config_file_sets_the_store(run_cli: Any, logbook_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "from-config.db"
    (logbook_home / "config.toml").write_text(f'db = "{target}"\nexperiment = "cfg-exp"\n')
    f = tmp_path / "r.jsonl"
    f.write_text('{"name": "x"}\n')
    assert run_cli("import", f).returncode == 0
    with Store(target) as s:
        assert [e.experiment_id for e in s.list()] == ["cfg-exp"]


@pytest.mark.parametrize(
    ("endpoint", "word"),
    [
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:abc", "Port could not be cast"),
        ("https://[::1", "Invalid IPv6 URL"),
        ("http:///jobs", "no host"),
    ],
)
def test_bad_endpoint_is_one_line_and_changes_nothing(
    run_cli: Any, endpoint: str, word: str
) -> None:
    assert run_cli("record", "--experiment", "e", "--name", "kept").returncode == 0
    env = {"HAIQU_EDGE_URI": endpoint, "HAIQU_API_KEY": "k+ey/with=chars+/="}
    for cmd in (["sync"], ["doctor"]):
        r = run_cli(*cmd, env=env)
        assert r.returncode == 2, r.stderr
        assert word in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1 and "unexpected" not in r.stderr
    status = json.loads(run_cli("status", "--json").stdout)
    assert status["counts"]["pending"] == 1
