"""Bad input found in review: NaN/Infinity, non-numeric ids, config ranges, numpy counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error

import logbook
from logbook.errors import InvalidJob


def test_metric_nan_is_kept_as_text_and_list_json_stays_json(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("record", "-e", "x", "--metric", "v=NaN", "--metric", "w=Infinity", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metrics"] == {"v": "NaN", "w": "Infinity"}
    listed = run_cli("list", "--json").stdout
    assert json.loads(listed)[0]["metrics"] == {"v": "NaN", "w": "Infinity"}
    assert "NaN," not in listed.replace('"NaN"', "")


@pytest.mark.parametrize("results", ["NaN", '{"00": Infinity}', "[-Infinity]"])
def test_results_with_nan_are_refused(run_cli, results: str) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("record", "-e", "x", "--results", results)
    assert r.returncode == 2
    assert_one_line_error(r.stderr)
    assert json.loads(run_cli("status", "--json").stdout)["counts"]["pending"] == 0


def test_log_refuses_nan_metrics() -> None:
    with pytest.raises(InvalidJob, match="NaN"):
        logbook.log({"00": 1}, experiment_id="e", metrics={"x": float("nan")})


def test_log_accepts_numpy_counts() -> None:
    np = pytest.importorskip("numpy")
    entry = logbook.log({"00": np.int64(510), "11": np.int64(514)}, experiment_id="e")
    assert json.loads(entry.results) == {"00": 510, "11": 514}
    assert entry.shots == "[1024]"


def test_show_with_a_non_numeric_id_is_bad_input(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("show", "abc")
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


@pytest.mark.parametrize("line", ["concurrency = 0", "concurrency = 9999", "request_timeout = -1"])
def test_config_values_out_of_range(run_cli, logbook_home: Path, line: str) -> None:  # type: ignore[no-untyped-def]
    (logbook_home / "config.toml").write_text(line + "\n")
    r = run_cli("sync", env={"HAIQU_API_KEY": "k", "HAIQU_EDGE_URI": "http://127.0.0.1:9"})
    assert r.returncode == 2
    assert_one_line_error(r.stderr)


def test_relative_db_in_config_is_under_logbook_home(run_cli, logbook_home: Path) -> None:  # type: ignore[no-untyped-def]
    (logbook_home / "config.toml").write_text('db = "lab.db"\n')
    assert run_cli("record", "-e", "x", "--results", "{}").returncode == 0
    assert (logbook_home / "lab.db").exists()
    assert json.loads(run_cli("status", "--json").stdout)["db"] == str(logbook_home / "lab.db")


# --- the fast JSON checks decide exactly as json.loads does ------------------------------


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
        ("", True),  # empty means "no results", as the API's default
    ],
)
def test_results_text_check(text: str, ok: bool) -> None:
    from logbook.jobs import prepare

    doc = {"experiment_id": "e", "results": text}
    if ok:
        assert prepare(doc)["results"] == text
    else:
        with pytest.raises(InvalidJob):
            prepare(doc)


def test_jsonl_lines_with_crlf_and_spaces(tmp_path: Path) -> None:
    from logbook.ingest import read_file

    src = tmp_path / "win.jsonl"
    src.write_bytes(
        b'{"experiment_id": "e", "name": "a"}\r\n'
        b'   {"experiment_id": "e", "name": "b"}   \n'
        b'{"experiment_id": "e", "name": "c"} trailing\n'
    )
    res = read_file(src)
    assert [j["name"] for j in res.jobs] == ["a", "b"]
    assert res.errors == ["line 3: not JSON: Extra data at column 37"]
