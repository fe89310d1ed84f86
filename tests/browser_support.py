"""A Streamlit server and a headless Chromium for the browser tests (shared by tests/test_browser*.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "artifacts" / "screenshots"
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
# The Lens page's heatmap (its legend and layer names are charts of their own) and the selected cell's bars.
HEATMAP = "[class*=st-key-heatmap_] [data-testid=stVegaLiteChart]"
CELL_BARS = ".st-key-cell_details [data-testid=stVegaLiteChart]"


def need(condition: bool, reason: str) -> None:
    """Skip in a user's clone without Chromium; in CI its absence is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def streamlit_server(env: dict[str, str]) -> Iterator[str]:
    """``streamlit run app.py`` on a free port with these environment variables; yields its URL."""
    need(shutil.which(CHROMIUM) is not None, f"needs Debian's chromium at {CHROMIUM}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("streamlit did not start within 60 s")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_idle(tab, timeout_ms: int = 180_000) -> None:
    """Until the script has finished, twice over a short pause (a run can trigger another)."""
    for _ in range(2):
        tab.wait_for_selector(IDLE, timeout=timeout_ms)
        tab.wait_for_timeout(400)
    tab.wait_for_selector(IDLE, timeout=timeout_ms)


def shoot(tab, name: str, full: bool = False) -> None:
    """Save a screenshot; ``full`` first makes the window as tall as the main area's content."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if full:
        size = tab.viewport_size
        height = tab.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
        tab.set_viewport_size({"width": size["width"], "height": min(max(height, 600), 6000)})
        tab.wait_for_timeout(500)
        tab.screenshot(path=str(SHOTS / f"{name}.png"))
        tab.set_viewport_size(size)
    else:
        tab.screenshot(path=str(SHOTS / f"{name}.png"))
