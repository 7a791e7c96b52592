"""``logbook doctor``: what needs the user's attention, checked one by one, each with its fix."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import NO_KEY, config_path
from .errors import ConfigError, LogbookError, RequestFailed
from .fsinfo import filesystem_type, network_filesystem
from .redact import mask, redact, show_url

if TYPE_CHECKING:
    from .config import Config


#: At most this many invalid files are listed (newest first).
MAX_FILES = 1000


@dataclass
class Check:
    name: str
    level: str  # ok | warn | fail
    message: str
    #: What the check is about, one by one (the invalid files, with their reasons).
    items: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"check": self.name, "level": self.level, "message": self.message}
        if self.items:
            d["items"] = self.items
        return d


def check_store(cfg: Config) -> list[Check]:
    from .store import SCHEMA_VERSION, Store

    path = cfg.db
    checks: list[Check] = []
    fstype = network_filesystem(path)
    if fstype:
        checks.append(Check(
            "filesystem", "fail",
            f"{path} is on a network filesystem ({fstype}): SQLite's WAL and locking are"
            " unreliable there; set LOGBOOK_HOME or --db to a local disk",
        ))  # fmt: skip
    else:
        checks.append(Check("filesystem", "ok", f"local ({filesystem_type(path) or 'unknown'})"))
    if not path.exists():
        source = cfg.sources.get("db")
        if source in ("--db", "LOGBOOK_DB"):
            checks.append(Check(
                "store", "warn", f"no store at {path} (from {source}): check the path"
                " (`logbook record` or `import` would start one there)",
            ))  # fmt: skip
        else:
            checks.append(Check("store", "ok", f"no store yet at {path} (created on first record)"))
        return checks
    try:
        with Store(path, readonly=True) as store:
            integrity = store.integrity()
            version = store.schema_version()
            journal = store.journal_mode()
            figures = Figures(
                counts=store.counts(), oldest=store.oldest_pending(),
                last=store.get_meta("last_sync"), invalid=store.ledger.invalid(MAX_FILES),
                n_invalid=store.ledger.invalid_count(), unconfirmed=store.unconfirmed(),
                missing=store.missing(),
            )  # fmt: skip
            figures.stuck = store.leases.count_left() - figures.counts["pending"]
    except LogbookError as err:
        checks.append(Check("store", "fail", str(err)))
        return checks
    if path.is_file():  # a store's own: another file's mode is not ours to advise on
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            checks.append(Check(
                "permissions", "warn", f"{path} is readable by others (mode {mode:o}): chmod 600"
            ))  # fmt: skip
    upgrade = " (upgraded on the next write)" if version < SCHEMA_VERSION else ""
    checks.append(Check(
        "store", "ok" if integrity == "ok" else "fail",
        f"{path}: integrity {integrity}, schema v{version}{upgrade}"
        + ("" if integrity == "ok" else "; move it aside and restore a copy"),
    ))  # fmt: skip
    checks.append(Check("journal", "ok" if journal == "wal" else "warn", f"journal mode {journal}"))
    return checks + _backlog(figures) + _delivery(figures, cfg.unconfirmed_warn_after)


@dataclass
class Figures:
    """What doctor reads from the store in one go."""

    counts: dict[str, int]
    oldest: str | None
    last: str | None
    invalid: list[tuple[str, str]]
    n_invalid: int
    unconfirmed: tuple[int, str | None]
    missing: int
    stuck: int = 0


def _backlog(f: Figures) -> list[Check]:
    """What is waiting, what is stuck, when it last synced, and files that need the user."""
    checks = []
    backlog = f"{f.counts['pending']} pending, {f.counts['rejected']} rejected"
    if f.oldest:
        backlog += f", oldest pending since {f.oldest}"
    level = "warn" if f.counts["rejected"] else "ok"
    hint = " (see `logbook list --state rejected`, then `logbook retry`)" if level == "warn" else ""
    checks.append(Check("backlog", level, backlog + hint))
    if f.stuck:
        checks.append(Check(
            "sending", "warn",
            f"{f.stuck} entries were left 'sending' by a sync that is gone: run `logbook sync`"
            " (it looks them up on the server before sending them again)",
        ))  # fmt: skip
    checks.append(Check("last sync", "ok", f.last or "never"))
    if f.n_invalid:
        more = f"; the {MAX_FILES} newest listed" if f.n_invalid > MAX_FILES else ""
        checks.append(Check(
            "files", "warn",
            f"{f.n_invalid} invalid result files: fix each and it is read again (the watcher"
            f" at once; `logbook import FILE` otherwise){more}",
            [{"path": path, "reason": reason} for path, reason in f.invalid],
        ))  # fmt: skip
    return checks


def _delivery(f: Figures, warn_after: float) -> list[Check]:
    """Jobs a relay accepted that the API has not confirmed, and jobs the API lost."""
    checks = []
    count, since = f.unconfirmed
    if count and since:
        age = max(0.0, time.time() - _epoch(since))
        text = (
            f"{count} entries accepted by a relay have no API id yet, the oldest since {since}"
            f" ({_ago(age)} ago)"
        )
        if age > warn_after:
            checks.append(Check(
                "unconfirmed", "warn",
                f"{text}: check that the relay forwards (`logbook relay status` on its machine;"
                " `logbook show ID` names it), then `logbook sync` asks again (warned after"
                f" {_ago(warn_after)}: unconfirmed_warn_after in config.toml)",
            ))  # fmt: skip
        else:
            checks.append(Check("unconfirmed", "ok", f"{text}; `logbook sync` asks again"))
    if f.missing:
        checks.append(Check(
            "missing", "warn",
            f"{f.missing} jobs the API no longer has (synced, then gone from the API: a person"
            " may have deleted them): `logbook retry --missing` sends them again",
        ))  # fmt: skip
    return checks


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _ago(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def check_config(cfg: Config) -> list[Check]:
    checks: list[Check] = []
    if cfg.config_file:
        checks.append(Check("config", "ok", f"read {cfg.config_file}"))
        mode = stat.S_IMODE(os.stat(cfg.config_file).st_mode)
        if cfg.key_source == str(cfg.config_file) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            checks.append(Check(
                "config", "warn", f"{cfg.config_file} holds the API key and is readable"
                f" by others (mode {mode:o}): chmod 600",
            ))  # fmt: skip
    else:
        checks.append(
            Check("config", "ok", f"no config file (it would be read from {config_path()})")
        )
    if cfg.api_key:
        checks.append(Check("key", "ok", f"{mask(cfg.api_key)} (from {key_source(cfg)})"))
    else:
        checks.append(Check("key", "fail", NO_KEY))
    why = cfg.sources.get("endpoint")
    source = f"from {why}" if why else "the Haiqu SDK's default; set HAIQU_EDGE_URI to change it"
    checks.append(Check("endpoint", "ok", f"{cfg.endpoint} ({source}; key sent in the {cfg.auth})"))
    try:
        proxy, where = proxy_in_effect(cfg)
    except ConfigError as err:  # a malformed proxy in the environment
        checks.append(Check("proxy", "fail", str(err)))
    else:
        if where != "default":
            checks.append(Check("proxy", "ok", f"{proxy} (from {where})"))
    cas, where = cas_in_effect(cfg)
    if where != "default":
        checks.append(Check("trust", "ok", f"{cas} (from {where})"))
    return checks


def key_source(cfg: Config) -> str:
    """Where the key in effect was set, as a user would look for it."""
    source = cfg.key_source or ""
    if source == "HAIQU_API_KEY":
        return "the environment, HAIQU_API_KEY"
    return f"api_key in {source}" if source.endswith(".toml") else source


def proxy_in_effect(cfg: Config) -> tuple[str, str]:
    """The proxy the endpoint is reached through (its password masked), and where it was set:
    what ``config`` and ``doctor`` both show."""
    found = _proxy_for(cfg)
    if found:
        url, where = found
        return show_url(url), (f"proxy in {config_path()}" if where.startswith("proxy") else where)
    from .client.network import proxy_bypassed

    if cfg.endpoint and proxy_bypassed(cfg.proxy, cfg.endpoint):
        return "(none: NO_PROXY covers the endpoint)", "NO_PROXY"
    return "(none: direct)", "default"


def cas_in_effect(cfg: Config) -> tuple[str, str]:
    """The CAs trusted (the system's, plus any added), and where the added ones were set."""
    added = [
        (cfg.ca_bundle, f"ca_bundle in {cfg.sources.get('ca_bundle', config_path())}"),
        (os.environ.get("SSL_CERT_FILE"), "SSL_CERT_FILE"),
        (os.environ.get("SSL_CERT_DIR"), "SSL_CERT_DIR"),
    ]
    found = [(path, where) for path, where in added if path]
    if not found:
        return "the system's CAs", "default"
    paths = ", ".join(str(p) for p, _ in found)
    return f"the system's CAs and {paths}", ", ".join(w for _, w in found)


def _proxy_for(cfg: Config) -> tuple[str, str] | None:
    """The proxy the endpoint is reached through, and where it was set."""
    if not cfg.endpoint:
        return None
    from .client.network import proxy_source

    return proxy_source(cfg.proxy, cfg.endpoint)


async def _probe(cfg: Config) -> Check:
    from .client import ApiClient

    assert cfg.endpoint and cfg.api_key
    async with ApiClient(
        cfg.endpoint, cfg.api_key, auth=cfg.auth, connections=1, deadline=10.0,
        network=cfg.network(),
    ) as client:  # fmt: skip
        started = time.monotonic()
        try:
            code, content_type = await client.probe()
        except RequestFailed as failure:
            return Check("server", "fail", redact(str(failure), *client.secrets))
        ms = (time.monotonic() - started) * 1000
    through = " through the proxy" if _proxy_for(cfg) else ""
    if code in (401, 403):
        return Check(
            "server", "fail", f"the server refused the key (HTTP {code}): check HAIQU_API_KEY"
        )
    if 300 <= code < 400:
        return Check(
            "server",
            "fail",
            f"{cfg.endpoint} redirects (HTTP {code}): set {cfg.endpoint_setting} to where it"
            " points",
        )
    json_answer = content_type.startswith("application/json")
    if code in (200, 404) and json_answer:
        if not await _refuses_a_wrong_key(cfg):
            return Check(
                "server", "fail",
                f"{cfg.endpoint} answers, but not like the Jobs API (it did not refuse a wrong"
                f" key): is {cfg.endpoint_setting} the API's base URL?",
            )  # fmt: skip
        return Check(
            "server", "ok", f"{cfg.endpoint} answers{through} and accepts the key ({ms:.0f} ms)"
        )
    return Check(
        "server", "fail",
        f"{cfg.endpoint} answered HTTP {code}{'' if json_answer else ' (not JSON)'}:"
        f" is this the Jobs API's base URL? ({cfg.endpoint_setting})",
    )  # fmt: skip


async def _refuses_a_wrong_key(cfg: Config) -> bool:
    """The Jobs API refuses a wrong key on its routes; a wrong base URL answers 404
    whatever the key.
    """
    from .client import ApiClient

    assert cfg.endpoint
    async with ApiClient(
        cfg.endpoint, "logbook-doctor-wrong-key", auth=cfg.auth, connections=1, deadline=10.0,
        network=cfg.network(),
    ) as client:  # fmt: skip
        try:
            code, _ = await client.probe()
        except RequestFailed:
            return False
    return code in (401, 403)


def check_server(cfg: Config, config_checks: list[Check]) -> list[Check]:
    """The endpoint's answer, unless the key is missing or the proxy cannot be used."""
    if not (cfg.endpoint and cfg.api_key):
        return []
    if any(c.name == "proxy" and c.level == "fail" for c in config_checks):
        return [Check("server", "fail", "not tried: fix the proxy first")]
    return [asyncio.run(_probe(cfg))]


def run_checks(cfg: Config) -> list[Check]:
    config = check_config(cfg)
    return check_store(cfg) + config + check_server(cfg, config)


def check_listening(url: str) -> Check:
    """Whether a Jobs API server (a relay) answers at ``url``: a lookup with a wrong key must
    get a JSON 401.
    """
    from urllib.parse import urlsplit

    from .client import ApiClient

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Check("relay", "fail", f"{show_url(url)} is not an http(s) URL: give the relay's"
                     " (e.g. http://gateway:8700)")  # fmt: skip

    async def probe() -> tuple[int, str]:
        async with ApiClient(url, "logbook-doctor-wrong-key", connections=1, deadline=5.0,
                             connect_timeout=5.0) as client:  # fmt: skip
            return await client.probe()

    try:
        code, ctype = asyncio.run(probe())
    except LogbookError as err:  # RequestFailed, or a URL that is no URL
        return Check("relay", "fail", f"nothing answers at {url} ({err}): is the relay running?")
    if code == 401 and ctype.startswith("application/json"):
        return Check("relay", "ok", f"listening at {url}")
    return Check("relay", "fail", f"{url} answered HTTP {code}: not a logbook relay?")


def relay_checks(cfg: Config, url: str | None) -> list[Check]:
    """A relay's store, its keys, whether it listens at ``url``, and its upstream and key."""
    checks = check_store(cfg)
    try:
        from .store import Store

        keys = []
        if cfg.db.exists():
            with Store(cfg.db, readonly=True) as store:
                keys = [k for k in store.keys.described() if not k["revoked_at"]]
        checks.append(Check(
            "keys", "ok" if keys else "warn",
            f"{len(keys)} relay keys" if keys else "no relay keys: `logbook relay key add NAME`",
        ))  # fmt: skip
    except LogbookError as err:
        checks.append(Check("keys", "fail", str(err)))
    if url:
        checks.append(check_listening(url))
    config = [c for c in check_config(cfg) if c.name != "config"]
    return checks + config + check_server(cfg, config)
