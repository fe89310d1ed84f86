"""A real browser on Compare and Trajectories: rapid downloads that all arrive, links that reproduce.

Runs last (browser marker). One module-scoped server, like tests/test_browser.py.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.browser_support import IDLE as READY
from tests.test_browser import STORY, browser, server  # noqa: F401 - fixtures, instantiated for this module

pytestmark = pytest.mark.browser


def _open(browser, url: str):  # noqa: F811 - the fixture's value, passed on
    tab = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
    tab.goto(url)
    tab.wait_for_selector("[data-testid=stVegaLiteChart]", timeout=90_000)
    tab.wait_for_selector(READY, timeout=90_000)
    return tab


def _download_all(tab) -> dict[str, bytes]:
    """Prepare the images, then click CSV, JSON, PNG and SVG 0.3 s apart; the files by extension."""
    tab.get_by_role("button", name="Prepare PNG and SVG").click()
    tab.get_by_role("button", name="SVG", exact=True).wait_for(timeout=60_000)
    tab.wait_for_selector(READY, timeout=60_000)
    downloads = []
    tab.on("download", lambda download: downloads.append(download))
    for name in ("CSV", "JSON", "PNG", "SVG"):
        tab.get_by_role("button", name=name, exact=True).click()
        tab.wait_for_timeout(300)
    deadline = time.monotonic() + 30
    while len(downloads) < 4 and time.monotonic() < deadline:
        tab.wait_for_timeout(200)
    files = {d.suggested_filename.rsplit(".", 1)[1]: Path(d.path()).read_bytes() for d in downloads}
    assert set(files) == {"csv", "json", "png", "svg"}, [d.suggested_filename for d in downloads]
    return files


def test_lens_downloads_hold_the_typed_target_and_a_title(browser, server):  # noqa: F811
    tab = _open(browser, f"{server}/?prompt={STORY}&target=+Lily")  # coloured by top-1 probability
    files = _download_all(tab)
    assert "prob[␣Lily]" in pd.read_csv(io.BytesIO(files["csv"])).columns
    assert json.loads(files["json"])["targets"] == ["␣Lily"]
    svg = files["svg"].decode()
    assert "stories260K" in svg and "Once upon a time" in svg and "logit lens" in svg
    tab.close()


def test_rapid_downloads_all_arrive_and_hold_every_run(browser, server):  # noqa: F811
    tab = _open(browser, f"{server}/compare?prompt={STORY}&target=+Lily")
    files = _download_all(tab)
    table = pd.read_csv(io.BytesIO(files["csv"]))
    assert table.run.nunique() == 2 and set(table.target) == {"␣Lily"}
    assert len(json.loads(files["json"])["runs"]) == 2
    assert files["png"].startswith(b"\x89PNG")
    svg = files["svg"].decode()
    assert "Compare" in svg and "Lily" in svg and svg.count("<svg") >= 1
    tab.close()


def test_trajectories_link_in_a_fresh_browser_reproduces_the_tokens(browser, server):  # noqa: F811
    tab = _open(browser, f"{server}/trajectories?prompt={STORY}")
    chart_tokens = "els => [...new Set(els.map(e => e.textContent))]"
    picker = tab.locator("[data-testid=stMultiSelect]")
    picker.locator("input").click()
    for _ in range(3):  # add three more tokens to the five favourites
        tab.locator("[role=option]").first.click()
        tab.wait_for_selector(READY, timeout=60_000)
        picker.locator("input").click()
    tab.keyboard.press("Escape")
    tab.wait_for_timeout(1500)
    tab.wait_for_selector(READY, timeout=60_000)
    url = tab.url
    assert "track=" in url
    legend = tab.locator("[data-testid=stVegaLiteChart] .role-legend-label text").evaluate_all(chart_tokens)
    tab.close()
    fresh = browser.new_context(viewport={"width": 1400, "height": 1400})
    again = fresh.new_page()
    again.goto(url)
    again.wait_for_selector("[data-testid=stVegaLiteChart] .role-legend-label text", timeout=90_000)
    again.wait_for_selector(READY, timeout=60_000)
    reopened = again.locator("[data-testid=stVegaLiteChart] .role-legend-label text").evaluate_all(chart_tokens)
    assert len(legend) == 8 and sorted(reopened) == sorted(legend)
    fresh.close()


def test_prompt_set_downloads_hold_the_summary_and_a_title(browser, server):  # noqa: F811
    tab = _open(browser, f"{server}/prompt_set?set_scale=rank")
    files = _download_all(tab)
    table = pd.read_csv(io.BytesIO(files["csv"]))
    assert {"model", "layer", "group", "measure", "n", "mean", "ci_low", "ci_high"} <= set(table.columns)
    assert set(table.group) == {"names", "phrases"} and (table.n == 6).all()
    result = json.loads(files["json"])["runs"][0]["result"]
    assert len(result["per_prompt"]) == 12 * 5 and result["errors"] == []
    svg = files["svg"].decode()
    assert "Prompt set: rank by layer" in svg and "stories260K" in svg and "12 prompts in 2 groups" in svg
    tab.close()
