"""``logbook doctor``: exit 0 only when all is well; the key is only ever shown masked."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from helpers import assert_no_traceback
from sync_support import key_forms

from logbook.emulator.testing import EmulatorProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _doctor(run_cli: Any, env: dict[str, str], *args: str) -> Any:
    r = run_cli("doctor", "--json", *args, env=env)
    assert_no_traceback(r.stdout, r.stderr)
    return r.returncode, {c["check"]: c for c in json.loads(r.stdout)}, r.stdout + r.stderr


def test_all_well_exit_0_and_key_masked(run_cli: Any, emulator: EmulatorProcess) -> None:
    assert run_cli("record", "-e", "x", "--results", "{}").returncode == 0
    code, checks, text = _doctor(run_cli, emulator.env())
    assert code == 0, text
    assert {c["level"] for c in checks.values()} == {"ok"}
    assert "accepts the key" in checks["server"]["message"]
    assert "integrity ok" in checks["store"]["message"]
    assert checks["journal"]["message"] == "journal mode wal"
    for form in key_forms(emulator.key):
        assert form not in text


def test_no_endpoint_needs_the_user(run_cli: Any) -> None:
    code, checks, _ = _doctor(run_cli, {"HAIQU_API_KEY": "some-key-1234567"})
    assert code == 1
    assert (
        checks["endpoint"]["level"] == "fail" and "HAIQU_EDGE_URI" in checks["endpoint"]["message"]
    )


def test_refused_key(run_cli: Any, emulator: EmulatorProcess) -> None:
    emulator.set_faults(unauthorized=True)
    code, checks, _ = _doctor(run_cli, emulator.env())
    assert code == 1 and "refused the key" in checks["server"]["message"]


def test_wrong_base_url_is_not_taken_for_the_api(run_cli: Any, emulator: EmulatorProcess) -> None:
    env = dict(emulator.env(), HAIQU_EDGE_URI=emulator.url + "/not-the-api")
    code, checks, _ = _doctor(run_cli, env)
    assert code == 1
    assert checks["server"]["level"] == "fail" and "base URL" in checks["server"]["message"]


def test_unreachable_endpoint(run_cli: Any) -> None:
    env = {"HAIQU_API_KEY": "k" * 16, "HAIQU_EDGE_URI": f"http://127.0.0.1:{_free_port()}"}
    code, checks, _ = _doctor(run_cli, env)
    assert code == 1 and "cannot connect" in checks["server"]["message"]


def test_corrupt_store(run_cli: Any, logbook_home: Path) -> None:
    (logbook_home / "logbook.db").write_bytes(b"this is not sqlite" * 100)
    code, checks, _ = _doctor(run_cli, {})
    assert code == 1 and checks["store"]["level"] == "fail"
    assert "not a logbook store" in checks["store"]["message"]
