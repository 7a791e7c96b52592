"""The ``logbook`` command as a user runs it, as a real process: exit codes, errors, bad input.

Every error is one line on stderr (``logbook: error: ...``) with the exit
code the contract gives, never a traceback, and changes nothing it was not
asked to change.  What can be checked in-process is in ``tests/unit/test_cli.py``.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    CLI_TIMEOUT,
    Run,
    assert_exactly_once,
    assert_no_key,
    assert_no_traceback,
    assert_one_line_error,
    base_env,
    cli,
    cli_cmd,
    entries,
    make_jobs,
    seed_store,
    states,
    sync_until_done,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess
from logbook.store import STATES, Store

RunCli = Callable[..., Run]


def assert_error(run: Run, code: int, *words: str) -> None:
    """Exit ``code``, one error line on stderr holding every one of ``words``, nothing on stdout."""
    assert run.code == code, (run.code, run.err)
    assert_one_line_error(run.err)
    assert run.err.startswith("logbook: error: "), run.err
    for word in words:
        assert word in run.err, (word, run.err)
    assert run.out == ""


# --- the command itself ---------------------------------------------------------------------


def test_help_and_python_dash_m(run_cli: RunCli) -> None:
    res = run_cli("--help")
    assert res.code == 0
    for cmd in ("record", "import", "list", "show", "status", "export", "retry", "sync", "watch",
                "doctor", "config", "path", "completion"):  # fmt: skip
        assert cmd in res.out
    assert res.err == ""
    sub = run_cli("record", "--help")
    assert sub.code == 0 and "--results-file" in sub.out


def test_help_command_is_the_commands_own_help(run_cli: RunCli) -> None:
    for path in (["sync"], ["relay", "key", "add"], ["emulator"], []):
        res = run_cli("help", *path)
        assert res.code == 0 and res.err == "", res.err
        assert res.out == run_cli(*path, "--help").out, path
    for path in (["nope"], ["relay", "nope"], ["status", "x"]):
        res = run_cli("help", *path)
        assert_error(res, 2, "no such command", f"logbook {' '.join(path)}")


def test_top_level_help_shows_whole_one_line_descriptions(run_cli: RunCli) -> None:
    from logbook.cli import cli as root

    text = run_cli("--help").out
    listed = text[text.index("Commands:") :].splitlines()[1:]
    assert not any(line.rstrip().endswith("...") for line in listed), text
    for name, command in root.commands.items():
        first = command.get_short_help_str(limit=10_000)
        [row] = [line for line in listed if line.split()[:1] == [name]]
        assert row.split(None, 1)[1] == first, (row, first)  # whole, on its one line
        assert len(row) <= 80, row


def test_a_bad_id_gets_one_hint(run_cli: RunCli) -> None:
    res = run_cli("show", "abc")
    assert_error(res, 2, "not an entry id", "`logbook list`")
    assert res.err.count("(see ") == 1, res.err


def test_demo_lines_can_be_pasted_back(tmp_path: Path) -> None:
    """What scripts/demo shows after `$ ` runs as the same command (quoted arguments)."""
    args = ["record", "--name", "bell, hand-typed", "--results", '{"00": 510, "11": 514}',
            "--metric", "note=it's", "--shots", "[1024]", "plain-arg_1.json", ""]  # fmt: skip
    shown = subprocess.run(
        ["bash", "-c", 'source scripts/_shown.sh && shown logbook "$@"', "-", *args],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    line = shown.stdout
    assert line.startswith("logbook record --name 'bell, hand-typed' --results '{")
    assert "plain-arg_1.json" in line and "'plain-arg_1.json'" not in line  # quoted only if needed
    echo = 'logbook() { python3 -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }'
    back = subprocess.run(["bash", "-c", f"{echo}; {line}"], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert json.loads(back.stdout) == args, (line, back.stderr)


def test_record_list_show_status_in_real_processes(run_cli: RunCli, db_path: Path) -> None:
    first = run_cli("record", "-e", "bell", "--name", "run 1", "--results", '{"00": 3}')
    assert first.code == 0, first.err
    entry_id = first.out.strip()
    assert entry_id.isdigit()
    assert db_path.exists()
    listed = run_cli("list", "--json")
    assert listed.code == 0
    assert [e["id"] for e in listed.json()] == [entry_id]
    shown = run_cli("show", entry_id, "--json")
    assert shown.json()["name"] == "run 1"
    status = run_cli("status", "--json")
    assert status.json()["counts"]["pending"] == 1
    for res in (first, listed, shown, status):
        assert_no_traceback(res.out, res.err)


# --- record: bad input ----------------------------------------------------------------------


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
    pytest.param(["--results", "NaN"], "results", id="results-nan"),
    pytest.param(["--results", '{"00": Infinity}'], "results", id="results-infinity"),
    pytest.param(["--results", "[-Infinity]"], "results", id="results-minus-infinity"),
]


@pytest.mark.parametrize("args,word", BAD_RECORDS)
def test_bad_record_is_one_line_exit_2_and_stores_nothing(
    run_cli: RunCli, db_path: Path, args: list[str], word: str
) -> None:
    ok = run_cli("record", "-e", "keep", "--name", "precious")
    assert ok.code == 0
    before = db_path.read_bytes()
    res = run_cli("record", "-e", "e", *args)
    assert_error(res, 2, word)
    assert [e["name"] for e in run_cli("list", "--json").json()] == ["precious"]
    assert len(db_path.read_bytes()) == len(before)
    assert run_cli("status", "--json").json()["counts"]["pending"] == 1


def test_bad_record_on_a_new_store_creates_nothing(run_cli: RunCli, db_path: Path) -> None:
    res = run_cli("record", "-e", "e", "--status", "nope")
    assert res.code == 2
    assert not db_path.exists()


def test_missing_experiment_is_a_usage_error(run_cli: RunCli) -> None:
    assert_error(run_cli("record", "--name", "x"), 2, "--experiment")


def test_unknown_command_and_option(run_cli: RunCli) -> None:
    for args in (["frobnicate"], ["list", "--colour"], ["list", "--limit", "-3"]):
        assert_error(run_cli(*args), 2)


def test_experiment_that_is_not_utf8_is_exit_2(run_cli: RunCli, db_path: Path) -> None:
    res = run_cli("record", "-e", os.fsdecode(b"\xff"))  # the byte 0xff on the command line
    assert_error(res, 2, "experiment_id")
    assert not db_path.exists()


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_results_nested_100000_levels_is_exit_2(run_cli: RunCli, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(_deep(100_000))
    assert_error(run_cli("record", "-e", "e", "--results-file", deep), 2, "results")
    assert_error(run_cli("record", "-e", "e", "--results-file", "-", input=_deep(100_000)), 2)
    # On the command line itself (an argument is at most 128 KiB on Linux: 65,000 levels).
    assert_error(run_cli("record", "-e", "e", "--results", _deep(65_000)), 2, "results")
    assert run_cli("status", "--json").json()["counts"]["pending"] == 0


def test_an_escaped_lone_surrogate_is_refused_however_it_is_written(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Found by the model test: JSON text with ``\\ud800`` was stored, a dict with it refused."""
    assert run_cli("record", "-e", "keep").code == 0
    bad = '{"x": "\\ud800"}'
    assert_error(run_cli("record", "-e", "e", "--results", bad), 2, "surrogate")
    lines = tmp_path / "p.jsonl"
    lines.write_text(json.dumps({"experiment_id": "e", "results": bad}) + "\n")
    res = run_cli("import", lines)
    assert res.code != 0 and "surrogate" in res.err and "Traceback" not in res.err
    counts = run_cli("status", "--json").json()["counts"]
    assert counts["pending"] == 1  # only the entry recorded before


def test_results_file_dev_zero_is_refused_by_size(run_cli: RunCli, db_path: Path) -> None:
    res = run_cli("record", "-e", "e", "--results-file", "/dev/zero", timeout=30)
    assert_error(res, 2, "bytes")
    assert "MemoryError" not in res.err
    assert not db_path.exists()


@pytest.mark.parametrize("command", ["show", "retry"])
@pytest.mark.parametrize("entry_id", ["99999999999999999999999", "²", "-1", "1e3", "0x10"])
def test_ids_that_are_not_ascii_digits_are_exit_2(
    run_cli: RunCli, command: str, entry_id: str
) -> None:
    assert run_cli("record", "-e", "e").code == 0
    res = run_cli(command, entry_id)
    assert_error(
        res, 2, *(() if entry_id.startswith("-") else ("not an entry id",))
    )  # -1: an option
    assert run_cli("status", "--json").json()["counts"]["pending"] == 1


def test_show_missing_and_non_numeric(run_cli: RunCli) -> None:
    assert run_cli("record", "-e", "e").code == 0
    assert_error(run_cli("show", "999"), 1, "999")
    assert_error(run_cli("show", "abc"), 2)


# --- list, path, config, completion, the unit -----------------------------------------------


def test_list_shows_20_by_default_and_limit_0_shows_all(
    run_cli: RunCli, logbook_home: Path
) -> None:
    seed_store(logbook_home, 25)
    shown = run_cli("list", "--json").json()
    assert len(shown) == 20
    assert [e["name"] for e in shown] == [f"job-{i}" for i in range(24, 4, -1)]  # newest first
    assert len(run_cli("list", "--json", "--limit", "0").json()) == 25
    table = run_cli("list").out.splitlines()
    assert len(table) == 1 + 20
    assert len(run_cli("list", "--limit", "0").out.splitlines()) == 1 + 25
    assert len(run_cli("list", "--limit", "3", "--json").json()) == 3


def test_path_prints_the_store_path(run_cli: RunCli, db_path: Path, tmp_path: Path) -> None:
    res = run_cli("path")
    assert res.code == 0 and res.out == f"{db_path}\n" and res.err == ""
    env_db = tmp_path / "env.db"
    assert run_cli("path", env={"LOGBOOK_DB": str(env_db)}).out.strip() == str(env_db)
    assert not db_path.exists() and not env_db.exists()


def test_config_shows_the_proxy_and_cas_in_effect_and_where_they_come_from(
    run_cli: RunCli, logbook_home: Path, tmp_path: Path
) -> None:
    """As doctor uses them: the environment's proxy and CA too, only the password masked."""
    ca = tmp_path / "lab-ca.pem"
    ca.write_text("not read by config")
    env = {"HTTPS_PROXY": "http://bob:pr0xy-s3cret@proxy.lab:3128", "SSL_CERT_FILE": str(ca)}
    res = run_cli("config", "--json", env=env)
    shown = res.json()
    assert shown["proxy"] == {"value": "http://bob:****@proxy.lab:3128", "source": "HTTPS_PROXY"}
    assert shown["ca_bundle"] == {"value": f"the system's CAs and {ca}", "source": "SSL_CERT_FILE"}
    assert "pr0xy-s3cret" not in res.out + res.err
    bypassed = run_cli("config", "--json", env={**env, "NO_PROXY": "api.haiqu.ai"}).json()
    assert bypassed["proxy"]["source"] == "NO_PROXY" and "none" in bypassed["proxy"]["value"]
    write_config(logbook_home, ['proxy = "http://proxy.lab:3128"'])
    from_file = run_cli("config", "--json").json()["proxy"]
    assert from_file == {"value": "http://proxy.lab:3128",
                         "source": f"proxy in {logbook_home / 'config.toml'}"}  # fmt: skip
    assert run_cli("config", "--json", env={"HTTP_PROXY": "x"}).json()["ca_bundle"] == {
        "value": "the system's CAs",
        "source": "default",
    }
    doctor = run_cli("doctor", "--json", env=env).json()
    checks = {c["check"]: c["message"] for c in doctor}
    assert checks["proxy"] == "http://bob:****@proxy.lab:3128 (from HTTPS_PROXY)"


def test_completion_without_a_shell_is_one_line(run_cli: RunCli) -> None:
    assert_error(run_cli("completion"), 2, "bash, zsh, fish")


def test_dry_run_without_a_key_says_a_real_sync_would_stop_there(run_cli: RunCli) -> None:
    assert run_cli("record", "-e", "x", "--results", "{}").code == 0
    res = run_cli("sync", "--dry-run")
    assert res.code == 0 and "1 entries would be sent" in res.out
    assert "a real sync would stop here: no API key: set HAIQU_API_KEY" in res.err


def test_config_shows_settings_and_sources_with_the_key_masked(
    run_cli: RunCli, logbook_home: Path
) -> None:
    key = "sk-e2e-config-key-0123456789abcdef"
    write_config(logbook_home, ['experiment = "from-file"', "concurrency = 8"])
    res = run_cli("config", env={"HAIQU_API_KEY": key, "HAIQU_EDGE_URI": "http://127.0.0.1:9"})
    assert res.code == 0, res.err
    assert_no_key(res.out + res.err, key, "logbook config")
    rows = {ln.split()[0]: ln for ln in res.out.splitlines()[1:] if ln.strip()}
    assert set(rows) >= {"db", "endpoint", "api_key", "auth", "concurrency", "experiment"}
    assert "(HAIQU_API_KEY)" in rows["api_key"] and "*" in rows["api_key"]
    assert "(HAIQU_EDGE_URI)" in rows["endpoint"]
    assert (
        "from-file" in rows["experiment"]
        and str(logbook_home / "config.toml") in rows["experiment"]
    )
    assert "8" in rows["concurrency"] and "(default)" in rows["auth"]
    path = run_cli("config", "path")
    assert path.code == 0 and path.out.strip() == str(logbook_home / "config.toml")


def test_completion_bash(run_cli: RunCli) -> None:
    res = run_cli("completion", "bash")
    assert res.code == 0 and "_LOGBOOK_COMPLETE" in res.out and res.err == ""


def test_watch_print_unit(run_cli: RunCli, tmp_path: Path) -> None:
    d = tmp_path / "results"
    res = run_cli("watch", d, "-e", "bell", "--print-unit")
    assert res.code == 0, res.err
    [exec_start] = [ln for ln in res.out.splitlines() if ln.startswith("ExecStart=")]
    assert "watch" in exec_start and str(d) in exec_start and "bell" in exec_start


def test_watch_print_unit_keeps_every_option(run_cli: RunCli, tmp_path: Path) -> None:
    db = tmp_path / "lab.db"
    res = run_cli(
        "--db", db, "watch", tmp_path, "--sync", "--endpoint", "http://127.0.0.1:9",
        "--auth", "header", "--settle", "2", "--rescan", "30", "--refresh", "60", "--print-unit",
    )  # fmt: skip
    assert res.code == 0, res.err
    unit = res.out
    for word in (str(db), "http://127.0.0.1:9", "header", "--settle", "--rescan", "--refresh"):
        assert word in unit, word


def test_watch_print_unit_escapes_percent_and_dollar(run_cli: RunCli, tmp_path: Path) -> None:
    d = tmp_path / "100%" / "$HOME"
    res = run_cli("watch", d, "--print-unit")
    [exec_start] = [ln for ln in res.out.splitlines() if ln.startswith("ExecStart=")]
    assert "100%%" in exec_start and "$$HOME" in exec_start


def test_a_unit_uses_the_home_it_was_printed_from(tmp_path: Path) -> None:
    """The service's store and config are the printing shell's, even an odd path's."""
    home = tmp_path / 'lab "7" 100% $HOME'
    res = cli(home, "watch", tmp_path, "--print-unit")
    assert res.code == 0, res.err
    [line] = [ln for ln in res.out.splitlines() if "LOGBOOK_HOME=" in ln and "#" not in ln]
    escaped = str(home).replace('"', '\\"').replace("%", "%%")
    assert line == f'Environment="LOGBOOK_HOME={escaped}"'


def _on_a_terminal(home: Path, *args: str) -> bytes:
    """What ``logbook ARGS`` writes to a terminal (a pseudo-terminal: click keeps escapes there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cli_cmd(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=base_env(home)
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=CLI_TIMEOUT)
    return out


def test_names_cannot_send_escape_sequences_to_the_terminal(
    run_cli: RunCli, logbook_home: Path
) -> None:
    assert run_cli("record", "-e", "e", "--name", "evil\x1b[2J\x1b[31mred").code == 0
    for command in (["list"], ["show", "1"]):
        out = _on_a_terminal(logbook_home, *command)
        assert b"evil" in out, out
        assert b"\x1b" not in out, (command, out)


# --- import ---------------------------------------------------------------------------------


def _write_jobs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_import_counts_and_exit_codes(run_cli: RunCli, tmp_path: Path) -> None:
    d = tmp_path / "results"
    d.mkdir()
    _write_jobs(d / "batch.jsonl", [{"name": f"j{i}", "results": {"0": i}} for i in range(3)])
    (d / "one.json").write_text(json.dumps({"experiment_id": "own", "name": "single"}))
    (d / ".hidden.json").write_text("garbage")
    (d / "partial.json.part").write_text("garbage")
    res = run_cli("import", d, "--experiment", "imp")
    assert res.code == 0, res.err
    assert res.out.strip() == "4 jobs recorded, 0 already known; 2 files read, 0 invalid"
    again = run_cli("import", d, "--experiment", "imp", "--json")
    assert again.code == 0
    report = again.json()
    assert (report["recorded"], report["known"], report["invalid"]) == (0, 4, 0)
    listed = run_cli("list", "--json").json()
    assert sorted(e["experiment_id"] for e in listed) == ["imp", "imp", "imp", "own"]


def test_import_invalid_files_are_reported_and_exit_1(run_cli: RunCli, tmp_path: Path) -> None:
    good = _write_jobs(tmp_path / "good.jsonl", [{"experiment_id": "e", "name": "ok"}])
    bad = tmp_path / "bad.json"
    bad.write_text('{"experiment_id": "e", "status": "Finished"}')
    junk = tmp_path / "junk.json"
    junk.write_text("not json at all")
    res = run_cli("import", good, bad, junk)
    assert res.code == 1
    assert_no_traceback(res.out, res.err)
    assert res.out.strip() == "1 jobs recorded, 0 already known; 3 files read, 2 invalid"
    lines = res.err.strip().splitlines()
    assert len(lines) == 2
    assert any("bad.json" in ln and "status" in ln for ln in lines)
    assert any("junk.json" in ln for ln in lines)
    js = run_cli("import", bad, "--json")
    assert js.code == 1
    report = js.json()
    assert report["invalid"] == 1 and report["invalid_files"][0]["path"].endswith("bad.json")
    assert "status" in report["invalid_files"][0]["reason"]


def test_import_of_a_missing_path_is_exit_2_and_records_nothing(
    run_cli: RunCli, tmp_path: Path
) -> None:
    good = _write_jobs(tmp_path / "good.jsonl", [{"experiment_id": "e", "name": "ok"}])
    res = run_cli("import", good, tmp_path / "missing.json")
    assert_error(res, 2, "missing.json")
    assert run_cli("status", "--json").json()["counts"] == dict.fromkeys(STATES, 0)


# --- stores: missing, broken, someone else's, read-only -------------------------------------


def test_status_on_a_store_that_does_not_exist(run_cli: RunCli, db_path: Path) -> None:
    res = run_cli("status", "--json")
    assert res.code == 0, res.err
    data = res.json()
    assert data["db"] == str(db_path)
    assert data["counts"] == dict.fromkeys(STATES, 0)
    assert data["oldest_pending"] is None and data["last_sync"] is None
    assert not db_path.exists()
    assert run_cli("status").code == 0
    assert run_cli("export").out == ""
    assert not db_path.exists()


READING = [["status"], ["status", "--json"], ["list"], ["show", "1"], ["export"],
           ["retry", "--all"], ["rm", "1"], ["sync", "--dry-run"]]  # fmt: skip


@pytest.mark.parametrize("command", [*READING, ["record", "-e", "e"]])
def test_a_file_that_is_no_sqlite_database_is_not_a_store_and_no_backup_is_advised(
    run_cli: RunCli, tmp_path: Path, command: list[str]
) -> None:
    """``--db /etc/passwd``: not a damaged store (no "restore a backup"), someone else's file."""
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    before = text.read_bytes()
    res = run_cli("--db", text, *command)
    assert_error(res, 2, str(text), "not a logbook store", "not an SQLite database")
    assert "backup" not in res.err
    assert text.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["passwd"]


@pytest.mark.parametrize("command", [*READING, ["record", "-e", "e"]])
def test_a_damaged_store_is_one_line_exit_1(
    run_cli: RunCli, tmp_path: Path, command: list[str]
) -> None:
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"definitely not sqlite " * 200)
    res = run_cli("--db", bad, *command)
    assert_error(res, 1, str(bad), "damaged")
    assert bad.read_bytes() == b"SQLite format 3\x00" + b"definitely not sqlite " * 200


@pytest.mark.parametrize("command", READING)
def test_a_store_path_given_that_does_not_exist_is_exit_1_and_creates_nothing(
    run_cli: RunCli, tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "typo" / "x.db"
    assert_error(run_cli("--db", typo, *command), 1, f"no store at {typo} (from --db)")
    res = run_cli(*command, env={"LOGBOOK_DB": str(typo)})
    assert_error(res, 1, "from LOGBOOK_DB")
    assert not typo.parent.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["list"],
        ["show", "1500"],
        ["export"],
        ["record", "-e", "e"],
        ["sync", "--dry-run"],
    ],
)
def test_a_truncated_store_is_one_line_exit_1_and_left_as_it_is(
    run_cli: RunCli, logbook_home: Path, command: list[str]
) -> None:
    """A store cut in half (a copy that stopped, a full disk elsewhere): every command says
    so in one line and nothing writes to it."""
    seed_store(logbook_home, 2000)
    db = logbook_home / "logbook.db"
    for side in ("-wal", "-shm"):
        assert not Path(f"{db}{side}").exists() or Path(f"{db}{side}").stat().st_size == 0
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    res = run_cli(*command)
    assert_error(res, 1, str(db), "damaged")
    assert db.read_bytes() == data[: len(data) // 2]


def test_unopenable_store_is_one_line_exit_1(run_cli: RunCli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_error(run_cli("--db", blocker / "sub" / "store.db", "record", "-e", "e"), 1)


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["list"],
        ["record", "-e", "e"],
    ],
)
def test_store_path_is_a_directory(run_cli: RunCli, tmp_path: Path, command: list[str]) -> None:
    assert_error(run_cli("--db", tmp_path, *command), 1, "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_store_is_one_line_exit_1(run_cli: RunCli, db_path: Path) -> None:
    assert run_cli("record", "-e", "e").code == 0
    db_path.chmod(0)
    try:
        assert_error(run_cli("list"), 1, str(db_path))
    finally:
        db_path.chmod(0o600)


def test_store_from_a_newer_logbook(run_cli: RunCli, db_path: Path) -> None:
    assert run_cli("record", "-e", "e").code == 0
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    assert_error(run_cli("list"), 1, "upgrade")


def _foreign_sqlite(path: Path, journal: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('not a logbook')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_sqlite_file_is_exit_2_and_left_byte_identical(
    run_cli: RunCli, tmp_path: Path, journal: str
) -> None:
    other = tmp_path / "other.sqlite"
    _foreign_sqlite(other, journal)
    before = other.read_bytes()
    names = sorted(os.listdir(tmp_path))
    commands = (["status"], ["status", "--json"], ["list"], ["show", "1"], ["export"],
                ["record", "-e", "e"], ["retry", "--all"], ["sync", "--dry-run"])  # fmt: skip
    for command in commands:
        assert_error(run_cli("--db", other, *command), 2, "not a logbook store", str(other))
    assert other.read_bytes() == before
    added = sorted(set(os.listdir(tmp_path)) - set(names))
    if journal == "delete":
        assert added == []  # no -wal, -shm or -journal left behind
    else:  # SQLite's read-only readers of a WAL file leave its (empty) -wal and -shm, as any reader
        assert set(added) <= {"other.sqlite-wal", "other.sqlite-shm"}
        assert (
            not (tmp_path / "other.sqlite-wal").exists()
            or (tmp_path / "other.sqlite-wal").stat().st_size == 0
        )
    conn = sqlite3.connect(f"file:{other}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    finally:
        conn.close()


def _nobody_runner() -> Callable[[list[str]], list[str]] | None:
    """How to run a command as a user who cannot write a root-owned directory (None: no way)."""
    if os.geteuid() != 0:
        return lambda cmd: cmd  # we are such a user already
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    wrap = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    try:
        probe = subprocess.run(
            [*wrap, *cli_cmd("--version")], capture_output=True, text=True, timeout=CLI_TIMEOUT,
            env=base_env(Path("/nonexistent")), cwd="/",
        )  # fmt: skip
    except OSError:
        return None
    if probe.returncode != 0:
        return None
    return lambda cmd: [*wrap, *cmd]


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    """A directory everyone can read and nobody but root can write (mode 555); removed after."""
    top = Path(tempfile.mkdtemp(prefix="logbook-ro-"))
    top.chmod(0o755)
    d = top / "store"
    d.mkdir()
    try:
        yield d
    finally:
        d.chmod(0o755)
        shutil.rmtree(top)


def _as_nobody(runner: Callable[[list[str]], list[str]], home: Path, *args: str) -> Run:
    proc = subprocess.run(
        runner(cli_cmd(*args)), env=base_env(home), capture_output=True, text=True,
        timeout=CLI_TIMEOUT, cwd="/",
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _copy_store(src_home: Path, dest: Path, suffixes: tuple[str, ...]) -> Path:
    db = dest / "logbook.db"
    for suffix in suffixes:
        shutil.copyfile(str(src_home / "logbook.db") + suffix, str(db) + suffix)
        os.chmod(str(db) + suffix, 0o644)
    dest.chmod(0o555)
    return db


def test_a_store_in_a_read_only_place_is_readable(read_only_dir: Path, logbook_home: Path) -> None:
    runner = _nobody_runner()
    if runner is None:
        pytest.skip("cannot run as a user without write access here (no usable setpriv)")
    seed_store(logbook_home, 5)
    db = _copy_store(logbook_home, read_only_dir, ("",))
    before = db.read_bytes()
    status = _as_nobody(runner, read_only_dir, "--db", str(db), "status", "--json")
    assert status.code == 0, status.err
    assert status.json()["counts"]["pending"] == 5
    listed = _as_nobody(runner, read_only_dir, "--db", str(db), "list", "--json")
    assert listed.code == 0 and len(listed.json()) == 5
    exported = _as_nobody(runner, read_only_dir, "--db", str(db), "export")
    assert exported.code == 0 and len(exported.out.splitlines()) == 5
    shown = _as_nobody(runner, read_only_dir, "--db", str(db), "show", "1", "--json")
    assert shown.code == 0 and shown.json()["name"] == "job-0"
    for run in (status, listed, exported, shown):
        assert_no_traceback(run.err)
    assert db.read_bytes() == before
    assert sorted(os.listdir(read_only_dir)) == ["logbook.db"]
    # Writing there is refused with one line, and changes nothing.
    rec = _as_nobody(runner, read_only_dir, "--db", str(db), "record", "-e", "e")
    assert rec.code == 1 and "logbook.db" in rec.err
    assert_one_line_error(rec.err)
    assert db.read_bytes() == before


def test_a_store_with_its_wal_in_a_read_only_place_shows_every_entry(
    read_only_dir: Path, logbook_home: Path
) -> None:
    runner = _nobody_runner()
    if runner is None:
        pytest.skip("cannot run as a user without write access here (no usable setpriv)")
    seed_store(logbook_home, 3)  # closed: these are in the main file
    live = Store(logbook_home / "logbook.db")
    try:
        live.record_many(make_jobs(4, start=100))  # these are still in the -wal
        db = _copy_store(logbook_home, read_only_dir, ("", "-wal"))
    finally:
        live.close()
    status = _as_nobody(runner, read_only_dir, "--db", str(db), "status", "--json")
    # Either every entry, or an error that says so: never a silent subset.
    assert status.code != 0 or status.json()["counts"]["pending"] == 7, status.out


# --- configuration --------------------------------------------------------------------------


def test_db_option_beats_env_beats_config(
    run_cli: RunCli, logbook_home: Path, tmp_path: Path
) -> None:
    opt, env, conf = tmp_path / "opt.db", tmp_path / "env.db", tmp_path / "conf.db"
    write_config(logbook_home, [f'db = "{conf}"'])
    assert run_cli("record", "-e", "c").code == 0
    assert conf.exists()
    assert run_cli("record", "-e", "v", env={"LOGBOOK_DB": str(env)}).code == 0
    assert env.exists()
    res = run_cli("--db", opt, "record", "-e", "o", env={"LOGBOOK_DB": str(env)})
    assert res.code == 0
    for path, exp in ((opt, "o"), (env, "v"), (conf, "c")):
        assert [e["experiment_id"] for e in entries(path)] == [exp]
    status = run_cli("status", "--json", env={"LOGBOOK_DB": str(env)}).json()
    assert status["db"] == str(env)


def test_relative_db_in_config_is_under_logbook_home(run_cli: RunCli, logbook_home: Path) -> None:
    write_config(logbook_home, ['db = "lab.db"'])
    assert run_cli("record", "-e", "x", "--results", "{}").code == 0
    assert (logbook_home / "lab.db").exists()
    assert run_cli("status", "--json").json()["db"] == str(logbook_home / "lab.db")


def test_config_file_sets_the_store(run_cli: RunCli, logbook_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "from-config.db"
    write_config(logbook_home, [f'db = "{target}"', 'experiment = "cfg-exp"'])
    f = tmp_path / "r.jsonl"
    f.write_text('{"name": "x"}\n')
    assert run_cli("import", f).code == 0
    assert [e["experiment_id"] for e in entries(target)] == ["cfg-exp"]


@pytest.mark.parametrize(
    "text,word",
    [
        ("db = [\n", "config.toml"),
        ('colour = "blue"\n', "colour"),
        ("db = 3\n", "db"),
        ('auth = "cookie"\n', "auth"),
        ('endpoint = "ftp://x"\n', "endpoint"),
        ("request_timeout = inf\n", "request_timeout"),
        ("request_timeout = nan\n", "request_timeout"),
        ("max_time = inf\n", "max_time"),
        ("settle = -inf\n", "settle"),
    ],
)
def test_config_errors(run_cli: RunCli, logbook_home: Path, text: str, word: str) -> None:
    (logbook_home / "config.toml").write_text(text)
    for command in (["status"], ["sync", "--dry-run"]):
        assert_error(run_cli(*command), 2, word)


def test_config_that_is_not_utf8_is_exit_2(run_cli: RunCli, logbook_home: Path) -> None:
    (logbook_home / "config.toml").write_bytes(b"\xff\xfe")
    for command in (["status"], ["record", "-e", "e"], ["config"]):
        assert_error(run_cli(*command), 2, "config.toml", "UTF-8")
    assert not (logbook_home / "logbook.db").exists()


@pytest.mark.parametrize("line", ["concurrency = 0", "concurrency = 9999", "request_timeout = -1"])
def test_config_values_out_of_range(run_cli: RunCli, logbook_home: Path, line: str) -> None:
    write_config(logbook_home, [line])
    res = run_cli("sync", env={"HAIQU_API_KEY": "k" * 16, "HAIQU_EDGE_URI": "http://127.0.0.1:9"})
    assert_error(res, 2, line.split()[0])


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
    run_cli: RunCli, endpoint: str, word: str
) -> None:
    assert run_cli("record", "--experiment", "e", "--name", "kept").code == 0
    env = {"HAIQU_EDGE_URI": endpoint, "HAIQU_API_KEY": "k+ey/with=chars+/="}
    for cmd in (["sync"], ["doctor"]):
        r = run_cli(*cmd, env=env)
        assert_error(r, 2, word)
        assert "unexpected" not in r.err
    assert run_cli("status", "--json").json()["counts"]["pending"] == 1


SECRET_URLS = [
    pytest.param("http://127.0.0.1:9/?HAIQU_API_KEY=secretvalue123", "secretvalue123", id="query"),
    pytest.param("http://user:password123@127.0.0.1:9", "password123", id="password"),
    pytest.param("http://127.0.0.1:9/#secretvalue123", "secretvalue123", id="fragment"),
    pytest.param("ftp://user:password123@127.0.0.1:9", "password123", id="password-bad-scheme"),
]


@pytest.mark.parametrize(("endpoint", "secret"), SECRET_URLS)
def test_endpoint_holding_a_secret_is_refused_without_showing_it(
    run_cli: RunCli, endpoint: str, secret: str
) -> None:
    assert run_cli("record", "-e", "e").code == 0
    env = {"HAIQU_EDGE_URI": endpoint, "HAIQU_API_KEY": "an-api-key-0123456789"}
    for command in (["doctor"], ["doctor", "--json"], ["sync", "--dry-run"], ["sync"],
                    ["-v", "sync", "--json"], ["config"]):  # fmt: skip
        res = run_cli(*command, env=env)
        assert_error(res, 2, "HAIQU_EDGE_URI")
        assert_no_key(res.out + res.err, secret, f"logbook {' '.join(command)}")
    assert run_cli("status", "--json").json()["counts"]["pending"] == 1


def test_key_with_a_trailing_crlf_is_stripped_and_works(
    run_cli: RunCli, emulator: EmulatorProcess
) -> None:
    assert run_cli("record", "-e", "e", "--results", "{}").code == 0
    env = dict(emulator.env(), HAIQU_API_KEY=emulator.key + "\r\n")
    doctor = run_cli("doctor", "--json", env=env)
    assert doctor.code == 0, doctor.out + doctor.err
    checks = {c["check"]: c for c in doctor.json()}
    assert "accepts the key" in checks["server"]["message"]
    sync = run_cli("--stats", "0", "-v", "sync", "--json", env=env)
    assert sync.code == 0, sync.err
    assert sync.json()["synced"] == 1
    assert "stripped a trailing line ending" in sync.err
    assert emulator.stats()["jobs_created"] == 1
    for text in (doctor.out + doctor.err, sync.out + sync.err):
        assert_no_key(text, emulator.key, "a run with a CRLF key")


@pytest.mark.parametrize("bad", ["abc\x01defghijklmnop", "abc defghijklmnop", "abcdéfghijklmnop"])
def test_key_with_a_control_character_is_exit_2_naming_it_without_showing_it(
    run_cli: RunCli, bad: str
) -> None:
    env = {"HAIQU_API_KEY": bad, "HAIQU_EDGE_URI": "http://127.0.0.1:9"}
    for command in (["doctor"], ["sync"], ["sync", "--dry-run"], ["config"]):
        res = run_cli(*command, env=env)
        assert_error(res, 2, "HAIQU_API_KEY")
        for part in (bad, bad[:10], "defghijklmnop"):
            assert part not in res.out + res.err


# --- a full disk ----------------------------------------------------------------------------


def _limited(home: Path, limit: int, *args: str, env: dict[str, str] | None = None) -> Run:
    """``logbook ARGS`` with RLIMIT_FSIZE in the child: a write past ``limit`` bytes fails (EFBIG).

    Python ignores SIGXFSZ, so the write fails as on a full disk instead of killing the process.
    """

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        cli_cmd(*args), env=base_env(home, env), capture_output=True, text=True,
        timeout=CLI_TIMEOUT, preexec_fn=limit_files,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _intact(db: Path, pending: int) -> None:
    with Store(db, readonly=True) as store:
        assert store.integrity() == "ok"
        assert (
            store.counts()["pending"] + store.counts()["sending"] + store.counts()["synced"]
            == pending
        )


#: Big enough for the store's -shm (32 KiB), far smaller than a 100 KB record's -wal frames.
SMALL_LIMIT = 64 * 1024
BIG_RESULTS = json.dumps({"blob": "x" * 100_000})


def _record_on_a_full_disk(home: Path) -> tuple[Run, Path]:
    db = seed_store(home, 300)
    assert db.stat().st_size > SMALL_LIMIT  # the store exists; only its growth fails
    before = entries(db)
    res = _limited(home, SMALL_LIMIT, "record", "-e", "big", "--results", BIG_RESULTS)
    assert entries(db) == before
    _intact(db, 300)
    return res, db


def test_record_on_a_full_disk_is_one_line_and_keeps_the_store(logbook_home: Path) -> None:
    res, db = _record_on_a_full_disk(logbook_home)
    assert res.code != 0 and res.code < 128, res
    assert_one_line_error(res.err)
    assert_no_traceback(res.out, res.err)
    assert res.out == ""
    assert str(db) in res.err
    # Once there is room again, the same record goes in.
    ok = _limited(
        logbook_home, resource.RLIM_INFINITY, "record", "-e", "big", "--results", BIG_RESULTS
    )
    assert ok.code == 0, ok.err
    assert states(db)["pending"] == 301


def test_record_on_a_full_disk_says_the_disk_is_full(logbook_home: Path) -> None:
    res, _ = _record_on_a_full_disk(logbook_home)
    assert "full" in res.err, res.err


LOG_ON_A_FULL_DISK = """
import json, logbook, sys
try:
    logbook.log({"results": {"blob": "x" * 100_000}}, experiment_id="big")
except logbook.LogbookError as err:
    print(json.dumps({"type": type(err).__name__, "msg": str(err)}))
"""


def test_log_on_a_full_disk_raises_logbooks_own_error(logbook_home: Path) -> None:
    """``logbook.log()`` says the disk is full as a StoreFull, not an sqlite3 error."""
    db = seed_store(logbook_home, 300)
    before = entries(db)

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL_LIMIT, SMALL_LIMIT))

    proc = subprocess.run(
        [sys.executable, "-c", LOG_ON_A_FULL_DISK], env=base_env(logbook_home),
        capture_output=True, text=True, timeout=CLI_TIMEOUT, preexec_fn=limit_files,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raised = json.loads(proc.stdout)
    assert raised["type"] == "StoreFull" and "full" in raised["msg"], raised
    assert str(db) in raised["msg"]
    assert entries(db) == before
    _intact(db, 300)


def _sync_on_a_full_disk(home: Path, emulator: EmulatorProcess, limit: int) -> Run:
    db = home / "logbook.db"
    res = _limited(home, limit, "--stats", "0", "sync", env=emulator.env())
    _intact(db, 300)
    return res


def test_sync_on_a_full_disk_is_one_line_and_sends_nothing_twice(
    logbook_home: Path, emulator: EmulatorProcess
) -> None:
    db = seed_store(logbook_home, 300)
    res = _sync_on_a_full_disk(logbook_home, emulator, SMALL_LIMIT)
    assert res.code != 0 and res.code < 128, res
    assert_one_line_error(res.err)
    assert_no_traceback(res.out, res.err)
    assert states(db)["synced"] == 0
    sync_until_done(logbook_home, emulator.env())
    assert_exactly_once(db, emulator)


def test_sync_that_runs_out_of_disk_half_way_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Whatever write the full disk refuses (a claim, a settle, the run's record), no duplicate."""
    src = seed_store(tmp_path / "seed", 300)
    size = src.stat().st_size
    half_way = 0
    for factor in (0.75, 1.25, 1.5, 1.75):
        emulator.reset()
        home = tmp_path / f"home-{factor}"
        home.mkdir()
        shutil.copyfile(src, home / "logbook.db")
        res = _sync_on_a_full_disk(home, emulator, int(size * factor))
        assert_no_traceback(res.out, res.err)
        assert res.code in (0, 1), res  # 1: some entries are not synced yet
        lines = [ln for ln in res.err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("logbook: error: ")]
        assert len(errors) <= 1, res.err  # at most one error line, after any warnings
        assert all(ln in errors or " logbook: warning: " in ln for ln in lines), res.err
        sent = emulator.stats()["jobs_created"]
        if res.code == 1 and sent:
            half_way += 1
        sync_until_done(home, emulator.env())
        assert_exactly_once(home / "logbook.db", emulator)
    assert half_way, "no limit made the disk fill up half-way through a sync"


def test_sync_that_runs_out_of_disk_half_way_says_the_disk_is_full(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    src = seed_store(tmp_path / "seed", 300)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(src, home / "logbook.db")
    res = _sync_on_a_full_disk(home, emulator, int(src.stat().st_size * 1.5))
    assert res.code != 0
    assert_one_line_error(res.err)
    assert "full" in res.err
