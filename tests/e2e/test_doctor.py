"""``logbook doctor`` as a real process: exit 0 only when all is well; the key only ever masked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import Run, assert_no_key, assert_no_traceback, base_env, write_config

from logbook.emulator.testing import EmulatorProcess
from logbook.store import Store
from logbook.store.leases import Outcome, end_owner, new_owner

RunCli = Callable[..., Run]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _doctor(run_cli: RunCli, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    r = run_cli("doctor", "--json", *args, env=env)
    assert_no_traceback(r.out, r.err)
    return r.code, {c["check"]: c for c in json.loads(r.out)}, r.out + r.err


def test_all_well_exit_0_and_key_masked(run_cli: RunCli, emulator: EmulatorProcess) -> None:
    assert run_cli("record", "-e", "x", "--results", "{}").code == 0
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 0, text
    assert {c["level"] for c in checks.values()} == {"ok"}, checks
    assert "accepts the key" in checks["server"]["message"]
    assert "integrity ok" in checks["store"]["message"]
    assert checks["journal"]["message"] == "journal mode wal"
    assert "HAIQU_API_KEY" in checks["key"]["message"] and "*" in checks["key"]["message"]
    assert_no_key(text, emulator.key, "doctor --json")
    table = run_cli("doctor", env=emulator.env())
    assert table.code == 0 and table.out.startswith("OK")
    assert_no_key(table.out + table.err, emulator.key, "doctor")


def test_no_key_needs_the_user_and_nothing_is_probed(run_cli: RunCli) -> None:
    code, checks, _ = _doctor(run_cli, {})
    assert code == 1
    assert checks["key"]["level"] == "fail" and "HAIQU_API_KEY" in checks["key"]["message"]
    # Without a key the default endpoint (the Haiqu SDK's) is shown, not contacted.
    assert checks["endpoint"]["level"] == "ok" and "SDK" in checks["endpoint"]["message"]
    assert "server" not in checks


def test_refused_key(run_cli: RunCli, emulator: EmulatorProcess) -> None:
    emulator.set_faults(unauthorized=True)
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 1 and "refused the key" in checks["server"]["message"]
    assert_no_key(text, emulator.key, "doctor with a refused key")


def test_wrong_base_url_is_not_taken_for_the_api(
    run_cli: RunCli, emulator: EmulatorProcess
) -> None:
    env = dict(emulator.env(), HAIQU_EDGE_URI=emulator.url + "/not-the-api")
    code, checks, _ = _doctor(run_cli, env)
    assert code == 1
    assert checks["server"]["level"] == "fail" and "base URL" in checks["server"]["message"]


def test_unreachable_endpoint(run_cli: RunCli) -> None:
    env = {"HAIQU_API_KEY": "k" * 16, "HAIQU_EDGE_URI": f"http://127.0.0.1:{_free_port()}"}
    code, checks, _ = _doctor(run_cli, env)
    assert code == 1 and "cannot connect" in checks["server"]["message"]


def test_a_file_that_is_no_store(run_cli: RunCli, logbook_home: Path) -> None:
    (logbook_home / "logbook.db").write_bytes(b"this is not sqlite" * 100)
    code, checks, _ = _doctor(run_cli, {})
    assert code == 1 and checks["store"]["level"] == "fail"
    assert "not a logbook store" in checks["store"]["message"]
    assert (logbook_home / "logbook.db").read_bytes() == b"this is not sqlite" * 100


def test_rejected_entries_and_a_readable_key_file_are_warnings(
    run_cli: RunCli, logbook_home: Path, emulator: EmulatorProcess
) -> None:
    assert run_cli("record", "-e", "x", "--name", "a").code == 0
    assert run_cli("record", "-e", "x", "--name", "b").code == 0
    owner = new_owner()
    with Store(logbook_home / "logbook.db") as store:
        [first, *_] = store.leases.claim(owner, 1, lease_seconds=60).entries
        store.leases.settle(owner, [Outcome(first.id, "rejected", error="422 no")])
    end_owner(owner)
    write_config(logbook_home, [f'api_key = "{emulator.key}"', f'endpoint = "{emulator.url}"'])
    (logbook_home / "config.toml").chmod(0o644)
    code, checks, text = _doctor(run_cli, {})
    assert code == 1, text  # nothing fails, but both warnings need the user
    assert {c["level"] for c in checks.values()} == {"ok", "warn"}
    assert checks["backlog"]["level"] == "warn" and "1 rejected" in checks["backlog"]["message"]
    warned = [c for c in json.loads(run_cli("doctor", "--json").out) if c["level"] == "warn"]
    assert any("chmod 600" in c["message"] and "config.toml" in c["message"] for c in warned)
    assert_no_key(text, emulator.key, "doctor with the key in config.toml")
    (logbook_home / "config.toml").chmod(0o600)
    _, checks, _ = _doctor(run_cli, {})
    assert "config.toml" in checks["key"]["message"]


def test_the_backlog_stuck_entries_schema_and_last_sync(
    run_cli: RunCli, logbook_home: Path, emulator: EmulatorProcess
) -> None:
    """What doctor says about the store's contents, and that a sync that is gone needs you."""
    for name in ("a", "b", "c"):
        assert run_cli("record", "-e", "x", "--name", name).code == 0
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 0, text
    assert "schema v" in checks["store"]["message"] and "upgraded" not in checks["store"]["message"]
    assert checks["backlog"]["message"].startswith("3 pending, 0 rejected, oldest pending since 20")
    assert checks["last sync"]["message"] == "never" and "sending" not in checks
    where = logbook_home / "config.toml"
    assert checks["config"]["message"] == f"no config file (it would be read from {where})"
    claim = (  # a sync (another process) that claimed two entries, then died
        "import sys; from logbook.store import Store; from logbook.store.leases import new_owner\n"
        "with Store(sys.argv[1]) as s: s.leases.claim(new_owner(), 2, lease_seconds=3600)"
    )
    subprocess.run([sys.executable, "-c", claim, str(logbook_home / "logbook.db")], check=True,
                   env=base_env(logbook_home), timeout=60)  # fmt: skip
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 1, text
    assert checks["sending"]["level"] == "warn" and "2 entries" in checks["sending"]["message"]
    assert "run `logbook sync`" in checks["sending"]["message"]  # the fix, in the same line
    assert run_cli("--stats", "0", "sync", env=emulator.env()).code == 0
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 0, text
    assert checks["backlog"]["message"] == "0 pending, 0 rejected" and "sending" not in checks
    assert checks["last sync"]["message"].startswith("20")  # a timestamp


def test_invalid_files_are_listed_with_their_reasons(run_cli: RunCli, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "broken.json").write_text("{not json")
    (results / "other.json").write_text('{"temperature": 4}')
    (results / "good.json").write_text('{"experiment_id": "x", "results": "{}"}')
    assert run_cli("import", results).code == 1
    assert "`logbook doctor` lists them" in run_cli("status").out
    code, checks, _ = _doctor(run_cli, {})
    assert code == 1 and checks["files"]["level"] == "warn"
    assert checks["files"]["message"].startswith("2 invalid result files")
    listed = {Path(i["path"]).name: i["reason"] for i in checks["files"]["items"]}
    assert set(listed) == {"broken.json", "other.json"}
    assert listed["broken.json"].startswith("not JSON")
    assert "neither a job document" in listed["other.json"]
    text = run_cli("doctor").out
    assert f"        {results / 'broken.json'}: not JSON" in text, text


def test_unconfirmed_entries_warn_past_the_threshold_and_missing_jobs_name_the_fix(
    run_cli: RunCli, logbook_home: Path
) -> None:
    from support import set_row

    for name in ("a", "b", "c"):
        assert run_cli("record", "-e", "x", "--name", name).code == 0
    db = logbook_home / "logbook.db"
    relay = "http://gateway.lab:8700"
    set_row(db, 1, state="synced", remote_id="r1", via=relay, synced_at="2026-01-01T00:00:00Z")
    code, checks, text = _doctor(run_cli, {})
    assert checks["unconfirmed"]["level"] == "warn", text  # accepted long ago, no API id
    message = checks["unconfirmed"]["message"]
    assert "1 entries accepted by a relay have no API id yet" in message
    assert "2026-01-01T00:00:00Z" in message and "unconfirmed_warn_after" in message
    assert "logbook sync" in message
    write_config(logbook_home, ["unconfirmed_warn_after = 1e12"])  # a threshold not yet passed
    _, checks, _ = _doctor(run_cli, {})
    assert checks["unconfirmed"]["level"] == "ok"
    shown = json.loads(run_cli("config", "--json").out)["unconfirmed_warn_after"]
    assert shown == {"value": "1000000000000.0", "source": str(logbook_home / "config.toml")}
    set_row(db, 1, upstream_id="api-1")  # confirmed: nothing to say
    set_row(db, 2, state="synced", remote_id="r2", synced_at="2026-01-01T00:00:00Z",
            missing_at="2026-02-01T00:00:00Z")  # fmt: skip
    code, checks, _ = _doctor(run_cli, {})
    assert "unconfirmed" not in checks
    assert checks["missing"]["level"] == "warn"
    assert "1 jobs the API no longer has" in checks["missing"]["message"]
    assert "`logbook retry --missing`" in checks["missing"]["message"]
