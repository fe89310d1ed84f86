"""A real browser on the Attribution page: Lens → "Why this token?" → heads → download.

Its own module-scoped server (the fixture from test_browser, instantiated for this module).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlparse

import pandas as pd
import pytest

from lens import attribute
from tests.browser_support import HEATMAP, shoot, wait_idle
from tests.test_browser import STORY, browser, server  # noqa: F401 - fixtures, instantiated for this module

pytestmark = pytest.mark.browser


def no_sideways_scroll(tab) -> bool:
    return tab.evaluate(
        "(() => { const m = document.querySelector('[data-testid=stMain]');"
        " return m.scrollWidth <= m.clientWidth + 1 && document.documentElement.scrollWidth <= innerWidth + 1; })()"
    )


def test_why_this_token_heads_and_download(browser, server, stories, tmp_path):  # noqa: F811
    tab = browser.new_page(viewport={"width": 1500, "height": 1400}, accept_downloads=True)
    tab.goto(f"{server}/?prompt={quote(STORY)}")
    tab.locator(HEATMAP).get_by_text("␣Lily").first.wait_for(timeout=90_000)
    wait_idle(tab)
    tab.get_by_role("button", name="Why this token?").click()
    tab.get_by_text("Attribution: why this token?").wait_for(timeout=60_000)
    tab.locator("[data-testid=stVegaLiteChart]").nth(2).wait_for(timeout=90_000)
    wait_idle(tab)
    expected = attribute(stories, STORY, position=-1, target=" Lily")
    summary = tab.get_by_text("Explaining the lens's logit of").inner_text()
    assert "␣Lily" in summary and f"{expected.logit:+.3f}" in summary
    query = parse_qs(urlparse(tab.url).query)
    assert urlparse(tab.url).path.endswith("/attribution")
    assert query.get("attr_target") == [" Lily"] and query.get("prompt") == [STORY], tab.url

    charts = tab.locator("[data-testid=stVegaLiteChart]")
    assert charts.count() == 3  # layers, heads, the strongest head's sources
    sources = charts.nth(2)
    first_head = re.search(r"(L\d H\d): where it looked", sources.text_content()).group(1)
    cells = charts.nth(1).locator("g.mark-rect.role-mark path")
    assert cells.count() == stories.n_layers * stories.cfg.n_heads
    cells.nth(3).click()
    tab.wait_for_function(
        "t => { const c = document.querySelectorAll('[data-testid=stVegaLiteChart]')[2];"
        " return c && c.textContent.includes(': where it looked') && !c.textContent.includes(t); }",
        arg=first_head,
        timeout=30_000,
    )
    wait_idle(tab)
    picked = parse_qs(urlparse(tab.url).query)["attr_head"][0]
    assert re.fullmatch(r"L\d H\d", picked) and f"{picked}: where it looked" in charts.nth(2).text_content()
    shoot(tab, "5-attribution", full=True)

    with tab.expect_download(timeout=30_000) as info:
        tab.get_by_role("button", name="CSV", exact=True).click()
    path = tmp_path / "attribution.csv"
    info.value.save_as(path)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["component", "layer", "head", "contribution"]
    assert frame.contribution.sum() == pytest.approx(expected.logit, rel=1e-5)
    tab.close()


@pytest.mark.parametrize("width", [390, 1920])
def test_attribution_page_fits_the_screen(browser, server, width):  # noqa: F811
    tab = browser.new_page(viewport={"width": width, "height": 900})
    tab.goto(f"{server}/attribution?prompt={quote(STORY)}&attr_target={quote(' Lily')}")
    tab.get_by_text("Explaining the lens's logit of").wait_for(timeout=90_000)
    tab.locator("[data-testid=stVegaLiteChart]").nth(2).wait_for(timeout=90_000)
    wait_idle(tab)
    assert tab.locator("[data-testid=stVegaLiteChart]").count() == 3
    assert no_sideways_scroll(tab)
    shoot(tab, f"6-attribution-{width}px", full=True)
    tab.close()
