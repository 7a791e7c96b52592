"""logbook's HTTP/1.1 engine against a scripted server on loopback.

The server is a real socket server: each test says what it answers, byte for
byte, and the test checks what a caller of ``Pool.request`` gets, how many
connections were opened and what the server received.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from logbook.wire import ConnectFailed, Pool, Response, WireError

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


def head(method: str = "GET", path: str = "/x", body: bytes | None = None) -> bytes:
    text = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
    if body is not None:
        text += f"Content-Length: {len(body)}\r\n"
    return (text + "\r\n").encode()


class Server:
    """Answers each request with the next scripted answer; counts connections."""

    def __init__(self, *answers: bytes | Answer) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                for line in request.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        request += await reader.readexactly(int(line.split(b":")[1]))
                self.requests.append(request)
                answer = self.answers.pop(0)
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                elif not await answer(reader, writer, request):
                    break
        finally:
            writer.close()


def run(coro: Awaitable[Any]) -> Any:
    async def go() -> Any:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(go())


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def requests(server: Server, *heads: tuple[bytes, bytes | None], **kw: Any) -> list[Any]:
    """Send requests one after another on one pool; each result or the error raised."""
    pool = Pool(server.url, **kw)
    out: list[Any] = []
    try:
        for h, body in heads:
            try:
                out.append(await pool.request(h, body))
            except WireError as err:
                out.append(err)
    finally:
        await pool.aclose()
    return out


def gets(*answers: bytes | Answer, count: int = 1) -> tuple[list[Any], Server]:
    """``count`` GETs on one pool against a server giving ``answers``; results and server."""

    async def go() -> tuple[list[Any], Server]:
        async with Server(*answers) as server:
            return await requests(server, *[(head(), None)] * count), server

    return run(go())


def test_keep_alive_reuses_one_connection() -> None:
    async def go() -> tuple[list[Any], Server]:
        async with Server(OK, OK, OK) as server:
            body = b'{"a": 1}'
            got = await requests(server, (head(), None), (head("POST", body=body), body),
                                 (head(), None))  # fmt: skip
            return got, server

    got, server = run(go())
    assert [r.status for r in got] == [200, 200, 200]
    assert [r.content for r in got] == [b"{}"] * 3
    assert got[0].header("content-type") == "application/json"
    assert server.connections == 1
    assert server.requests[1].endswith(b'\r\n\r\n{"a": 1}')


def test_connection_close_is_honoured() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nA"

    got, server = gets(closing, OK, count=2)
    assert [r.content for r in got] == [b"A", b"{}"]
    assert server.connections == 2


def test_chunked_body_with_extensions_and_trailers() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )

    got, server = gets(chunked, OK, count=2)
    assert got[0].status == 201 and got[0].reason == "Created"
    assert got[0].content == b"hello 0123456789"
    assert got[1].content == b"{}"
    assert server.connections == 1  # still usable after the trailers


def test_body_until_close_and_http_1_0() -> None:
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"

    async def go() -> tuple[list[Any], Server]:
        async def answer(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
            w.write(until_close)
            await w.drain()
            return False  # close: that ends the body

        async with Server(answer, OK) as server:
            return await requests(server, (head(), None), (head(), None)), server

    got, server = run(go())
    assert got[0].content == b"all of it"
    assert got[1].content == b"{}"
    assert server.connections == 2


def test_interim_100_continue_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + OK

    (got,), _ = gets(answer)
    assert got.status == 200 and got.content == b"{}"


def test_response_arriving_a_byte_at_a_time() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def slowly(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        for i in range(len(chunked)):
            w.write(chunked[i : i + 1])
            await w.drain()
            await asyncio.sleep(0.001)
        return True

    got, server = gets(slowly, slowly, count=2)
    assert [r.content for r in got] == [b"abc", b"abc"]
    assert server.connections == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_decoded(encoding: str) -> None:
    data = b'{"id": "x"}' * 50
    packed = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    answer = (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(packed)}\r\n\r\n"
    ).encode() + packed

    (got,), _ = gets(answer)
    assert got.content == data


def test_no_body_for_204_and_head() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # no body follows a HEAD

    async def go() -> tuple[list[Any], Server]:
        async with Server(no_content, head_answer, OK) as server:
            pool = Pool(server.url)
            try:
                a = await pool.request(head(), None)
                b = await pool.request(head("HEAD"), None, method="HEAD")
                c = await pool.request(head(), None)
            finally:
                await pool.aclose()
            return [a, b, c], server

    got, server = run(go())
    assert [(r.status, r.content) for r in got] == [(204, b""), (200, b""), (200, b"{}")]
    assert server.connections == 1


def test_a_stale_idle_connection_is_replaced_before_sending() -> None:
    """The server closes an idle keep-alive connection: the next request must not use it."""

    async def close_after(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(OK)
        await w.drain()
        return False

    async def go() -> tuple[list[Any], Server]:
        async with Server(close_after, OK) as server:
            pool = Pool(server.url)
            try:
                first = await pool.request(head(), None)
                await asyncio.sleep(0.1)  # the close reaches us while the connection is idle
                second = await pool.request(head(), None)
            finally:
                await pool.aclose()
            return [first, second], server

    got, server = run(go())
    assert [r.status for r in got] == [200, 200]
    assert server.connections == 2


def test_closed_without_answer_may_have_been_received() -> None:
    async def drop(_r: Any, _w: asyncio.StreamWriter, _req: bytes) -> bool:
        return False

    async def go() -> list[Any]:
        async with Server(drop) as server:
            return await requests(server, (head("POST", body=b"{}"), b"{}"))

    (err,) = run(go())
    assert isinstance(err, WireError) and err.sent
    assert "closed the connection without a response" in str(err)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "without a complete response"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad content-length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "bad content-length",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", "br"),
    ],
)
def test_unreadable_answers_fail_as_maybe_received(answer: bytes, message: str) -> None:
    async def send_and_close(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(answer)
        await w.drain()
        return False

    (err,), _ = gets(send_and_close)
    assert isinstance(err, WireError) and err.sent
    assert message in str(err)


def test_connection_refused_sends_nothing() -> None:
    async def go() -> list[Any]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = Pool(f"http://127.0.0.1:{port}")
        try:
            await pool.request(head(), None)
        except WireError as err:
            return [err]
        finally:
            await pool.aclose()
        return []

    (err,) = run(go())
    assert isinstance(err, ConnectFailed) and not err.sent
    assert "cannot connect to 127.0.0.1:" in str(err)


def test_cancelled_request_does_not_return_its_connection() -> None:
    async def stall(_r: Any, _w: asyncio.StreamWriter, _req: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async def go() -> tuple[Response, Server]:
        async with Server(stall, OK) as server:
            pool = Pool(server.url)
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await pool.request(head(), None)
                return await pool.request(head(), None), server
            finally:
                await pool.aclose()

    got, server = run(go())
    assert got.content == b"{}"
    assert server.connections == 2  # the stalled one was not reused


def test_at_most_limit_connections_at_once() -> None:
    open_now = 0
    most = 0

    async def slow_ok(_r: Any, w: asyncio.StreamWriter, _req: bytes) -> bool:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.05)
        open_now -= 1
        w.write(OK)
        await w.drain()
        return True

    async def go() -> tuple[list[Response], Server]:
        async with Server(*[slow_ok] * 12) as server:
            pool = Pool(server.url, limit=3)
            try:
                got = await asyncio.gather(*(pool.request(head(), None) for _ in range(12)))
            finally:
                await pool.aclose()
            return list(got), server

    got, server = run(go())
    assert len(got) == 12 and all(r.status == 200 for r in got)
    assert most == 3 and server.connections == 3


def test_endpoint_prefix_and_authority() -> None:
    pool = Pool("https://api.example.org/v1/")
    assert (pool.authority, pool.prefix, pool.port, pool.tls) == (
        "api.example.org",
        "/v1",
        443,
        True,
    )
    pool = Pool("http://[::1]:8080")
    assert (pool.authority, pool.prefix, pool.port) == ("[::1]:8080", "", 8080)
    with pytest.raises(ValueError):
        Pool("ftp://example.org")


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def _tls_request(cert: str, key: str, **pool_kw: Any) -> Any:
    import ssl

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(f"https://127.0.0.1:{port}", **pool_kw)
    try:
        return await pool.request(head(), None)
    except WireError as err:
        return err
    finally:
        await pool.aclose()
        server.close()


def test_tls_with_a_trusted_certificate(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # as a lab with its own CA would
    got = run(_tls_request(cert, key))
    assert isinstance(got, Response) and got.content == b"{}"


def test_tls_with_an_untrusted_certificate_sends_nothing(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    err = run(_tls_request(*certificate))
    assert isinstance(err, ConnectFailed) and not err.sent
    assert "not trusted" in str(err)


# --- what ApiClient puts on the wire ----------------------------------------------------

KEY = "k+ey/with=chars+/="
JOB = (
    b'{"id": "j1", "user_id": 1, "experiment_id": "e", "status": "Done",'
    b' "job_type": "USER_LOCAL_JOB", "creation_date": "2026-01-01T00:00:00Z",'
    b' "hash": "h", "backend_name": "b"}'
)
CREATED = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(JOB), JOB)


@pytest.mark.parametrize("auth", ["query", "header"])
def test_client_request_bytes(auth: str) -> None:
    from logbook.client import ApiClient

    async def go() -> tuple[Any, Server]:
        async with Server(CREATED) as server:
            async with ApiClient(server.url + "/v1", KEY, auth=auth, engine="wire") as client:
                job = await client.submit({"experiment_id": "e", "hash": "h"})
            return job, server

    job, server = run(go())
    assert job.id == "j1"
    (request,) = server.requests
    line, _, rest = request.partition(b"\r\n")
    if auth == "query":  # percent-encoded: a raw "+" would arrive as a space
        assert line == b"POST /v1/jobs?HAIQU_API_KEY=k%2Bey%2Fwith%3Dchars%2B%2F%3D HTTP/1.1"
        assert b"authorization" not in rest.lower()
    else:
        assert line == b"POST /v1/jobs HTTP/1.1"
        assert f"Authorization: {KEY}\r\n".encode() in rest
    assert b"Content-Type: application/json\r\n" in rest
    assert b"Accept-Encoding: identity\r\n" in rest  # no Accept-Encoding would mean "any"
    assert rest.endswith(b'\r\n\r\n{"experiment_id":"e","hash":"h"}')


def test_client_refuses_a_key_that_cannot_be_a_header() -> None:
    from logbook.client import ApiClient
    from logbook.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot go in a header"):
        ApiClient("http://127.0.0.1:9", "bad\r\nX-Injected: 1", auth="header", engine="wire")


# --- what a real network and real servers do -------------------------------------------


def test_an_address_that_drops_packets_does_not_use_up_the_connect_timeout() -> None:
    """Happy eyeballs: a host's first address black-holed (say IPv6), the next one tried."""
    import socket
    import time

    async def go() -> tuple[Response, float]:
        async with Server(OK) as server:
            good = server.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            hole = socket.socket()  # a full accept queue: the kernel drops further SYNs
            hole.bind(("127.0.0.1", 0))
            hole.listen(0)
            bad = hole.getsockname()[1]
            fillers = []
            for _ in range(4):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", bad))
                except BlockingIOError:
                    pass
                fillers.append(c)
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()

            async def two_addresses(host: str, port: int, *a: Any, **kw: Any) -> list[Any]:
                af, st = socket.AF_INET, socket.SOCK_STREAM
                return [(af, st, 6, "", ("127.0.0.1", bad)), (af, st, 6, "", ("127.0.0.1", good))]

            loop.getaddrinfo = two_addresses  # type: ignore[method-assign]
            pool = Pool(f"http://api.test:{good}", connect_timeout=3)
            start = time.monotonic()
            try:
                got = await pool.request(head(), None)
            finally:
                await pool.aclose()
                for c in fillers:
                    c.close()
                hole.close()
            return got, time.monotonic() - start

    got, seconds = run(go())
    assert got.status == 200
    assert seconds < 2, f"took {seconds:.2f} s: the second address waited for the timeout"


def test_transfer_encoding_other_than_chunked_is_refused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"

    (err,), _ = gets(answer)
    assert isinstance(err, WireError) and "transfer-encoding" in str(err)


def test_both_framings_at_once_close_the_connection_after_use() -> None:
    both = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )

    got, server = gets(both, OK, count=2)
    assert [r.content for r in got] == [b"ok", b"{}"]  # chunked wins, as RFC 9112 says
    assert server.connections == 2


def test_non_ascii_digits_are_not_a_content_length() -> None:
    answer = "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nab".encode("latin-1")

    (err,), _ = gets(answer)
    assert isinstance(err, WireError) and "bad content-length" in str(err)


def test_path_prefix_is_percent_encoded_and_host_idna() -> None:
    pool = Pool("https://bücher.example/my api/v1")
    assert pool.authority == "xn--bcher-kva.example"
    assert pool.prefix == "/my%20api/v1"


def test_client_send_decodes_once_and_has_a_deadline() -> None:
    """``send`` hands back an httpx.Response: decoded once, and never waiting forever."""
    from logbook.client import ApiClient

    data = b'{"detail": "compressed"}'
    packed = gzip.compress(data)
    gz = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)

    async def stall(_r: Any, _w: asyncio.StreamWriter, _req: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async def go() -> tuple[Any, BaseException | None]:
        async with Server(gz + packed, stall) as server:
            async with ApiClient(server.url, KEY, engine="wire", deadline=0.3) as client:
                response = await client.send("GET", "/jobs/x")
                try:
                    await client.send("GET", "/jobs/y")
                except TimeoutError as err:
                    return response, err
                return response, None

    response, err = run(go())
    assert response.status_code == 200 and response.content == data
    assert response.json() == {"detail": "compressed"}
    assert isinstance(err, TimeoutError)
