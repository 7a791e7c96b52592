"""A lab's network: which proxy a URL goes through, and which CAs are trusted.

Both lean on maintained code: proxies are read by the standard library's
``urllib.request.getproxies_environment`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY`` and ``NO_PROXY`` in either case, lower case first, the CGI
``HTTP_PROXY`` trap avoided) and ``proxy_bypass_environment``; the trust
store is httpx2's (the system's CAs, as httpx2 picks them per platform).
``config.toml``'s ``proxy`` applies when the environment names none.

``SSL_CERT_FILE``, ``SSL_CERT_DIR`` and ``ca_bundle`` *add* a private or
TLS-inspecting CA to the system's, so a lab's CA and the public internet
both verify.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx2

from ..config import check_proxy
from ..errors import ConfigError


def proxy_source(config_proxy: str | None, url: str) -> tuple[str, str] | None:
    """``(proxy URL, where it was set)`` for ``url``, or None to go direct.

    A proxy from the environment is checked as config.toml's is (``ConfigError``,
    exit 2, for ``http://:0``, a port past 65535, a newline, ``socks5://``...).
    """
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if "no" in proxies and (bypass(host, proxies) or bypass(netloc, proxies)):
        return None
    for key in (parts.scheme, "all"):
        if proxies.get(key):
            source = f"{key.upper()}_PROXY"
            return check_proxy(proxies[key], source), source
    if config_proxy:
        return (
            config_proxy if "://" in config_proxy else "http://" + config_proxy,
            "proxy in config.toml",
        )
    return None


def proxy_bypassed(config_proxy: str | None, url: str) -> bool:
    """True when a proxy is set (environment or config) but ``NO_PROXY`` sends ``url`` direct."""
    proxies = urllib.request.getproxies_environment()
    named = any(k != "no" for k in proxies) or bool(config_proxy)
    return named and "no" in proxies and proxy_source(config_proxy, url) is None


def proxy_resolver(config_proxy: str | None) -> Callable[[httpx2.URL], str | None]:
    """``proxy_for(url)``: the proxy each request goes through (one answer per origin, cached)."""
    cache: dict[tuple[str, str, int | None], str | None] = {}

    def proxy_for(url: httpx2.URL) -> str | None:
        key = (url.scheme, url.host, url.port)
        if key not in cache:
            origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
            found = proxy_source(config_proxy, origin)
            cache[key] = found[0] if found else None
        return cache[key]

    return proxy_for


def make_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The system's CAs (as httpx2 picks them) plus SSL_CERT_FILE, SSL_CERT_DIR and
    ``ca_bundle``.
    """
    env = os.environ
    ctx = httpx2.create_ssl_context(trust_env=False)
    extra = [("SSL_CERT_FILE", env.get("SSL_CERT_FILE")), ("ca_bundle", ca_bundle)]
    for name, path in extra:
        if path:
            try:
                ctx.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"cannot load the CA bundle {path} ({name}): {err}") from None
    capath = env.get("SSL_CERT_DIR")
    if capath:
        try:
            ctx.load_verify_locations(capath=capath)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load the CA directory {capath} (SSL_CERT_DIR): {err}"
            ) from None
    return ctx
