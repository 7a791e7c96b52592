"""The ``logbook`` command run in-process (click's runner): outputs, exit codes, one-line errors.

What needs a real process (the store on disk between commands, signals,
environment variables, resource limits) is in ``tests/e2e/test_cli.py``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support import assert_entry_shape, assert_one_line_error

import logbook
from logbook.errors import InvalidJob
from logbook.store import Store
from logbook.store.leases import Outcome, end_owner, new_owner

Invoke = Callable[..., Result]


def record_json(cli_runner: Invoke, *args: str) -> dict[str, Any]:
    res = cli_runner("record", "--json", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def claim_and_settle(db: Path, n: int, states: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Claim ``n`` entries as a sync run would, settle the first ones as ``states`` says."""
    owner = new_owner()
    try:
        with Store(db) as s:
            claimed = s.leases.claim(owner, n, lease_seconds=60).entries
            pairs = zip(claimed, states, strict=False)
            outcomes = [Outcome(e.id, state, **extra) for e, (state, extra) in pairs]
            s.leases.settle(owner, outcomes)
            return [e.id for e in claimed]
    finally:
        end_owner(owner)


# --- record ---------------------------------------------------------------------------------


def test_record_defaults_and_contract_keys(cli_runner: Invoke) -> None:
    entry = record_json(cli_runner, "--experiment", "exp1")
    assert_entry_shape(entry)
    assert entry["status"] == "Done"
    assert entry["job_type"] == "User local job"
    assert entry["state"] == "pending" and entry["attempts"] == 0
    assert entry["experiment_id"] == "exp1" and entry["hash"]
    assert entry["remote_id"] is None and entry["synced_at"] is None
    assert entry["created_at"].endswith("Z")


def test_record_prints_the_id(cli_runner: Invoke) -> None:
    res = cli_runner("record", "-e", "x")
    assert res.exit_code == 0 and res.stdout.strip() == "1"
    res = cli_runner("record", "-e", "x", "--name", "second")
    assert res.stdout.strip() == "2"


def test_record_all_fields_and_metrics(cli_runner: Invoke) -> None:
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


def test_record_results_file_and_stdin(cli_runner: Invoke, tmp_path: Path) -> None:
    f = tmp_path / "counts.json"
    f.write_text('{"00": 510, "11": 490}\n')
    entry = record_json(cli_runner, "-e", "e", "--results-file", str(f))
    assert json.loads(entry["results"]) == {"00": 510, "11": 490}
    res = cli_runner("record", "-e", "e2", "--results-file", "-", "--json", input='{"1": 2}')
    assert json.loads(json.loads(res.stdout)["results"]) == {"1": 2}


def test_same_job_twice_gives_the_same_id(cli_runner: Invoke) -> None:
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


def test_metric_nan_is_kept_as_text_and_list_json_stays_json(cli_runner: Invoke) -> None:
    r = cli_runner("record", "-e", "x", "--metric", "v=NaN", "--metric", "w=Infinity", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["metrics"] == {"v": "NaN", "w": "Infinity"}
    listed = cli_runner("list", "--json").stdout
    assert json.loads(listed)[0]["metrics"] == {"v": "NaN", "w": "Infinity"}
    assert "NaN," not in listed.replace('"NaN"', "")


@pytest.mark.parametrize(
    "text, ok",
    [
        ('{"00": 5}', True),
        ('  {"00": 5}\n', True),  # whitespace around JSON text is fine
        ("[1024]", True),
        ('{"00": 5} x', False),  # trailing garbage
        ('{"00": 5}{}', False),
        ("[1, 2", False),
        ("NaN", False),
        ('{"00": Infinity}', False),
        ("[-Infinity]", False),
        ("", True),  # empty means "no results", as the API's default
    ],
)
def test_results_text_is_checked_exactly_as_json_loads_does(
    cli_runner: Invoke, text: str, ok: bool
) -> None:
    res = cli_runner("record", "-e", "e", "--results", text, "--json")
    if ok:
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["results"] == text  # kept verbatim
    else:
        assert res.exit_code == 2
        assert_one_line_error(res.stderr)
        assert "results" in res.stderr
        assert json.loads(cli_runner("list", "--json").stdout) == []


def test_log_refuses_nan_metrics_as_record_does() -> None:
    """``logbook.log`` (the Python side of ``record``) refuses what the API cannot take."""
    with pytest.raises(InvalidJob, match="NaN"):
        logbook.log({"00": 1}, experiment_id="e", metrics={"x": float("nan")})


def test_log_accepts_numpy_counts() -> None:
    np = pytest.importorskip("numpy")
    entry = logbook.log({"00": np.int64(510), "11": np.int64(514)}, experiment_id="e")
    assert json.loads(entry.results or "") == {"00": 510, "11": 514}
    assert entry.shots == "[1024]"


# --- list / show ----------------------------------------------------------------------------


def test_list_json_newest_first_with_filters(cli_runner: Invoke, db_path: Path) -> None:
    ids = [record_json(cli_runner, "-e", "ab"[i % 2], "--name", f"j{i}")["id"] for i in range(6)]
    entries = json.loads(cli_runner("list", "--json").stdout)
    assert [e["id"] for e in entries] == ids[::-1]
    for e in entries:
        assert_entry_shape(e)
    only_b = json.loads(cli_runner("list", "--json", "--experiment", "b").stdout)
    assert [e["id"] for e in only_b] == [ids[5], ids[3], ids[1]]
    two = json.loads(cli_runner("list", "--json", "--limit", "2").stdout)
    assert [e["id"] for e in two] == [ids[5], ids[4]]
    claim_and_settle(db_path, 2, [("rejected", {"error": "422 bad"})])
    rejected = json.loads(cli_runner("list", "--json", "--state", "rejected").stdout)
    assert [e["id"] for e in rejected] == [ids[0]] and rejected[0]["last_error"] == "422 bad"
    assert json.loads(cli_runner("list", "--json", "--state", "synced").stdout) == []
    table = cli_runner("list").stdout
    assert "j5" in table and table.index("j5") < table.index("j0")


def test_list_limit_defaults_to_20_and_0_is_all(cli_runner: Invoke) -> None:
    for i in range(23):
        record_json(cli_runner, "-e", "e", "--name", f"n{i:02d}")
    assert len(json.loads(cli_runner("list", "--json").stdout)) == 20
    assert len(json.loads(cli_runner("list", "--json", "--limit", "0").stdout)) == 23
    table = cli_runner("list").stdout.splitlines()
    assert len(table) == 1 + 20 and "n22" in table[1] and "n02" not in "\n".join(table)
    assert len(cli_runner("list", "--limit", "0").stdout.splitlines()) == 1 + 23


def test_list_on_a_new_store(cli_runner: Invoke, db_path: Path) -> None:
    assert json.loads(cli_runner("list", "--json").stdout) == []
    assert "no entries" in cli_runner("list").stdout
    assert not db_path.exists()


def test_show_text_json_and_missing(cli_runner: Invoke) -> None:
    entry = record_json(cli_runner, "-e", "e", "--name", "shown", "--metric", "k=1")
    js = json.loads(cli_runner("show", entry["id"], "--json").stdout)
    assert js == {**entry, "upstream_id": None, "confirmed": False}  # the entry's keys first
    text = cli_runner("show", entry["id"]).stdout
    assert "shown" in text and entry["hash"] in text and '{"k": 1}' in text
    # No such entry: exit 1.  Not an id at all (bad input): exit 2.
    for missing, code in (("999", 1), ("abc", 2), ("-1", 2), ("1.0", 2), ("²", 2), ("1" * 19, 2)):
        res = cli_runner("show", missing)
        assert res.exit_code == code, (missing, res.stderr)
        assert_one_line_error(res.stderr)


def test_show_on_a_new_store_is_not_found(cli_runner: Invoke, db_path: Path) -> None:
    res = cli_runner("show", "1")
    assert res.exit_code == 1
    assert_one_line_error(res.stderr)
    assert not db_path.exists()


# --- status ---------------------------------------------------------------------------------


def test_status_counts(cli_runner: Invoke, db_path: Path) -> None:
    first = record_json(cli_runner, "-e", "e", "--name", "a")
    record_json(cli_runner, "-e", "e", "--name", "b")
    record_json(cli_runner, "-e", "e", "--name", "c")
    owner = new_owner()
    with Store(db_path) as s:
        c = s.leases.claim(owner, 2, lease_seconds=60).entries
        s.leases.settle(owner, [Outcome(c[0].id, "synced", remote_id="r", remote_status="Done")])
        s.set_meta("last_sync", "2025-05-05T00:00:00Z")
    data = json.loads(cli_runner("status", "--json").stdout)
    assert list(data)[:5] == ["db", "counts", "oldest_pending", "last_sync", "invalid_files"]
    assert data["counts"] == {"pending": 1, "sending": 1, "synced": 1, "rejected": 0}
    assert data["oldest_pending"] != first["created_at"]  # the first one is synced
    assert data["last_sync"] == "2025-05-05T00:00:00Z"
    text = cli_runner("status").stdout
    assert "1 pending" in text and "1 synced" in text
    end_owner(owner)


# --- export / retry -------------------------------------------------------------------------


def test_export_jsonl_and_csv(cli_runner: Invoke) -> None:
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
    assert [
        json.loads(ln)["id"] for ln in cli_runner("export", "-e", "e").stdout.splitlines()
    ] == ids


def test_retry(cli_runner: Invoke, db_path: Path) -> None:
    ids = [record_json(cli_runner, "-e", "e", "--name", f"{i}")["id"] for i in range(3)]
    claim_and_settle(db_path, 3, [("rejected", {"error": "422"})] * 3)
    res = cli_runner("retry", ids[0], "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"retried": 1, "unchanged": []}
    assert cli_runner("retry", "--all").stdout.strip() == "2 entries back to pending"
    states = {e["state"] for e in json.loads(cli_runner("list", "--json").stdout)}
    assert states == {"pending"}
    missing = cli_runner("retry", "4242")
    assert missing.exit_code == 1
    assert_one_line_error(missing.stderr)
    usage = cli_runner("retry")
    assert usage.exit_code == 2
    assert_one_line_error(usage.stderr)
    for not_an_id in ("abc", "²", "9" * 19):
        bad = cli_runner("retry", not_an_id)
        assert bad.exit_code == 2, (not_an_id, bad.stderr)
        assert_one_line_error(bad.stderr)


# --- path, config, completion, the unit -----------------------------------------------------


def test_path_prints_the_store_path(cli_runner: Invoke, db_path: Path, tmp_path: Path) -> None:
    res = cli_runner("path")
    assert res.exit_code == 0 and res.stdout.strip() == str(db_path)
    assert not db_path.exists()  # printing the path creates nothing
    other = tmp_path / "other.db"
    assert cli_runner("--db", other, "path").stdout.strip() == str(other)


def test_config_lists_every_setting_with_its_source(
    cli_runner: Invoke, logbook_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-config-secret-0123456789"
    (logbook_home / "config.toml").write_text(f'api_key = "{key}"\nexperiment = "cfg-exp"\n')
    monkeypatch.setenv("HAIQU_EDGE_URI", "http://127.0.0.1:9")
    res = cli_runner("config")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert key not in out and key[:10] not in out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.strip()}
    assert (
        "cfg-exp" in lines["experiment"]
        and str(logbook_home / "config.toml") in lines["experiment"]
    )
    assert "http://127.0.0.1:9" in lines["endpoint"] and "(HAIQU_EDGE_URI)" in lines["endpoint"]
    assert "(default)" in lines["auth"]
    assert "api_key" in lines and "*" in lines["api_key"]
    # every setting with a default shows the value a command would use, not "(not set)"
    for name, value in [("concurrency", "64"), ("settle", "0.2"), ("request_timeout", "60.0"),
                        ("max_time", "3600.0"), ("max_file_bytes", "67108864")]:  # fmt: skip
        assert lines[name].split()[1] == value and "(default)" in lines[name], lines[name]
    data = json.loads(cli_runner("config", "--json").stdout)
    assert data["endpoint"] == {"value": "http://127.0.0.1:9", "source": "HAIQU_EDGE_URI"}
    assert key not in json.dumps(data)
    path = cli_runner("config", "path")
    assert path.exit_code == 0 and path.stdout.strip() == str(logbook_home / "config.toml")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(cli_runner: Invoke, shell: str) -> None:
    res = cli_runner("completion", shell)
    assert res.exit_code == 0
    assert "_LOGBOOK_COMPLETE" in res.stdout


def test_print_unit(cli_runner: Invoke, tmp_path: Path) -> None:
    d = tmp_path / "my results"
    res = cli_runner("watch", d, "-e", "bell", "--sync", "--print-unit")
    assert res.exit_code == 0, res.stderr
    [exec_start] = [ln for ln in res.stdout.splitlines() if ln.startswith("ExecStart=")]
    assert " watch " in exec_start and f"'{d}'" in exec_start
    assert "--experiment bell" in exec_start and "--sync" in exec_start
    assert "HAIQU_API_KEY=" not in exec_start


def test_list_table_is_one_line_per_entry_whatever_the_name(cli_runner: Invoke) -> None:
    record_json(cli_runner, "-e", "e", "--name", "first line\nsecond line\rthird")
    lines = cli_runner("list").stdout.splitlines()
    assert len(lines) == 2, lines


def test_global_options_work_before_or_after_the_command(
    cli_runner: Invoke, tmp_path: Path
) -> None:
    """`logbook status --db X` is `logbook --db X status`, as git and rclone users type it."""
    other = tmp_path / "other.db"
    res = cli_runner("record", "-e", "g", "--results", '{"0": 1}', "--db", other, "-q")
    assert res.exit_code == 0 and res.stdout.strip() == "1"
    after = json.loads(cli_runner("status", "--json", "--db", other).stdout)
    before = json.loads(cli_runner("--db", other, "status", "--json").stdout)
    assert after == before and after["db"] == str(other) and after["counts"]["pending"] == 1
    # the default store was never touched
    default = json.loads(cli_runner("status", "--json").stdout)
    assert default["counts"]["pending"] == 0
    # -v after the command turns notes on; the global --log-format too
    res = cli_runner("list", "--log-format", "json", "-vv", "--db", other)
    assert res.exit_code == 0
    for name in ("--db", "--verbose", "--quiet", "--stats", "--log-format"):
        assert name in cli_runner("sync", "--help").stdout


def test_every_command_takes_the_global_options_after_its_name(cli_runner: Invoke) -> None:
    """DESIGN: global options are accepted before or after the command, whichever it is."""
    import click

    from logbook.cli import cli as root

    def walk(group: click.Group, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for name, cmd in group.commands.items():
            found.append((*path, name))
            if isinstance(cmd, click.Group):
                found += walk(cmd, (*path, name))
        return found

    commands = walk(root, ())
    assert {("emulator",), ("help",), ("relay", "key", "add")} <= set(commands)
    for path in commands:
        res = cli_runner(*path, "-q", "--log-format", "text", "--help")
        assert res.exit_code == 0, (path, res.stderr)
        for name in ("--db", "--verbose", "--quiet", "--stats", "--log-format"):
            assert name in res.stdout, (path, name)


def test_the_progress_line_says_why_the_run_pauses() -> None:
    """On the bar and the stats line alike: how long, why, and how long in all."""
    import time

    from logbook.cli.output import pause_text, stats_line
    from logbook.progress import Progress

    p = Progress()
    p.begin("sending", 5000)
    assert pause_text(p) == "" and "paused" not in stats_line(p)
    p.pause(1.2, "Retry-After")
    p.pause(0.5, "Retry-After")  # within the first: counted once
    assert pause_text(p) == "paused 1 s: Retry-After, 1 s in all"
    assert stats_line(p).endswith(", paused 1 s: Retry-After, 1 s in all")
    p.paused_until = time.monotonic() - 1  # it has passed
    p.paused_total = 412.4
    assert pause_text(p) == "paused 412 s in all"
