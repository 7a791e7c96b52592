"""The wheel installs and runs in a clean virtual environment, as a user would get it.

Built with ``pip wheel`` from this checkout, installed with its dependencies
into a new venv (no site packages), and used through its console script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT, base_env


def test_the_wheel_installs_and_runs_in_a_clean_venv(tmp_path: Path) -> None:
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
    home = tmp_path / "home"
    env = base_env(home)
    env.pop("PYTHONPATH")  # the installed package, not this checkout
    exe = venv / "bin" / "logbook"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

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
