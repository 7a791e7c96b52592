"""Where the store lives, how to reach the API, and where each setting came from.

Order of precedence: command-line option, environment, ``$LOGBOOK_HOME/config.toml``,
default.  The API key is never taken from the command line (it would show in
``ps``), nor from the endpoint URL.  Every setting remembers its source, so
``logbook config`` can show the user what is in effect and why.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .redact import mask, show_url

AUTH_MODES = ("query", "header")
#: The Haiqu SDK's own default (``haiqu.sdk.constants.REST_API_URI``), so a user
#: with only a key reaches the same API the SDK does.
DEFAULT_ENDPOINT = "https://api.haiqu.ai"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Requests a sync keeps in flight (the bench: 64 match a bare client at 50 ms).
DEFAULT_CONCURRENCY = 64
#: Seconds a watched file must be unchanged before it is read.
DEFAULT_SETTLE = 0.2
#: A run's overall budget (seconds) unless --max-time or ``max_time`` says otherwise.
DEFAULT_MAX_TIME = 3600.0
#: Seconds an entry a relay accepted may wait for the API's id before ``doctor`` warns.
DEFAULT_UNCONFIRMED_WARN_AFTER = 86400.0
#: What every command that needs the key says without one (sync, watch --sync, doctor).
NO_KEY = 'no API key: set HAIQU_API_KEY, or put api_key = "..." in config.toml (chmod 600)'

#: Settings config.toml may hold, with their type.
SETTINGS: dict[str, type] = {
    "db": str, "endpoint": str, "api_key": str, "auth": str, "concurrency": int,
    "max_file_bytes": int, "settle": float, "experiment": str, "request_timeout": float,
    "max_time": float, "proxy": str, "ca_bundle": str, "max_lag": float,
    "metrics_textfile": str, "heartbeat_url": str, "unconfirmed_warn_after": float,
}  # fmt: skip
#: ``--max-lag``: readiness fails once the oldest undelivered entry is older (seconds).
DEFAULT_MAX_LAG = 3600.0


def home_dir() -> Path:
    """``$LOGBOOK_HOME``, else the platform's user data directory for logbook."""
    env = os.environ.get("LOGBOOK_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("logbook", appauthor=False))


def config_path() -> Path:
    return home_dir() / "config.toml"


@dataclass
class Network:
    """What the client needs to reach the API through a lab's network."""

    proxy: str | None = None  # config.toml's proxy; the environment's are read by the client
    ca_bundle: str | None = None


@dataclass
class Config:
    home: Path
    db: Path
    endpoint: str | None = DEFAULT_ENDPOINT
    api_key: str | None = field(default=None, repr=False)
    auth: str = "query"
    concurrency: int = DEFAULT_CONCURRENCY
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    settle: float = DEFAULT_SETTLE
    experiment: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_time: float | None = DEFAULT_MAX_TIME
    proxy: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    max_lag: float = DEFAULT_MAX_LAG
    #: After ``logbook sync``: node_exporter's textfile, and a URL to GET after a clean run.
    metrics_textfile: str | None = None
    heartbeat_url: str | None = field(default=None, repr=False)
    unconfirmed_warn_after: float = DEFAULT_UNCONFIRMED_WARN_AFTER
    config_file: Path | None = None
    #: Where each setting came from: "default", "--flag", "ENV_VAR" or the config file's path.
    sources: dict[str, str] = field(default_factory=dict)
    #: Notes for -v (a key with a trailing newline that was stripped).
    notes: list[str] = field(default_factory=list)
    #: What a user sets to change the endpoint, named in advice ("set ... to it"): a relay's
    #: upstream is its ``--upstream``.
    endpoint_setting: str = "HAIQU_EDGE_URI"

    @property
    def key_source(self) -> str | None:
        return self.sources.get("api_key") if self.api_key else None

    def network(self) -> Network:
        return Network(proxy=self.proxy, ca_bundle=self.ca_bundle)

    def __repr__(self) -> str:  # never show the key, even in a debugger
        return (
            f"Config(db={str(self.db)!r}, endpoint={self.endpoint!r},"
            f" api_key={mask(self.api_key)!r}, auth={self.auth!r})"
        )

    def shown(self) -> list[tuple[str, str, str]]:
        """``(setting, value as shown, source)`` for ``logbook config``: secrets masked."""
        rows = []
        for name in SETTINGS:
            value: Any = getattr(self, name)
            if name == "api_key":
                text = mask(value)
            elif name == "proxy" and value:
                text = show_url(value)
            elif name == "heartbeat_url" and value:
                text = hidden_url(value)
            else:
                text = "(not set)" if value is None else str(value)
            rows.append((name, text, self.sources.get(name, "default")))
        return rows


def hidden_url(url: str) -> str:
    """A URL that is a secret as a whole (a heartbeat's): its scheme and host alone."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}/..."
    except ValueError:
        return "(an invalid URL)"


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    import tomllib

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: it is not UTF-8 text (save it as UTF-8)") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})")
    for key, value in data.items():
        typ = SETTINGS[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be a {typ.__name__}")
    return data


def clean_key(raw: str, source: str) -> tuple[str, str | None]:
    """The key as the server must get it, and a note when a line ending was stripped.

    A key file saved on Windows ends in CR LF; anything else that cannot go in
    a header or URL as it is (control characters, non-ASCII) is refused.
    """
    key = raw.rstrip("\r\n")
    note = f"stripped a trailing line ending from the API key ({source})" if key != raw else None
    bad = next((c for c in key if not c.isascii() or not c.isprintable() or c.isspace()), None)
    if bad is not None or not key:
        what = (
            "is empty"
            if not key
            else f"holds {'a space' if bad == ' ' else 'a control or non-ASCII character'}"
        )
        raise ConfigError(f"the API key from {source} {what}: set it to the key alone")
    return key, note


def check_endpoint(url: str, source: str) -> str:
    """The endpoint without a trailing slash; no credentials, no query or fragment (even an
    empty one), a usable host, a port."""
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        url = f"{scheme.lower()}://{rest}"  # HTTP://... is http://...
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"the endpoint from {source} must start with http:// or https://: {show_url(url)}"
        )
    _no_control(url, "the endpoint", source)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as err:
        raise ConfigError(f"the endpoint from {source} is not a valid URL ({err})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"the endpoint from {source} holds a user or password: take them out"
            " (the key goes in HAIQU_API_KEY)"
        )
    if "#" in url:
        raise ConfigError(
            f"the endpoint from {source} holds a fragment (#...): give the base URL alone,"
            f" {show_url(url)}"
        )
    if "?" in url:
        raise ConfigError(
            f"the endpoint from {source} holds a query string: give the base URL alone,"
            f" {show_url(url)}, and put the key in HAIQU_API_KEY"
        )
    _usable_host(parts.hostname, "the endpoint", source, show_url(url))
    return url


def _no_control(url: str, what: str, source: str) -> None:
    """A space or control character (a pasted newline): URL parsers drop some silently."""
    bad = next((c for c in url if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise ConfigError(
            f"{what} from {source} holds {'a space' if bad == ' ' else 'a control character'}"
            f" ({bad!r}): give the URL alone"
        )


def _usable_host(host: str | None, what: str, source: str, shown: str) -> None:
    """A host name, or an IP address written in full: ``127.1`` is no address the HTTP
    stack can reach (it is read as a name, and no name is all digits)."""
    if not host:
        raise ConfigError(f"{what} from {source} has no host: {shown}")
    if ":" in host:
        return  # an IPv6 address: urlsplit has checked its brackets
    labels = host.rstrip(".").split(".")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"{what} from {source} has the host {host!r}, which is no IP address (write"
                " all four numbers, as 127.0.0.1) and no host name"
            ) from None
        return
    if any(not label or len(label) > 63 for label in labels) or len(host) > 253:
        raise ConfigError(f"{what} from {source} has the host {host!r}, which is no host name")


#: The proxy schemes the HTTP client speaks.
PROXY_SCHEMES = ("http", "https")


def check_proxy(url: str, source: str) -> str:
    """A proxy URL checked as the client will use it (from config.toml or the environment):
    http(s), a usable host, a port that exists.  Returns it with a scheme."""
    _no_control(url, "the proxy", source)
    full = url if "://" in url else "http://" + url
    try:
        parts = urlsplit(full)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"the proxy from {source} is not a valid URL ({err})") from None
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise ConfigError(
            f"the proxy from {source} uses {parts.scheme}://, which logbook does not speak"
            f" (supported: {', '.join(s + '://' for s in PROXY_SCHEMES)}): {show_url(full)}"
        )
    _usable_host(parts.hostname, "the proxy", source, show_url(full))
    if port == 0:
        raise ConfigError(f"the proxy from {source} has port 0: {show_url(full)}")
    return full


def _positive(name: str, value: float | None, source: str, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} from {source} must be a finite number of seconds, not {value}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name} from {source} must be {'0 or more' if zero_ok else 'positive'}")


def load_config(
    *, db: str | None = None, endpoint: str | None = None, auth: str | None = None
) -> Config:
    """The effective configuration for one command (``db``, ``endpoint``, ``auth``: the flags)."""
    home = home_dir()
    path = home / "config.toml"
    data = read_config_file(path)
    sources: dict[str, str] = {}
    where = str(path)

    def pick(name: str, flag: Any = None, env: str | None = None) -> Any:
        if flag is not None:
            sources[name] = f"--{name.replace('_', '-')}"
            return flag
        if env and os.environ.get(env):
            sources[name] = env
            return os.environ[env]
        if name in data:
            sources[name] = where
            return data[name]
        return None

    db_value = pick("db", db, "LOGBOOK_DB")
    if db_value is not None and sources["db"] == where:
        # A relative db in the config file is relative to LOGBOOK_HOME, not to
        # wherever cron happens to start.
        db_value = str(home / Path(db_value).expanduser())
    cfg = Config(home=home, db=Path(db_value).expanduser() if db_value else home / "logbook.db")
    cfg.config_file = path if path.exists() else None
    raw_endpoint = pick("endpoint", endpoint, "HAIQU_EDGE_URI")
    cfg.endpoint = (
        check_endpoint(raw_endpoint, sources["endpoint"]) if raw_endpoint else DEFAULT_ENDPOINT
    )
    raw_key = pick("api_key", None, "HAIQU_API_KEY")
    if raw_key:
        cfg.api_key, note = clean_key(raw_key, sources["api_key"])
        if note:
            cfg.notes.append(note)
    cfg.auth = pick("auth", auth) or "query"
    if cfg.auth not in AUTH_MODES:
        raise ConfigError(f"auth must be one of {', '.join(AUTH_MODES)}, not {cfg.auth!r}")
    names = ("concurrency", "max_file_bytes", "settle", "experiment", "request_timeout",
             "max_lag", "metrics_textfile", "heartbeat_url", "unconfirmed_warn_after")  # fmt: skip
    for name in names:
        value = pick(name)
        if value is not None:
            setattr(cfg, name, value)
    if "max_time" in data:
        cfg.max_time = pick("max_time") or None  # 0: no limit
    raw_proxy = pick("proxy")
    cfg.proxy = check_proxy(raw_proxy, where) if raw_proxy else None
    cfg.ca_bundle = pick("ca_bundle")
    cfg.sources = sources
    _validate(cfg, where)
    return cfg


def _validate(cfg: Config, where: str) -> None:
    """Ranges the settings must be in: one clear ConfigError (exit 2) for the first that is not."""
    if not 1 <= cfg.concurrency <= 512:
        raise ConfigError(f"{where}: concurrency must be between 1 and 512")
    if cfg.max_file_bytes <= 0:
        raise ConfigError(f"{where}: max_file_bytes must be positive")
    _positive("request_timeout", cfg.request_timeout, where)
    _positive("settle", cfg.settle, where, zero_ok=True)
    _positive("max_time", cfg.max_time, where, zero_ok=True)
    _positive("max_lag", cfg.max_lag, where)
    if cfg.heartbeat_url and not cfg.heartbeat_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: heartbeat_url must start with http:// or https://")
    _positive("unconfirmed_warn_after", cfg.unconfirmed_warn_after, where)
    if cfg.ca_bundle and not os.path.exists(cfg.ca_bundle):
        raise ConfigError(f"{where}: ca_bundle {cfg.ca_bundle} does not exist")
