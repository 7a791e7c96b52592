"""``logbook doctor``: what needs the user's attention, checked one by one."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LogbookError, RequestFailed
from .fsinfo import filesystem_type, network_filesystem
from .secrets import mask, redact

if TYPE_CHECKING:
    from .config import Config


@dataclass
class Check:
    name: str
    level: str  # ok | warn | fail
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message}


def check_store(cfg: Config) -> list[Check]:
    from .store import SCHEMA_VERSION, Store

    path = cfg.db
    checks: list[Check] = []
    fstype = network_filesystem(path)
    if fstype:
        checks.append(
            Check(
                "filesystem", "fail",
                f"{path} is on a network filesystem ({fstype}): SQLite's WAL and locking are"
                " unreliable there; set LOGBOOK_HOME or --db to a local disk",
            )
        )  # fmt: skip
    else:
        checks.append(Check("filesystem", "ok", f"local ({filesystem_type(path) or 'unknown'})"))
    if not path.exists():
        checks.append(Check("store", "ok", f"no store yet at {path} (created on first record)"))
        return checks
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        checks.append(
            Check("permissions", "warn", f"{path} is readable by others (mode {mode:o}): chmod 600")
        )
    try:
        with Store(path) as store:
            integrity = store.integrity()
            journal = store.journal_mode()
            counts = store.counts()
            oldest = store.oldest_pending()
    except LogbookError as err:
        checks.append(Check("store", "fail", str(err)))
        return checks
    checks.append(
        Check("store", "ok" if integrity == "ok" else "fail",
              f"{path}: integrity {integrity}, schema v{SCHEMA_VERSION}")
    )  # fmt: skip
    checks.append(Check("journal", "ok" if journal == "wal" else "warn", f"journal mode {journal}"))
    backlog = f"{counts['pending']} pending, {counts['rejected']} rejected"
    if oldest:
        backlog += f", oldest pending since {oldest}"
    level = "warn" if counts["rejected"] else "ok"
    hint = " (see `logbook list --state rejected`, then `logbook retry`)" if level == "warn" else ""
    checks.append(Check("backlog", level, backlog + hint))
    return checks


def check_config(cfg: Config) -> list[Check]:
    checks: list[Check] = []
    if cfg.config_file:
        checks.append(Check("config", "ok", f"read {cfg.config_file}"))
        mode = stat.S_IMODE(os.stat(cfg.config_file).st_mode)
        if cfg.key_source == str(cfg.config_file) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            checks.append(
                Check("config", "warn", f"{cfg.config_file} holds the API key and is readable"
                      f" by others (mode {mode:o}): chmod 600")
            )  # fmt: skip
    if cfg.api_key:
        checks.append(Check("key", "ok", f"{mask(cfg.api_key)} (from {cfg.key_source})"))
    else:
        checks.append(
            Check("key", "fail", "no API key: set HAIQU_API_KEY (or api_key in config.toml)")
        )
    if cfg.endpoint:
        checks.append(Check("endpoint", "ok", f"{cfg.endpoint} (auth in {cfg.auth})"))
    else:
        checks.append(
            Check("endpoint", "fail", "no endpoint: set HAIQU_EDGE_URI or pass --endpoint URL")
        )
    return checks


async def _probe(cfg: Config) -> Check:
    from .client import ApiClient

    assert cfg.endpoint and cfg.api_key
    async with ApiClient(
        cfg.endpoint, cfg.api_key, auth=cfg.auth, connections=1, deadline=10.0
    ) as client:
        started = time.monotonic()
        try:
            code, content_type = await client.probe()
        except RequestFailed as failure:
            return Check("server", "fail", redact(str(failure), cfg.api_key))
        ms = (time.monotonic() - started) * 1000
        if code in (401, 403):
            return Check("server", "fail", f"the server refused the key (HTTP {code})")
        json_answer = content_type.startswith("application/json")
        if code in (200, 404) and json_answer:
            return Check(
                "server", "ok", f"{cfg.endpoint} answers and accepts the key ({ms:.0f} ms)"
            )
        return Check(
            "server", "fail",
            f"{cfg.endpoint} answered HTTP {code}"
            f"{'' if json_answer else ' (not JSON)'}: is this the Jobs API's base URL?",
        )  # fmt: skip


def check_server(cfg: Config) -> list[Check]:
    if not (cfg.endpoint and cfg.api_key):
        return []
    return [asyncio.run(_probe(cfg))]


def run_checks(cfg: Config) -> list[Check]:
    return check_store(cfg) + check_config(cfg) + check_server(cfg)
