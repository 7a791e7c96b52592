"""`logbook sync` on a lab's network: proxies, a private CA, redirects.

Real parts only: the emulator serving http and https (a trustme CA), a real
forward proxy with CONNECT (proxy.py), `logbook` as a process at -vv.  In
every case the jobs reach the server exactly once (or not at all), and
neither the key nor the proxy password shows up in any output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from adversary import closed_port
from netsupport import ProxyPy, write_server_cert
from support import (
    Run,
    assert_exactly_once,
    assert_no_key,
    assert_no_traceback,
    cli,
    dump_db,
    entries,
    seed_store,
    states,
    write_config,
)

from logbook.emulator.testing import EmulatorProcess

KEY = "net+key/with=chars42"
PASSWORD = "pr0xy+pass/word"
N = 12


@pytest.fixture(scope="module")
def tls_emulator(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorProcess]:
    cert, key = write_server_cert(ca, tmp_path_factory.mktemp("tls"))
    emu = EmulatorProcess(
        KEY, progress_seconds=0.5, extra_args=("--tls-cert", cert, "--tls-key", key), cafile=ca_file
    )
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def plain_emulator() -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(KEY, progress_seconds=0.5)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPy]:
    p = ProxyPy(tmp_path_factory.mktemp("proxy"), None)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPy]:
    p = ProxyPy(tmp_path_factory.mktemp("auth-proxy"), f"lab:{PASSWORD}")
    yield p
    p.stop()


def sync(home: Path, env: dict[str, str], *extra: str) -> Run:
    run = cli(home, "-vv", "--stats", "0", "sync", *extra, env={"HAIQU_API_KEY": KEY, **env})
    assert_no_traceback(run.err)
    for text in (run.out, run.err):
        assert_no_key(text, KEY, "sync output")
        assert PASSWORD not in text and "pr0xy" not in text
    return run


def fresh(emu: EmulatorProcess, home: Path) -> Path:
    emu.reset()
    return seed_store(home, N, experiment=f"net-{home.name}")


def test_http_through_a_proxy(
    plain_emulator: EmulatorProcess, proxy: ProxyPy, tmp_path: Path
) -> None:
    db = fresh(plain_emulator, tmp_path / "home")
    run = sync(tmp_path / "home", {"HAIQU_EDGE_URI": plain_emulator.url, "HTTP_PROXY": proxy.url()})
    assert run.code == 0, run.err
    assert_exactly_once(db, plain_emulator)


def test_https_through_a_proxy_with_a_private_ca(
    tls_emulator: EmulatorProcess, proxy: ProxyPy, ca_file: str, tmp_path: Path
) -> None:
    db = fresh(tls_emulator, tmp_path / "home")
    env = {"HAIQU_EDGE_URI": tls_emulator.url, "HTTPS_PROXY": proxy.url(), "SSL_CERT_FILE": ca_file}
    run = sync(tmp_path / "home", env)
    assert run.code == 0, run.err
    assert_exactly_once(db, tls_emulator)


def test_the_proxy_from_config_and_its_password_are_never_shown(
    plain_emulator: EmulatorProcess, auth_proxy: ProxyPy, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    db = fresh(plain_emulator, home)
    write_config(
        home,
        [f'proxy = "{auth_proxy.url("lab:" + PASSWORD.replace("+", "%2B").replace("/", "%2F"))}"'],
    )
    run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url})
    assert run.code == 0, run.err
    assert_exactly_once(db, plain_emulator)
    shown = cli(home, "config", env={"HAIQU_API_KEY": KEY})
    assert shown.code == 0 and "proxy" in shown.out and "****" in shown.out
    assert "pr0xy" not in shown.out and "pr0xy" not in shown.err
    doctor = cli(home, "doctor", env={"HAIQU_API_KEY": KEY, "HAIQU_EDGE_URI": plain_emulator.url})
    assert "proxy" in doctor.out and "through the proxy" in doctor.out, doctor.out
    assert "pr0xy" not in doctor.out + doctor.err


def test_a_proxy_that_wants_credentials_changes_nothing(
    plain_emulator: EmulatorProcess, auth_proxy: ProxyPy, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    fresh(plain_emulator, home)
    run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url, "HTTP_PROXY": auth_proxy.url()})
    assert run.code == 4, run.err
    assert "407" in run.err and "user and password" in run.err
    assert states(home / "logbook.db")["pending"] == N
    assert plain_emulator.stats()["jobs_created"] == 0


def test_a_proxy_password_never_reaches_the_store(
    plain_emulator: EmulatorProcess, auth_proxy: ProxyPy, tmp_path: Path
) -> None:
    """Runs that fail at the proxy (a wrong password, a dead proxy) and one whose server
    fails behind it: no spelling of the password in any table or the WAL."""
    home = tmp_path / "home"
    db = fresh(plain_emulator, home)
    creds = "lab:" + quote(PASSWORD, safe="")
    dead = auth_proxy.url(creds).rsplit(":", 1)[0] + f":{closed_port()}"
    wrong = auth_proxy.url("lab:" + quote(PASSWORD[::-1], safe=""))
    for proxy, code in ((dead, 4), (wrong, 4)):
        run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url, "HTTP_PROXY": proxy})
        assert run.code == code, run.err
    plain_emulator.set_faults(error_rate=1.0, echo_rate=1.0)
    run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url, "HTTP_PROXY": auth_proxy.url(creds)})
    assert run.code == 1, run.err
    stored = dump_db(db)
    assert all("500" in (e["last_error"] or "") for e in entries(db))  # errors were stored
    for secret in (PASSWORD, quote(PASSWORD, safe=""), PASSWORD[::-1], "pr0xy", "drow/ssap"):
        assert secret not in stored, secret


def test_no_proxy_bypasses_a_dead_proxy(plain_emulator: EmulatorProcess, tmp_path: Path) -> None:
    db = fresh(plain_emulator, tmp_path / "home")
    env = {
        "HAIQU_EDGE_URI": plain_emulator.url,
        "HTTP_PROXY": "http://127.0.0.1:9",  # nothing listens there
        "NO_PROXY": "127.0.0.1,localhost",
    }
    run = sync(tmp_path / "home", env)
    assert run.code == 0, run.err
    assert_exactly_once(db, plain_emulator)


def test_a_certificate_that_does_not_verify_changes_nothing(
    tls_emulator: EmulatorProcess, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    fresh(tls_emulator, home)
    before = entries(home / "logbook.db")
    run = sync(home, {"HAIQU_EDGE_URI": tls_emulator.url})
    assert run.code == 4, run.err
    lines = [line for line in run.err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "certificate" in lines[0]
    assert "SSL_CERT_FILE" in lines[0] and "ca_bundle" in lines[0]
    assert entries(home / "logbook.db") == before
    assert tls_emulator.stats()["jobs_created"] == 0
    doctor = cli(home, "doctor", env={"HAIQU_API_KEY": KEY, "HAIQU_EDGE_URI": tls_emulator.url})
    assert doctor.code == 1 and "certificate" in doctor.out


def test_ca_bundle_in_config(tls_emulator: EmulatorProcess, ca_file: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = fresh(tls_emulator, home)
    write_config(home, [f'ca_bundle = "{ca_file}"'])
    run = sync(home, {"HAIQU_EDGE_URI": tls_emulator.url})
    assert run.code == 0, run.err
    assert_exactly_once(db, tls_emulator)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirected_post_is_never_followed(
    plain_emulator: EmulatorProcess, status: int, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    fresh(plain_emulator, home)
    before = entries(home / "logbook.db")
    elsewhere = f"https://new.example.test/api?HAIQU_API_KEY={KEY}"
    plain_emulator.set_faults(redirect_to=elsewhere, redirect_status=status, routes="*")
    try:
        run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url})
    finally:
        plain_emulator.clear_faults()
    assert run.code == 2, run.err
    lines = [line for line in run.err.splitlines() if "error:" in line]
    assert len(lines) == 1, run.err
    assert "redirects to https://new.example.test/api;" in lines[0] and "HAIQU_EDGE_URI" in lines[0]
    assert entries(home / "logbook.db") == before  # every entry as it was
    assert plain_emulator.stats()["jobs_created"] == 0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirected_refresh_stops_the_run(
    plain_emulator: EmulatorProcess, status: int, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    db = fresh(plain_emulator, home)
    assert sync(home, {"HAIQU_EDGE_URI": plain_emulator.url}, "--no-refresh").code == 0
    synced = entries(db)
    plain_emulator.set_faults(
        redirect_to="http://moved.example.test/v2", redirect_status=status, routes="*"
    )
    try:
        run = sync(home, {"HAIQU_EDGE_URI": plain_emulator.url})
    finally:
        plain_emulator.clear_faults()
    assert run.code == 2 and "redirects to http://moved.example.test/v2" in run.err
    assert entries(db) == synced
    assert plain_emulator.stats()["duplicates"] == 0


@pytest.mark.parametrize("with_credentials", [True, False])
def test_https_goes_through_the_proxy_tunnel(
    tls_emulator: EmulatorProcess, auth_proxy: ProxyPy, ca_file: str, with_credentials: bool,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The proof it went through the proxy: without its credentials, the CONNECT is refused."""
    home = tmp_path / "home"
    db = fresh(tls_emulator, home)
    creds = "lab:" + PASSWORD.replace("+", "%2B").replace("/", "%2F") if with_credentials else None
    env = {
        "HAIQU_EDGE_URI": tls_emulator.url,
        "HTTPS_PROXY": auth_proxy.url(creds),
        "SSL_CERT_FILE": ca_file,
    }
    run = sync(home, env)
    if with_credentials:
        assert run.code == 0, run.err
        assert_exactly_once(db, tls_emulator)
    else:
        assert run.code == 4 and "407" in run.err, run.err
        assert states(db)["pending"] == N and tls_emulator.stats()["jobs_created"] == 0
