"""The scripts a new user runs first say what they do: ``scripts/test`` names what it installs
and each stage as it starts (a first run builds for minutes).

Run with stand-ins for the interpreters (no network, no 1.8 GB): a ``python3`` that
makes a fake environment whose ``python`` logs what it is asked to run.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from support import REPO_ROOT

FAKE_VENV_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2 $3" = "-m pip list" ]; then printf 'a==1\\nb==2\\nc==3\\n'; fi
exit 0
"""

#: A python3 that runs the real one, except ``-m venv DIR``: a fake environment.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$FAKE_VENV_PYTHON_SRC" "$3/bin/python" && chmod +x "$3/bin/python"
    exit 0
fi
exec python3 "$@"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_scripts_test_names_what_it_installs_and_each_stage(tmp_path: Path) -> None:
    venv_python = _executable(tmp_path / "venv-python", FAKE_VENV_PYTHON)
    python = _executable(tmp_path / "python3", FAKE_PYTHON)
    log = tmp_path / "calls.log"
    env = dict(
        os.environ, PYTHON=str(python), FAKE_LOG=str(log), FAKE_VENV_PYTHON_SRC=str(venv_python),
        LOGBOOK_TEST_VENV=str(tmp_path / "venv-test"),
    )  # fmt: skip
    run = subprocess.run(
        [str(REPO_ROOT / "scripts" / "test"), "--fresh", "tests/unit"], env=env,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("scripts")]
    assert lines[0].startswith("scripts: building a fresh virtual environment in "), lines
    [installing] = [ln for ln in lines if ln.startswith("scripts: installing ")]
    assert "haiqu-logbook[dev] from this checkout, with: sqlite-utils, pydantic" in installing
    assert "pytest" in installing and "qiskit" in installing
    assert any(ln.endswith(" s") and "ready: 3 packages" in ln for ln in lines), lines
    stages = [ln.split(" (")[0] for ln in lines if ln.startswith("scripts/test: ")]
    assert stages == [
        "scripts/test: 1/3 lint: ruff check logbook tests bench",
        "scripts/test: 2/3 types: mypy logbook",
        "scripts/test: 3/3 tests: pytest, 6 workers",
    ], lines
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-m pip install -qq -e ") and calls[0].endswith("[dev]")
    # logbook compiled once before pytest (every process of the suite then loads bytecode)
    assert [c.split()[1] for c in calls[-4:]] == ["ruff", "mypy", "compileall", "pytest"]
    assert calls[-1].endswith("tests/unit")  # the arguments go to pytest
