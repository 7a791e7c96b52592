"""The status page in a real browser: headless Chromium renders what an operator would see.

A relay whose upstream fails, past its --max-lag: the page (no JavaScript) must lead with a
red verdict banner saying so, then the figures and the lab machines.  Runs where Chromium is
installed (``scripts/test`` installs Debian's when it can); skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitorsupport import get
from relaysupport import RelayProcess, free_port
from support import cli, seed_store, wait_until

from logbook.emulator.testing import EmulatorProcess

BROWSER = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless Chromium (apt-get install chromium; scripts/test installs it as root)",
)
#: The flags that work on a machine with no display and no outside network.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip
HEADER = (0x1C, 0x22, 0x30)
BAD = (0xFB, 0xE6, 0xE6)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    assert BROWSER is not None
    return subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def failing_relay(tmp_path: Path, emulator: EmulatorProcess) -> Iterator[str]:
    """A relay past its max lag (its upstream answers 503); its metrics URL."""
    emulator.set_faults(error_rate=1.0, error_status=503, routes="*")
    port = free_port()
    relay = RelayProcess(
        tmp_path / "relay", emulator.url, emulator.env()["HAIQU_API_KEY"],
        extra=("--metrics", f"127.0.0.1:{port}", "--max-lag", "1"),
    )  # fmt: skip
    key = relay.add_key("lab-pc-3")
    relay.start()
    try:
        lab = tmp_path / "lab"
        seed_store(lab, 5)
        assert cli(lab, "sync", env=relay.env_for_lab(key)).code == 0
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(url + "/readyz")[0] == 503, what="the relay past its max lag")
        yield url
    finally:
        relay.stop()


def close(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


def test_the_status_page_in_a_real_browser(tmp_path: Path, failing_relay: str) -> None:
    from PIL import Image

    dom = chromium(tmp_path, "--dump-dom", failing_relay + "/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "not ready: 5 undelivered" in html and "lab-pc-3" in html
    assert "<script" not in html.lower()

    shot = tmp_path / "status.png"
    run = chromium(tmp_path, "--window-size=1100,1300", f"--screenshot={shot}", failing_relay + "/")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 1300)
    # The dark header across the top, then the red banner: "not ready" is the first thing seen.
    assert close(image.getpixel((5, 5)), HEADER)
    banner_rows = [
        y
        for y in range(60, 260)
        if sum(close(image.getpixel((x, y)), BAD) for x in range(1100)) > 700
    ]
    assert banner_rows, "no red verdict banner near the top of the page"
    # Text was drawn (the figures, the table): far more than a blank page's few colours.
    assert len(image.getcolors(maxcolors=1 << 24) or []) > 50
