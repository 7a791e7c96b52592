"""The wheel installs and runs in a clean virtual environment, and ``scripts/demo`` runs on it.

Built with ``pip wheel`` from this checkout, installed with its dependencies
into a new venv (no site packages), used through its console script; then
``scripts/demo`` is pointed at that environment (``LOGBOOK_DEMO_VENV``), finds
it up to date and reuses it, and runs end to end, piped.  One environment is
built for both: pip is most of what these cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT, base_env


def _wheel_venv(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO_ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = dist.glob("haiqu_logbook-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    return venv


def _scripts(env: dict[str, str], command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``bash -c COMMAND`` with scripts/_venv.sh sourced, in the checkout."""
    return subprocess.run(
        ["bash", "-c", f"source scripts/_venv.sh && {command}", "-", *args], env=env,
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_wheel_installs_in_a_clean_venv_and_the_demo_runs_on_it(tmp_path: Path) -> None:
    venv = _wheel_venv(tmp_path)
    env = base_env(tmp_path / "home", {"TMPDIR": str(tmp_path)})
    env.pop("PYTHONPATH")  # the installed package, not this checkout

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "logbook"), *args], env=env, capture_output=True, text=True,
            timeout=60, cwd=tmp_path,
        )  # fmt: skip

    version = run("--version")
    assert version.returncode == 0 and "0.2.0" in version.stdout
    record = run("record", "-e", "wheel", "--results", '{"00": 1}', "--json")
    assert record.returncode == 0, record.stderr
    assert json.loads(record.stdout)["experiment_id"] == "wheel"
    unit = run("watch", str(tmp_path), "--print-unit")  # package data came along
    assert unit.returncode == 0 and "ExecStart=" in unit.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import logbook, sys; print(logbook.__file__)"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert str(venv) in where.stdout and str(REPO_ROOT) not in where.stdout

    # The runtime alone: no test, lint or Qiskit packages come with it (the demo's needs).
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "haiqu-logbook" in names and "aiohttp" in names
    assert not names & {"qiskit", "pytest", "mypy", "ruff", "hypothesis"}, names

    # scripts/demo on it: an environment stamped as built from this pyproject.toml is reused.
    stamp = _scripts(env, '_venv_stamp "" > "$1/.logbook-stamp"', str(venv))
    assert stamp.returncode == 0, stamp.stderr
    stamped = os.path.getmtime(venv / ".logbook-stamp")
    demo = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")], env=dict(env, LOGBOOK_DEMO_VENV=str(venv)),
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "building" not in demo.stderr and os.path.getmtime(venv / ".logbook-stamp") == stamped
    assert "\x1b[" not in demo.stdout  # piped: no escapes
    # The store is kept, synced, and the last lines say how to look at it.
    [home] = [
        ln.split("=", 1)[1] for ln in demo.stdout.splitlines() if "export LOGBOOK_HOME=" in ln
    ]
    status = run("--db", str(Path(home) / "logbook.db"), "status", "--json")
    counts = json.loads(status.stdout)["counts"]
    assert counts["synced"] > 0 and counts["pending"] == 0, counts
    # Other extras (or a changed pyproject.toml) make another stamp: that would be rebuilt.
    stale = _scripts(env, '[ "$(cat "$1/.logbook-stamp")" != "$(_venv_stamp dev)" ]', str(venv))
    assert stale.returncode == 0, stale.stderr
