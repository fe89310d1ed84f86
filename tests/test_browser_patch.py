"""A real browser on the Patch page: a link opens the sweep, a click picks a cell, downloads carry the sweep.

Its own module-scoped server (the fixtures from test_browser, instantiated for this module).
"""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs, urlencode, urlparse

import pandas as pd
import pytest

from lens import patch
from tests.browser_support import shoot, wait_idle
from tests.test_browser import STORY, browser, server  # noqa: F401 - fixtures, instantiated for this module
from tests.test_browser_compare import _download_all

pytestmark = pytest.mark.browser
CORRUPTED = "Once upon a time, there was a little boy named"


def test_link_click_a_cell_and_download(browser, server, stories):  # noqa: F811
    tab = browser.new_page(viewport={"width": 1500, "height": 1400}, accept_downloads=True)
    params = {"prompt": STORY, "patch_clean": STORY, "patch_corrupted": CORRUPTED, "patch_target": " Lily"}
    tab.goto(f"{server}/patch?{urlencode(params)}")
    tab.get_by_text("The corrupted run with").wait_for(timeout=120_000)
    tab.locator("[data-testid=stVegaLiteChart]").nth(1).wait_for(timeout=90_000)
    wait_idle(tab)
    expected = patch(stories, STORY, CORRUPTED, target=" Lily")
    heading = tab.get_by_text("The corrupted run with").inner_text()
    top_right = f"L{stories.n_layers - 1}"
    assert top_right in heading, heading  # the default cell: the last layer at the last position

    cells = tab.locator("[data-testid=stVegaLiteChart]").first.locator("g.mark-rect.role-mark path")
    assert cells.count() >= expected.raw.size
    cells.nth(len(expected.positions) * 2 + 10).click()  # layer 2 from the bottom of the data, position 10
    tab.wait_for_function("() => new URLSearchParams(location.search).get('cell') !== null", timeout=30_000)
    tab.wait_for_function("t => !document.body.innerText.includes(t)", arg=heading.splitlines()[0], timeout=60_000)
    wait_idle(tab)
    query = parse_qs(urlparse(tab.url).query)
    assert query["cell"] == ["2,10"]
    assert "L2 " in tab.get_by_text("The corrupted run with").inner_text()
    assert query["patch_corrupted"] == [CORRUPTED]
    shoot(tab, "7-patch", full=True)

    files = _download_all(tab)
    frame = pd.read_csv(io.BytesIO(files["csv"]))
    assert list(frame.columns) == ["layer", "position", "clean_token", "corrupted_token", "raw", "effect"]
    assert frame.effect.to_numpy() == pytest.approx(expected.effect.ravel(), abs=1e-5)
    assert json.loads(files["json"])["corrupted"] == CORRUPTED
    svg = files["svg"].decode()
    assert "Activation patching" in svg and "Corrupted" in svg and "little boy" in svg
    tab.close()
