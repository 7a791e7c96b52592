"""Tests for AiohttpTransport against real sockets on 127.0.0.1 (no mocks).

Why: the exception class decides whether logbook may resend a POST, so each
mapping is provoked by a real misbehaving peer (adversary.py), a real TLS
server (trustme CA) and a real forward proxy (proxy.py, see ``proxypy``).
Every test asserts both the class and that no message carries the API key.

Async tests run through ``asyncio.run`` (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
import trustme
from adversary import REDIRECT_LOCATION, Adversary, closed_port
from netsupport import ProxyPy, server_ctx

from logbook.client.network import make_ssl_context, proxy_resolver
from logbook.client.transport import AiohttpTransport, ProxyConnectError, ResponseTooLarge

KEY_QS = "HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars"
PATH_QS = f"/jobs?{KEY_QS}"
KEY_FORMS = ("k%2Bey%2Fwith%3Dchars", "k+ey/with=chars", "k%2bey%2fwith%3dchars", "k ey/with=chars")
BODY = b'{"hash": "h1", "shots": 100}'
HEADERS = {"Accept-Encoding": "identity", "Content-Type": "application/json"}
NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def assert_clean(exc: BaseException) -> None:
    """No form of the key in the message, repr or formatted traceback; no chained aiohttp error."""
    text = (str(exc) + repr(exc) + "".join(traceback.format_exception_only(exc))).lower()
    for form in KEY_FORMS:
        assert form.lower() not in text, f"key leaked in {exc!r}"
    assert "haiqu_api_key" not in text
    assert exc.__cause__ is None and exc.__context__ is None


async def post(
    transport: AiohttpTransport,
    url: str,
    *,
    timeout: httpx2.Timeout | None = None,
    method: str = "POST",
) -> httpx2.Response:
    # Not ``async with``: closing an AsyncClient closes its transport, and the
    # tests reuse one transport (its pool) across several calls.
    client = httpx2.AsyncClient(transport=transport, timeout=timeout or httpx2.Timeout(5.0))
    return await client.request(
        method, url, content=BODY if method == "POST" else None, headers=HEADERS
    )


async def expect_error(transport: AiohttpTransport, url: str, **kw: Any) -> httpx2.HTTPError:
    with pytest.raises(httpx2.HTTPError) as info:
        await post(transport, url, **kw)
    assert_clean(info.value)
    return info.value


@pytest.fixture
def adv() -> Iterator[Adversary]:
    with Adversary() as a:
        yield a


# ---------------------------------------------------------------------------
# TLS material
# ---------------------------------------------------------------------------


@pytest.fixture
def tls_adv(ca: trustme.CA) -> Iterator[Adversary]:
    with Adversary(ssl_context=server_ctx(ca)) as a:
        yield a


@pytest.fixture(scope="module")
def proxypy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPy]:
    p = ProxyPy(tmp_path_factory.mktemp("proxypy"), None)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def proxypy_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPy]:
    p = ProxyPy(tmp_path_factory.mktemp("proxypy_auth"), "user:pa:ss")
    yield p
    p.stop()


def fixed(proxy: str | None) -> Callable[[httpx2.URL], str | None]:
    return lambda url: proxy


# ---------------------------------------------------------------------------
# happy path: mapping, not parsing
# ---------------------------------------------------------------------------


def test_ok_sends_target_and_headers_verbatim(adv: Adversary) -> None:
    async def go() -> None:
        async with AiohttpTransport() as t:
            r = await post(t, adv.url(PATH_QS))
            assert r.status_code == 200 and r.json()["hash"] == "h1"
            assert r.headers["content-type"] == "application/json"
            assert r.extensions["http_version"] == b"HTTP/1.1"

    run(go())
    (req,) = adv.requests
    assert req.method == "POST" and req.target == PATH_QS  # no yarl re-quoting
    assert req.body == BODY
    names = sorted(k.lower() for k, _ in req.headers)
    # exactly httpx2's headers: nothing added by aiohttp (no aiohttp User-Agent, no gzip)
    assert names == sorted(
        [
            "host",
            "accept",
            "accept-encoding",
            "connection",
            "user-agent",
            "content-length",
            "content-type",
        ]
    )
    assert req.header("accept-encoding") == "identity"
    assert "aiohttp" not in (req.header("user-agent") or "")


def test_large_body_is_sent_whole_with_length(adv: Adversary) -> None:
    big = os.urandom(3 * 1024 * 1024)  # > 1 MiB goes through aiohttp as BytesIO

    async def go() -> int:
        async with AiohttpTransport() as t:
            client = httpx2.AsyncClient(transport=t)
            return (await client.post(adv.url(PATH_QS), content=big)).status_code

    assert run(go()) == 200
    (req,) = adv.requests
    assert req.body == big and req.header("content-length") == str(len(big))
    assert req.header("transfer-encoding") is None


def test_streamed_request_body_is_buffered_and_sent_with_length(adv: Adversary) -> None:
    async def chunks() -> Any:
        yield b'{"hash": '
        yield b'"h1"}'

    async def go() -> int:
        async with AiohttpTransport() as t:
            client = httpx2.AsyncClient(transport=t)
            return (await client.post(adv.url(PATH_QS), content=chunks())).status_code

    assert run(go()) == 200
    (req,) = adv.requests
    assert req.body == b'{"hash": "h1"}' and req.header("content-length") == "14"
    assert req.header("transfer-encoding") is None


def test_url_credentials_become_one_authorization_header(adv: Adversary) -> None:
    async def go() -> int:
        async with AiohttpTransport() as t:
            client = httpx2.AsyncClient(transport=t)
            url = adv.url(PATH_QS).replace("http://", "http://alice:s3cret@")
            return (await client.post(url, content=BODY)).status_code

    assert run(go()) == 200
    (req,) = adv.requests
    assert req.target == PATH_QS
    assert req.header("authorization") == "Basic " + base64.b64encode(b"alice:s3cret").decode()


def test_keepalive_connection_is_reused(adv: Adversary) -> None:
    async def go() -> None:
        async with AiohttpTransport() as t, httpx2.AsyncClient(transport=t) as c:
            for _ in range(3):
                assert (await c.post(adv.url(PATH_QS), content=BODY)).status_code == 200

    run(go())
    assert adv.count("POST") == 3 and adv.connections == 1


def test_handle_async_request_directly(adv: Adversary) -> None:
    async def go() -> httpx2.Response:
        async with AiohttpTransport() as t:
            req = httpx2.Request("POST", adv.url(PATH_QS), content=BODY, headers=HEADERS)
            resp = await t.handle_async_request(req)
            await resp.aread()
            return resp

    r = run(go())
    assert r.status_code == 200 and r.json()["hash"] == "h1"


def test_echo_target_500_is_a_response(adv: Adversary) -> None:
    adv.mode = "echo_target"

    async def go() -> httpx2.Response:
        async with AiohttpTransport() as t:
            return await post(t, adv.url(PATH_QS))

    r = run(go())
    assert r.status_code == 500
    assert "k%2bey%2fwith%3dchars" in r.text  # the server echoes lower-case escapes
    assert adv.requests[0].target == PATH_QS


def test_wrong_hash_is_returned_verbatim(adv: Adversary) -> None:
    adv.mode = "wrong_hash"

    async def go() -> httpx2.Response:
        async with AiohttpTransport() as t:
            return await post(t, adv.url(PATH_QS))

    assert run(go()).json()["hash"] == "0000deadbeef"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_not_followed(adv: Adversary, status: int) -> None:
    adv.mode = f"redirect_{status}"

    async def go() -> httpx2.Response:
        async with AiohttpTransport() as t:
            return await post(t, adv.url(PATH_QS))

    r = run(go())
    assert r.status_code == status and r.headers["location"] == REDIRECT_LOCATION
    assert adv.count() == 1  # other.example was never contacted


def test_aclose_closes_session(adv: Adversary) -> None:
    async def go() -> None:
        t = AiohttpTransport()
        await post(t, adv.url(PATH_QS))
        session = t._session
        await t.aclose()
        assert session is not None and session.closed
        with pytest.raises(RuntimeError):
            await post(t, adv.url(PATH_QS))

    run(go())


# ---------------------------------------------------------------------------
# "maybe sent": everything after the connection was handed out
# ---------------------------------------------------------------------------

MAYBE_SENT = [
    ("never_answer", httpx2.ReadTimeout, 1),
    ("close_before_response", httpx2.RemoteProtocolError, 1),
    ("close_mid_headers", httpx2.RemoteProtocolError, 1),
    ("close_mid_body", httpx2.RemoteProtocolError, 1),
    ("reset", httpx2.ReadError, 1),
    ("garbage", httpx2.RemoteProtocolError, 1),
    ("garbage_echo", httpx2.RemoteProtocolError, 1),
    ("chunked_trailers_forever", httpx2.RemoteProtocolError, 1),
    ("huge_body", ResponseTooLarge, 1),
    ("huge_chunked", ResponseTooLarge, 1),
]


@pytest.mark.parametrize(("mode", "expected", "posts"), MAYBE_SENT, ids=[m[0] for m in MAYBE_SENT])
def test_maybe_sent_mapping(adv: Adversary, mode: str, expected: Any, posts: int) -> None:
    adv.mode = mode

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(max_body=1024 * 1024) as t:
            return await expect_error(t, adv.url(PATH_QS), timeout=httpx2.Timeout(5.0, read=0.5))

    exc = run(go())
    assert isinstance(exc, expected), repr(exc)
    assert not isinstance(exc, NOT_SENT), repr(exc)
    assert isinstance(exc, httpx2.TransportError) and exc.request.method == "POST"
    assert adv.count("POST") == posts
    assert f"127.0.0.1:{adv.port}" in str(exc)


def test_refuse_after_accept_either_class_is_truthful(adv: Adversary) -> None:
    """Accept then RST at once.  Race: if the RST lands before the client's
    connect() completes, aiohttp raises ClientConnectorError (ECONNRESET
    "Connect call failed") -> ConnectError, and indeed nothing was written;
    otherwise the request was written and it is "maybe sent".  Both are true.
    """
    adv.mode = "refuse_after_accept"

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport() as t:
            return await expect_error(t, adv.url(PATH_QS))

    exc = run(go())
    assert isinstance(exc, (httpx2.ConnectError, httpx2.ReadError, httpx2.RemoteProtocolError)), (
        repr(exc)
    )
    assert adv.count() == 0


def test_reset_while_writing_body_is_maybe_sent(adv: Adversary) -> None:
    """ClientOSError (EPIPE/ECONNRESET) raised while *writing* must not look like a connect
    failure.
    """
    adv.mode = "reset_before_body"
    big = b"x" * (32 * 1024 * 1024)

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport() as t:
            client = httpx2.AsyncClient(transport=t, timeout=httpx2.Timeout(5.0))
            with pytest.raises(httpx2.HTTPError) as info:
                await client.post(adv.url(PATH_QS), content=big)
            assert_clean(info.value)
            return info.value

    exc = run(go())
    assert isinstance(exc, (httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError)), repr(
        exc
    )
    assert not isinstance(exc, NOT_SENT)
    assert adv.count("POST") == 1, repr(exc)


def test_deadline_stops_a_trickling_server(adv: Adversary) -> None:
    """sock_read is re-armed by every byte, so only ``deadline`` ends a trickle."""
    adv.mode = "trickle"

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(deadline=0.6) as t:
            return await expect_error(t, adv.url(PATH_QS), timeout=httpx2.Timeout(5.0, read=0.3))

    exc = run(go())
    assert type(exc) is httpx2.ReadTimeout
    assert adv.count("POST") == 1


def test_reused_keepalive_closed_by_server_is_maybe_sent_and_not_retried(adv: Adversary) -> None:
    adv.mode = ["ok", "close_before_response", "ok"]

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport() as t:
            assert (await post(t, adv.url(PATH_QS))).status_code == 200
            return await expect_error(t, adv.url(PATH_QS))

    exc = run(go())
    assert isinstance(exc, httpx2.RemoteProtocolError) and not isinstance(exc, NOT_SENT)
    assert adv.connections == 1  # the failure really was on the reused connection
    assert adv.count("POST") == 2  # aiohttp did not silently resend the POST


def test_reused_keepalive_get_is_retried_by_aiohttp(adv: Adversary) -> None:
    """Documented pitfall: aiohttp resends *idempotent* methods once on a dead reused connection."""
    adv.mode = ["ok", "close_before_response", "ok"]

    async def go() -> int:
        async with AiohttpTransport() as t:
            await post(t, adv.url(PATH_QS), method="GET")
            return (await post(t, adv.url(PATH_QS), method="GET")).status_code

    assert run(go()) == 200
    assert adv.count("GET") == 3 and adv.connections == 2


# ---------------------------------------------------------------------------
# "nothing sent"
# ---------------------------------------------------------------------------


def test_connection_refused_is_connect_error() -> None:
    port = closed_port()

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport() as t:
            return await expect_error(t, f"http://127.0.0.1:{port}{PATH_QS}")

    exc = run(go())
    assert type(exc) is httpx2.ConnectError
    assert f"127.0.0.1:{port}" in str(exc) and "ECONNREFUSED" in str(exc)


def test_connect_timeout_is_connect_timeout() -> None:
    # A listener with a full accept queue silently drops further SYNs.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:

        async def go() -> httpx2.HTTPError:
            async with AiohttpTransport() as t:
                return await expect_error(
                    t, f"http://127.0.0.1:{port}{PATH_QS}", timeout=httpx2.Timeout(5.0, connect=0.3)
                )

        exc = run(go())
        assert type(exc) is httpx2.ConnectTimeout
    finally:
        filler.close()
        ls.close()


def test_pool_exhausted_timeout_is_nothing_sent(adv: Adversary) -> None:
    adv.mode = "never_answer"

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(limit=1) as t:
            first = asyncio.ensure_future(
                post(t, adv.url(PATH_QS), timeout=httpx2.Timeout(5.0, read=3.0))
            )
            await asyncio.to_thread(adv.wait_for, lambda a: a.count("POST") == 1)
            exc = await expect_error(
                t, adv.url(PATH_QS), timeout=httpx2.Timeout(5.0, pool=0.2, connect=0.2)
            )
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            return exc

    exc = run(go())
    # Pool waits share aiohttp's ClientTimeout.connect: reported as ConnectTimeout (nothing sent).
    assert type(exc) is httpx2.ConnectTimeout
    assert adv.count("POST") == 1 and adv.connections == 1


class FailingResolver(aiohttp.abc.AbstractResolver):
    """Resolution fails like getaddrinfo would, without sending a DNS packet off-box."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


def test_dns_failure_is_connect_error() -> None:
    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(resolver=FailingResolver()) as t:
            return await expect_error(t, f"http://api.example.invalid{PATH_QS}")

    exc = run(go())
    assert type(exc) is httpx2.ConnectError and "Name or service not known" in str(exc)


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


def test_tls_with_private_ca(tls_adv: Adversary, ca_file: str) -> None:
    async def go() -> int:
        async with AiohttpTransport(ssl_context=make_ssl_context(ca_file)) as t:
            return (await post(t, tls_adv.url(PATH_QS))).status_code

    assert run(go()) == 200
    assert tls_adv.requests[0].target == PATH_QS


def test_tls_with_private_ca_dir(
    tls_adv: Adversary, ca_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_DIR (an OpenSSL hashed directory, as `openssl rehash` makes it) adds its CAs."""
    cadir = tmp_path / "certs"
    cadir.mkdir()
    (cadir / "lab-ca.pem").write_bytes(Path(ca_file).read_bytes())
    subprocess.run(["openssl", "rehash", str(cadir)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_DIR", str(cadir))

    async def go() -> int:
        async with AiohttpTransport(ssl_context=make_ssl_context()) as t:
            return (await post(t, tls_adv.url(PATH_QS))).status_code

    assert run(go()) == 200


def test_tls_without_ca_is_connect_error_with_reason(tls_adv: Adversary) -> None:
    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(ssl_context=make_ssl_context()) as t:
            return await expect_error(t, tls_adv.url(PATH_QS))

    exc = run(go())
    assert type(exc) is httpx2.ConnectError
    assert "certificate verify failed: unable to get local issuer certificate" in str(exc)
    assert tls_adv.count() == 0


def test_tls_hostname_mismatch_is_connect_error(ca: trustme.CA, ca_file: str) -> None:
    with Adversary(ssl_context=server_ctx(ca, "api.example.com")) as a:

        async def go() -> httpx2.HTTPError:
            async with AiohttpTransport(ssl_context=make_ssl_context(ca_file)) as t:
                return await expect_error(t, a.url(PATH_QS))

        exc = run(go())
        assert type(exc) is httpx2.ConnectError and "mismatch" in str(exc).lower()
        assert a.count() == 0


def test_private_cas_are_added_to_the_system_store(
    ca: trustme.CA, ca_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE and ca_bundle each add a CA; the system's CAs stay trusted too."""
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))
    ctx = make_ssl_context(ca_file)
    system_only = make_ssl_context()
    monkeypatch.delenv("SSL_CERT_FILE")
    assert ctx.cert_store_stats()["x509_ca"] >= make_ssl_context().cert_store_stats()["x509_ca"] + 2
    assert system_only.cert_store_stats()["x509_ca"] > 1  # the system's CAs are there
    with (
        Adversary(ssl_context=server_ctx(other_ca)) as srv1,
        Adversary(ssl_context=server_ctx(ca)) as srv2,
    ):

        async def go() -> list[int]:
            async with AiohttpTransport(ssl_context=ctx) as t:
                return [(await post(t, s.url(PATH_QS))).status_code for s in (srv1, srv2)]

        assert run(go()) == [200, 200]


# ---------------------------------------------------------------------------
# proxies: proxy.py (real) and the adversary as a misbehaving proxy
# ---------------------------------------------------------------------------


def test_http_through_proxy_absolute_form(proxypy: ProxyPy, adv: Adversary) -> None:
    async def go() -> int:
        async with AiohttpTransport(proxy_for=fixed(proxypy.url())) as t:
            return (await post(t, adv.url(PATH_QS))).status_code

    assert run(go()) == 200
    assert adv.requests[0].target == PATH_QS  # reached the origin un-requoted


def test_https_through_proxy_connect(proxypy: ProxyPy, tls_adv: Adversary, ca_file: str) -> None:
    async def go() -> int:
        async with AiohttpTransport(
            proxy_for=fixed(proxypy.url()), ssl_context=make_ssl_context(ca_file)
        ) as t:
            return (await post(t, tls_adv.url(PATH_QS))).status_code

    assert run(go()) == 200
    assert tls_adv.requests[0].target == PATH_QS


def test_auth_proxy_with_credentials_in_url(
    proxypy_auth: ProxyPy, adv: Adversary, tls_adv: Adversary, ca_file: str
) -> None:
    proxy = proxypy_auth.url("user:pa%3Ass")  # password "pa:ss", percent-encoded in the URL

    async def go() -> list[int]:
        async with AiohttpTransport(
            proxy_for=fixed(proxy), ssl_context=make_ssl_context(ca_file)
        ) as t:
            return [(await post(t, s.url(PATH_QS))).status_code for s in (adv, tls_adv)]

    assert run(go()) == [200, 200]


def test_auth_proxy_without_credentials(
    proxypy_auth: ProxyPy, adv: Adversary, tls_adv: Adversary, ca_file: str
) -> None:
    async def go() -> tuple[httpx2.Response, httpx2.HTTPError]:
        async with AiohttpTransport(
            proxy_for=fixed(proxypy_auth.url()), ssl_context=make_ssl_context(ca_file)
        ) as t:
            plain = await post(t, adv.url(PATH_QS))
            tunnelled = await expect_error(t, tls_adv.url(PATH_QS))
            return plain, tunnelled

    plain, exc = run(go())
    # absolute-form: the proxy's 407 is an ordinary response (the origin saw nothing)
    assert plain.status_code == 407
    # CONNECT refused: nothing sent, and both a ConnectError and a ProxyError
    assert (
        isinstance(exc, ProxyConnectError)
        and isinstance(exc, httpx2.ConnectError)
        and isinstance(exc, httpx2.ProxyError)
    )
    assert "407" in str(exc)
    assert adv.count() == 0 and tls_adv.count() == 0


def test_proxy_credentials_reach_proxy_as_proxy_authorization(adv: Adversary) -> None:
    """The adversary plays the proxy: absolute-form GET/POST, then a refused CONNECT."""
    expected = "Basic " + base64.b64encode(b"us er:p@ss:w").decode()
    proxy = f"http://us%20er:p%40ss%3Aw@127.0.0.1:{adv.port}"
    adv.mode = ["ok", "proxy_refuse_407"]

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(proxy_for=fixed(proxy)) as t:
            assert (await post(t, f"http://origin.test:8080{PATH_QS}")).status_code == 200
            return await expect_error(t, f"https://origin.test{PATH_QS}")

    exc = run(go())
    plain, connect = adv.requests
    assert plain.target == f"http://origin.test:8080{PATH_QS}"  # absolute-form, not re-quoted
    assert plain.header("proxy-authorization") == expected
    assert connect.method == "CONNECT" and connect.target == "origin.test:443"
    assert connect.header("proxy-authorization") == expected
    assert isinstance(exc, ProxyConnectError)
    assert "p@ss" not in str(exc) and "us er" not in str(exc)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("proxy_refuse_403", ProxyConnectError),
        ("close_before_response", ProxyConnectError),
        ("garbage", ProxyConnectError),
        ("never_answer", httpx2.ConnectTimeout),
    ],
)
def test_misbehaving_proxy_on_connect_is_nothing_sent(
    adv: Adversary, mode: str, expected: type
) -> None:
    adv.mode = mode

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(proxy_for=fixed(f"http://127.0.0.1:{adv.port}")) as t:
            return await expect_error(
                t, f"https://origin.test{PATH_QS}", timeout=httpx2.Timeout(5.0, connect=0.5)
            )

    exc = run(go())
    assert type(exc) is expected
    assert isinstance(exc, NOT_SENT)
    assert [r.method for r in adv.requests] == ["CONNECT"]


@pytest.mark.parametrize(
    "script", [["close_before_response"], ["ok", "close_before_response"]], ids=["fresh", "reused"]
)
def test_origin_failure_inside_tunnel_is_maybe_sent(
    proxypy: ProxyPy, tls_adv: Adversary, ca_file: str, script: list[str]
) -> None:
    """Guards the phase flag: once the tunnel is up (new or reused), failures are not
    ProxyConnectError.
    """
    tls_adv.mode = script

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(
            proxy_for=fixed(proxypy.url()), ssl_context=make_ssl_context(ca_file)
        ) as t:
            for _ in script[:-1]:
                assert (await post(t, tls_adv.url(PATH_QS))).status_code == 200
            return await expect_error(t, tls_adv.url(PATH_QS))

    exc = run(go())
    assert isinstance(exc, httpx2.RemoteProtocolError) and not isinstance(exc, NOT_SENT), repr(exc)
    assert tls_adv.count("POST") == len(script) and tls_adv.connections == 1


def test_misbehaving_plain_proxy_is_maybe_sent(adv: Adversary) -> None:
    """Absolute-form through a proxy: the proxy may have forwarded it, so not a ConnectError."""
    adv.mode = "close_before_response"

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(proxy_for=fixed(f"http://127.0.0.1:{adv.port}")) as t:
            return await expect_error(t, f"http://origin.test{PATH_QS}")

    exc = run(go())
    assert isinstance(exc, httpx2.RemoteProtocolError) and not isinstance(exc, NOT_SENT)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dead_proxy_is_connect_error(scheme: str) -> None:
    port = closed_port()

    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(proxy_for=fixed(f"http://user:secret@127.0.0.1:{port}")) as t:
            return await expect_error(t, f"{scheme}://origin.test{PATH_QS}")

    exc = run(go())
    assert type(exc) is httpx2.ConnectError
    assert f"127.0.0.1:{port}" in str(exc) and "secret" not in str(exc)


def test_no_proxy_bypass(adv: Adversary, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("no_proxy", "localhost, 127.0.0.1")

    async def go() -> int:
        async with AiohttpTransport(proxy_for=proxy_resolver(None)) as t:
            return (await post(t, adv.url(PATH_QS))).status_code

    assert run(go()) == 200


def test_unsupported_proxy_scheme() -> None:
    async def go() -> httpx2.HTTPError:
        async with AiohttpTransport(proxy_for=fixed("socks5://127.0.0.1:1080")) as t:
            return await expect_error(t, f"http://origin.test{PATH_QS}")

    assert type(run(go())) is httpx2.UnsupportedProtocol


# ---------------------------------------------------------------------------
# proxy_resolver: the standard library's reading of the environment
# ---------------------------------------------------------------------------

P = "http://proxy:3128"


@pytest.mark.parametrize(
    ("env", "config", "url", "expected"),
    [
        ({}, None, "http://a.test/", None),
        ({}, "proxy:3128", "https://a.test/", P),  # config used when env has none; scheme defaulted
        ({"HTTP_PROXY": P}, "http://cfg:1", "http://a.test/", P),
        ({"HTTP_PROXY": P}, None, "https://a.test/", None),  # http_proxy is for http only
        ({"HTTP_PROXY": P}, "http://cfg:1", "https://a.test/", "http://cfg:1"),
        (
            {"https_proxy": P, "HTTPS_PROXY": "http://upper:1"},
            None,
            "https://a.test/",
            P,
        ),  # lower case wins
        ({"ALL_PROXY": P}, None, "https://a.test/", P),
        ({"all_proxy": P, "HTTPS_PROXY": "http://s:1"}, None, "https://a.test/", "http://s:1"),
        ({"ALL_PROXY": P, "NO_PROXY": "*"}, None, "http://a.test/", None),
        ({"ALL_PROXY": P, "NO_PROXY": "a.test"}, None, "http://a.test/", None),
        ({"ALL_PROXY": P, "NO_PROXY": "a.test"}, None, "http://x.a.test/", None),  # suffix
        ({"ALL_PROXY": P, "NO_PROXY": ".a.test"}, None, "http://x.a.test/", None),
        ({"ALL_PROXY": P, "no_proxy": "A.Test"}, None, "http://a.test/", None),  # case
        ({"ALL_PROXY": P, "NO_PROXY": "a.test:8080"}, None, "http://a.test:8080/", None),
        ({"ALL_PROXY": P, "NO_PROXY": "x.test, y.test,z.test"}, None, "http://z.test/", None),
        (
            {"ALL_PROXY": P, "NO_PROXY": "a.test"},
            "http://cfg:1",
            "http://a.test/",
            None,
        ),  # bypass covers config
        ({"ALL_PROXY": "http://u:p@proxy:3128"}, None, "http://a.test/", "http://u:p@proxy:3128"),
        (
            {"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"},
            None,
            "http://a.test/",
            None,
        ),  # httpoxy
        ({"http_proxy": P, "REQUEST_METHOD": "GET"}, None, "http://a.test/", P),
    ],
)
def test_proxy_resolver(
    env: dict[str, str], config: str | None, url: str, expected: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_resolver(config)(httpx2.URL(url)) == expected
