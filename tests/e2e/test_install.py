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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
    # Each step can be pasted back: the arguments with spaces come quoted.
    assert "$ logbook record --experiment demo --name 'bell, hand-typed'" in demo.stdout
    assert "$ logbook emulator --host 127.0.0.1 --port 0" in demo.stdout
    assert "$ export HAIQU_EDGE_URI=http://127.0.0.1:" in demo.stdout
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


def _tool_install(tool: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """README's ``pipx install .`` or ``uv tool install .``, into directories of this test."""
    env = base_env(tmp_path / "home", {"TMPDIR": str(tmp_path)})
    env.pop("PYTHONPATH")  # the tool's environment, not this checkout
    bin_dir = tmp_path / "bin"
    env.update(
        PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(bin_dir),
        UV_TOOL_DIR=str(tmp_path / "uv-tools"), UV_TOOL_BIN_DIR=str(bin_dir),
    )  # fmt: skip
    line = {"pipx": ["pipx", "install", "."], "uv": ["uv", "tool", "install", "."]}[tool]
    exe = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    assert exe is not None
    # The install reaches the package index as this machine does (its proxy and CAs).
    outer = {k: v for k, v in os.environ.items() if k not in env and k != "PYTHONPATH"}
    outer["UV_NATIVE_TLS"] = "1"  # uv trusts the system's CAs, as pip does (README says so)
    done = subprocess.run(
        [exe, *line[1:]], cwd=REPO_ROOT, env={**outer, **env}, capture_output=True, text=True,
        timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return bin_dir / "logbook", env


def _present(tool: str) -> bool:
    return bool(shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent)))


@pytest.mark.parametrize("tool", ["pipx", "uv"])
def test_readmes_tool_install_line_gives_a_logbook_that_runs_its_emulator(
    tool: str, tmp_path: Path
) -> None:
    """README's install lines as a user types them in the checkout; then the quick start's
    emulator, which ``python -m`` cannot reach inside the tool's own environment."""
    if not _present(tool):
        pytest.skip(f"{tool} is not installed here")
    logbook, env = _tool_install(tool, tmp_path)
    version = subprocess.run([str(logbook), "--version"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert version.returncode == 0 and "0.2.0" in version.stdout, version.stderr
    emu = subprocess.Popen(
        [str(logbook), "emulator", "--port", "0"], env=dict(env, HAIQU_API_KEY="try-it"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert emu.stdout is not None
        ready = emu.stdout.readline()
        assert ready.startswith("logbook emulator listening on http://127.0.0.1:"), ready
        url = ready.rsplit(" ", 1)[1].strip()
        run_env = dict(env, HAIQU_API_KEY="try-it", HAIQU_EDGE_URI=url)
        for args in (["record", "-e", "bell", "--results", '{"00": 1}'], ["sync"]):
            done = subprocess.run([str(logbook), *args], env=run_env, capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, (args, done.stderr)
        assert "synced 1" in done.stdout
    finally:
        emu.terminate()
        emu.communicate(timeout=30)
    assert emu.returncode == 0
