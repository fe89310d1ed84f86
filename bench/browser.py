"""A Streamlit server and a headless Chromium, for the benchmarks and (through tests/browser_support.py) the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"  # a run has finished
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], root: Path = ROOT) -> Iterator[str]:
    """``streamlit run app.py`` in ``root`` on a free port with these environment variables; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    process = subprocess.Popen(
        command,
        cwd=root,
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
        raise RuntimeError("streamlit did not start within 60 s")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
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
