"""README is the user's guide: every command and option is in it, and its quick start works.

After sqlite-utils' test_docs.py: the CLI is walked with click's own
introspection, so a new option that README does not mention fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from support import REPO_ROOT, base_env, wait_until

from logbook.cli import cli

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


ALL = list(commands(cli))


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p))
def test_every_command_is_in_readme(path: tuple[str, ...]) -> None:
    assert re.search(rf"\b{re.escape(' '.join(path))}\b|`{re.escape(path[-1])}`", README) or all(
        re.search(rf"\b{re.escape(word)}\b", README) for word in path
    ), path


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p))
def test_every_command_has_an_example_in_its_help(path: tuple[str, ...]) -> None:
    command = dict(ALL)[path]
    text = command.get_help(click.Context(command, info_name=" ".join(("logbook", *path))))
    assert "Example:\n" in text, f"logbook {' '.join(path)} --help shows no example"


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p) or "logbook")
def test_every_option_with_a_default_shows_it_in_help(path: tuple[str, ...]) -> None:
    """``--auth`` and friends say what they are when not given ([default: query])."""
    command = dict(ALL)[path]
    ctx = click.Context(command, info_name=" ".join(("logbook", *path)))
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.is_flag or param.count or param.hidden:
            continue
        default = param.get_default(ctx, call=False)
        if default is None or type(default).__name__ == "Sentinel" or param.multiple:
            continue  # no default (click 8.3+ marks it with a sentinel)
        record = param.get_help_record(ctx)
        assert record and "default:" in record[1], f"logbook {' '.join(path)} {param.opts[0]}"


OPTIONS = sorted(
    {
        opt
        for _, command in [((), cli), *ALL]
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in ("--help", "--version")
    }
)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_is_in_readme(option: str) -> None:
    assert option in README, f"README does not mention {option}"


def _console_lines() -> list[str]:
    """The ``$ `` lines of README's quick start, in order."""
    start = README.index("## Quick start")
    end = README.index("\n## ", start + 1)
    blocks = re.findall(r"```console\n(.*?)```", README[start:end], re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    """Each command run as README gives it, in a fresh home; the output README promises."""
    lines = _console_lines()
    assert len(lines) == 6, lines
    env = base_env(tmp_path / "home")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    background: list[subprocess.Popen[bytes]] = []
    outputs = []
    try:
        for line in lines:
            if line.endswith("&"):
                # A user's shell keeps it running in the background: so do we, by PID.
                background.append(
                    subprocess.Popen(["bash", "-c", line[:-1]], env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )  # fmt: skip
                port = int(re.search(r"--port (\d+)", line).group(1))  # type: ignore[union-attr]
                wait_until(lambda port=port: _listening(port), 30, "the emulator to listen")
                continue
            if line.startswith("export "):
                for name, _, value in (part.partition("=") for part in shlex.split(line)[1:]):
                    env[name] = value
                continue
            run = subprocess.run(
                ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60
            )
            assert run.returncode == 0, (line, run.stdout, run.stderr)
            outputs.append(run.stdout)
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    record, status, sync, listing = outputs
    assert record.strip() == "1"
    assert "1 pending" in status
    assert "synced 1, rejected 0, 0 still pending" in sync
    assert re.search(r"^1\s+synced\s+bell", listing, re.M), listing


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
