"""The systemd units ``--print-unit`` prints, and the warning about watched network folders."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from importlib.resources import files
from typing import Any

from ..config import home_dir


def flags(options: dict[str, Any]) -> list[str]:
    """``--flag value`` for every option that was given."""
    return [a for flag, value in options.items() if value is not None for a in (flag, str(value))]


def unit(db_option: str | None, args: list[str], kind: str = "watch") -> str:
    """The packaged systemd unit of ``kind`` (watch, relay), filled in for this command line."""
    if db_option:
        args = ["--db", os.path.abspath(db_option), *args]
    exe = shutil.which("logbook") or f"{sys.executable} -m logbook"
    template = (files("logbook") / f"data/logbook-{kind}.service").read_text(encoding="utf-8")
    # systemd expands % specifiers and $VARIABLES in ExecStart: double them to mean themselves.
    line = " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$") for a in args)
    # The service uses the home (store, config.toml, relay keys) of the shell that printed it.
    home = str(home_dir().absolute()).replace("\\", "\\\\").replace('"', '\\"')
    return (
        template.replace("@EXEC@", exe.replace("%", "%%"))
        .replace("@ARGS@", line)
        .replace("@HOME@", home.replace("%", "%%"))
    )


def warn_network_dirs(roots: list[str], log: logging.Logger) -> None:
    """inotify does not see other hosts' writes on NFS/SMB: say so, and what to use."""
    from ..fsinfo import network_filesystem

    for root in roots:
        fstype = network_filesystem(root)
        if fstype:
            log.warning(
                "%s is on a network filesystem (%s): inotify does not see files written by"
                " other hosts there; use --polling", root, fstype,
            )  # fmt: skip
