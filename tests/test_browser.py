"""A real browser on a real server: type, hover, click, switch pages, download.

Runs last (see conftest). Screenshots of every page go to artifacts/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from tests.conftest import ROOT, STORIES, require_shared

pytestmark = pytest.mark.browser
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
STORY = "Once upon a time, there was a little girl named"


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    require_shared()
    _need(shutil.which(CHROMIUM) is not None, f"needs Debian's chromium at {CHROMIUM}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LENS_DEFAULT_MODEL": str(STORIES), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
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
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def page(server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1400}, accept_downloads=True)
        tab.goto(server)
        tab.wait_for_selector("[data-testid=stApp][data-test-connection-state=CONNECTED]", timeout=60_000)
        yield tab
        browser.close()


def shoot(tab, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"))


def heatmap(tab):
    return tab.locator("[data-testid=stVegaLiteChart]").first


def test_type_prompt_and_see_the_heatmap(page):
    prompt = page.locator("[data-testid=stSidebar] textarea").first
    prompt.fill(STORY)
    prompt.press("Control+Enter")
    heatmap(page).get_by_text("␣Lily").first.wait_for(timeout=60_000)
    assert heatmap(page).locator("g.mark-rect path").count() >= 5 * 12
    page.wait_for_timeout(500)
    shoot(page, "1-lens")


def test_hover_shows_top_k_and_click_shows_bars(page):
    first = heatmap(page).locator("g.mark-rect path").nth(0)
    # Labels let the pointer through to their cell (the page's CSS); a real pointer over a
    # label must land on the cell, so Playwright's own hit test must pick the rect.
    first.hover()
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=10_000)
    assert "top 1" in tooltip.inner_text() and "%" in tooltip.inner_text()
    first.click()
    bars = page.locator("[data-testid=stVegaLiteChart]").nth(1)
    bars.get_by_text("Top 5: L4 (output)").wait_for(state="detached", timeout=20_000)
    title = bars.locator("text").evaluate_all("els => els.map(e => e.textContent)")
    assert any(t.startswith("Top 5: L") for t in title) and not any("(output)" in t for t in title)
    shoot(page, "2-lens-clicked")


def test_download_csv(page, tmp_path):
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name="CSV").click()
    path = tmp_path / "lens.csv"
    info.value.save_as(path)
    frame = pd.read_csv(path)
    last = frame[(frame.row == frame.row.max()) & (frame.position == frame.position.max())]
    assert last.top1_token.iloc[0] == "␣Lily"


def test_switch_pages(page):
    page.locator("[data-testid=stSidebarNavLink]", has_text="Trajectories").click()
    page.get_by_text("Token trajectories").wait_for(timeout=30_000)
    page.locator("[data-testid=stVegaLiteChart]").first.get_by_text("␣Lily").first.wait_for(timeout=60_000)
    page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)  # let the token picker and table finish drawing before the screenshot
    shoot(page, "3-trajectories")
    page.locator("[data-testid=stSidebarNavLink]", has_text="Compare").click()
    page.get_by_text("Jensen–Shannon divergence, last position").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid=stVegaLiteChart]").count() == 5  # two heatmaps, difference, two line charts
    page.set_viewport_size({"width": 1500, "height": 2600})
    page.wait_for_timeout(500)
    shoot(page, "4-compare")
    assert "prompt=" in page.url  # the view lives in the URL
