"""``scripts/demo`` and the environments the scripts build, run as a new user would run them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support import REPO_ROOT, base_env


def test_the_demo_runs_on_the_runtime_alone_and_keeps_its_store(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = base_env(
        tmp_path / "unused-home", {"LOGBOOK_DEMO_VENV": str(venv), "TMPDIR": str(tmp_path)}
    )
    env.pop("PYTHONPATH", None)
    demo = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "\x1b[" not in demo.stdout  # piped: no escapes
    # The runtime alone: no test, lint or Qiskit packages in the demo's environment.
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "haiqu-logbook" in names and "aiohttp" in names
    assert not names & {"qiskit", "pytest", "mypy", "ruff", "hypothesis"}, names
    # The store is kept, and the last lines say how to look at it.
    [home] = [
        ln.split("=", 1)[1] for ln in demo.stdout.splitlines() if "export LOGBOOK_HOME=" in ln
    ]
    status = subprocess.run(
        [str(venv / "bin" / "logbook"), "status", "--json"], capture_output=True, text=True,
        env=dict(env, LOGBOOK_HOME=home), timeout=60,
    )  # fmt: skip
    counts = json.loads(status.stdout)["counts"]
    assert counts["synced"] > 0 and counts["pending"] == 0, counts
    # Run again, the environment is reused as it is (pyproject.toml did not change).
    again = subprocess.run(
        ["bash", "-c", 'source scripts/_venv.sh && venv_ensure "$1" "" && echo "$VENV_PY"', "-",
         str(venv)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr
    assert again.stdout.strip() == str(venv / "bin" / "python")
    assert os.path.getmtime(venv / ".logbook-stamp") < os.path.getmtime(home)  # not rebuilt
