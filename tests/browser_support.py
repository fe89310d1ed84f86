"""The benchmarks' Streamlit server and Chromium for the browser tests, skipped where they can't run."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

from bench import browser
from bench.browser import CHROMIUM, IDLE, wait_idle  # noqa: F401 - the tests' helpers too
from tests.conftest import ROOT

SHOTS = ROOT / "artifacts" / "screenshots"
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
    with browser.streamlit_server(env, ROOT) as url:
        yield url


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    pytest.importorskip("playwright.sync_api")
    with browser.chromium() as launched:
        yield launched


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
