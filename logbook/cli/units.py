"""The systemd units ``--print-unit`` prints, and the warning about watched network folders."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..config import home_dir
from ..errors import LogbookError

log = logging.getLogger("logbook")


def flags(options: dict[str, Any]) -> list[str]:
    """``--flag value`` for every option that was given."""
    return [a for flag, value in options.items() if value is not None for a in (flag, str(value))]


#: Beside config.toml: an optional environment file the units read (``HAIQU_API_KEY=...``).
ENV_FILE = "service.env"


def unit(db_option: str | None, args: list[str], kind: str = "watch") -> str:
    """The packaged systemd unit of ``kind`` (watch, relay), filled in for this command line."""
    if db_option:
        args = ["--db", os.path.abspath(db_option), *args]
    exe = shutil.which("logbook") or f"{sys.executable} -m logbook"
    template = (files("logbook") / f"data/logbook-{kind}.service").read_text(encoding="utf-8")
    # systemd expands % specifiers and $VARIABLES in ExecStart: double them to mean themselves.
    line = " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$") for a in args)
    # The service uses the home (store, config.toml, relay keys) of the shell that printed it.
    home_path = home_dir().absolute()
    home = str(home_path).replace("\\", "\\\\").replace('"', '\\"')
    writable = _writable(home_path, db_option)
    return (
        template.replace("@EXEC@", exe.replace("%", "%%"))
        .replace("@ARGS@", line)
        .replace("@ENVFILE@", str(home_path / ENV_FILE).replace("%", "%%"))
        .replace("@RWPATHS@", " ".join(_quoted(p) for p in writable))
        .replace("@HOME@", home.replace("%", "%%"))
    )


def _writable(home: Path, db_option: str | None) -> list[str]:
    """The directories the service writes (ProtectSystem=strict leaves it nothing else): the
    home, and the store's directory when it lives elsewhere."""
    from ..config import load_config

    paths = [str(home)]
    try:
        store_dir = str(load_config(db=db_option).db.absolute().parent)
    except LogbookError:
        store_dir = str(home)  # a broken config.toml: the service says so when it starts
    if store_dir != paths[0]:
        paths.append(store_dir)
    for path in paths:
        if not os.path.isdir(path):
            log.warning(
                "%s does not exist yet: create it (mkdir -p) before the service starts; it may"
                " write only there", path,
            )  # fmt: skip
    return paths


def _quoted(path: str) -> str:
    """A ReadWritePaths= word: % doubled, quoted when it holds a space or a quote; "-" first
    (a directory that is gone at start does not stop the service from starting)."""
    text = "-" + path.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def warn_missing_dirs(roots: list[str]) -> None:
    """A unit for a directory that does not exist starts, then exits 2 at once: say so now."""
    from ..store.ledger import shown

    for root in roots:
        if not os.path.isdir(root):
            log.warning("%s does not exist (yet): the service exits 2 until it does", shown(root))


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
