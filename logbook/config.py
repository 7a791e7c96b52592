"""Where the store lives and how to reach the API.

Order of precedence: command-line option, environment, ``$LOGBOOK_HOME/config.toml``,
default.  The API key is never taken from the command line (it would show in ``ps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .secrets import mask

AUTH_MODES = ("query", "header")
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
CONFIG_KEYS = (
    "db", "endpoint", "api_key", "auth", "concurrency", "max_file_bytes", "settle",
    "experiment", "request_timeout",
)  # fmt: skip


def home_dir() -> Path:
    """``$LOGBOOK_HOME``, else the platform's user data directory for logbook."""
    env = os.environ.get("LOGBOOK_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("logbook", appauthor=False))


@dataclass
class Config:
    home: Path
    db: Path
    endpoint: str | None = None
    api_key: str | None = field(default=None, repr=False)
    auth: str = "query"
    concurrency: int | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    settle: float | None = None
    experiment: str | None = None
    request_timeout: float | None = None
    config_file: Path | None = None
    key_source: str | None = None

    def __repr__(self) -> str:  # never show the key, even in a debugger
        return (
            f"Config(db={str(self.db)!r}, endpoint={self.endpoint!r},"
            f" api_key={mask(self.api_key)!r}, auth={self.auth!r})"
        )


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    import tomllib

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})"
        )
    return data


def _typed(data: dict[str, Any], key: str, typ: type, path: Path) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be a {typ.__name__}")
    return value


def _check_url(url: str) -> None:
    """A URL the HTTP engines can connect to: a host, and a port that is a number in range."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as err:
        raise ConfigError(f"endpoint is not a valid URL: {url!r} ({err})") from None
    if not parts.hostname:
        raise ConfigError(f"endpoint has no host: {url!r}")


def load_config(
    *, db: str | None = None, endpoint: str | None = None, auth: str | None = None
) -> Config:
    """The effective configuration for one command."""
    home = home_dir()
    path = home / "config.toml"
    data = read_config_file(path)
    db_path = db or os.environ.get("LOGBOOK_DB")
    if not db_path and _typed(data, "db", str, path):
        # A relative db in the config file is relative to LOGBOOK_HOME, not to
        # wherever cron happens to start.
        db_path = str(home / Path(data["db"]).expanduser())
    key = os.environ.get("HAIQU_API_KEY") or None
    key_source = "HAIQU_API_KEY" if key else None
    if not key and data.get("api_key"):
        key = _typed(data, "api_key", str, path)
        key_source = str(path)
    cfg = Config(
        home=home,
        db=Path(db_path).expanduser() if db_path else home / "logbook.db",
        endpoint=endpoint
        or os.environ.get("HAIQU_EDGE_URI")
        or _typed(data, "endpoint", str, path),
        api_key=key,
        auth=auth or _typed(data, "auth", str, path) or "query",
        concurrency=_typed(data, "concurrency", int, path),
        max_file_bytes=_typed(data, "max_file_bytes", int, path) or DEFAULT_MAX_FILE_BYTES,
        settle=_typed(data, "settle", float, path),
        experiment=_typed(data, "experiment", str, path),
        request_timeout=_typed(data, "request_timeout", float, path),
        config_file=path if path.exists() else None,
        key_source=key_source,
    )
    if cfg.concurrency is not None and not 1 <= cfg.concurrency <= 512:
        raise ConfigError(f"{path}: concurrency must be between 1 and 512")
    for name in ("max_file_bytes", "request_timeout", "settle"):
        value = data.get(name)
        if value is not None and value <= 0 and not (name == "settle" and value == 0):
            raise ConfigError(f"{path}: {name} must be positive")
    if cfg.auth not in AUTH_MODES:
        raise ConfigError(f"auth must be one of {', '.join(AUTH_MODES)}, not {cfg.auth!r}")
    if cfg.endpoint:
        cfg.endpoint = cfg.endpoint.rstrip("/")
        if not cfg.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint must start with http:// or https://: {cfg.endpoint!r}")
        _check_url(cfg.endpoint)
    return cfg
