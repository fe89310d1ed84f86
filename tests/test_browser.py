"""A real browser on a real server (stories260K): type, hover, click, pick, switch pages, reopen links.

Runs last (see conftest). Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

import pandas as pd
import pytest

from tests.browser_support import CELL_BARS, HEATMAP, chromium, shoot, streamlit_server, wait_idle
from tests.conftest import STORIES, require_shared

pytestmark = pytest.mark.browser
STORY = "Once upon a time, there was a little girl named"


@pytest.fixture(scope="module")
def server():
    require_shared()
    with streamlit_server({"LENS_DEFAULT_MODEL": str(STORIES)}) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def page(server, browser):
    tab = browser.new_page(viewport={"width": 1500, "height": 1400}, accept_downloads=True)
    tab.goto(server)
    tab.wait_for_selector("[data-testid=stApp][data-test-connection-state=CONNECTED]", timeout=60_000)
    yield tab
    tab.close()


def heatmap(tab):
    return tab.locator(HEATMAP)


def heatmap_state(tab) -> dict:
    """What the heatmap shows: every cell's fill, every label, and the outlined cell's box."""
    chart = heatmap(tab)
    return {
        "fills": chart.locator("g.mark-rect")
        .first.locator("path")
        .evaluate_all("els => els.map(e => e.getAttribute('fill'))"),
        "labels": chart.locator("g.mark-text text").evaluate_all("els => els.map(e => e.textContent)"),
        "outlined": chart.locator("g.mark-rect")
        .nth(1)
        .locator("path")
        .evaluate_all("els => els.map(e => e.getAttribute('transform') + e.getAttribute('d'))"),
        "bars": tab.locator(CELL_BARS).locator("text").evaluate_all("els => els.map(e => e.textContent)"),
    }


def test_type_prompt_and_see_the_heatmap(page):
    prompt = page.locator("[data-testid=stSidebar] textarea").first
    prompt.fill(STORY)
    prompt.press("Control+Enter")
    heatmap(page).get_by_text("␣Lily").first.wait_for(timeout=60_000)
    assert heatmap(page).locator("g.mark-rect").first.locator("path").count() >= 5 * 12
    wait_idle(page)
    shoot(page, "1-lens")


def test_hover_shows_top_k_and_click_shows_bars(page):
    first = heatmap(page).locator("g.mark-rect path").nth(0)
    # Labels let the pointer through to their cell (the page's CSS); a real pointer over a
    # label must land on the cell, so Playwright's own hit test must pick the rect.
    first.hover()
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=10_000)
    assert "top 1" in tooltip.inner_text() and "%" in tooltip.inner_text()
    background = tooltip.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background in ("rgb(255, 255, 255)", "rgba(255, 255, 255, 1)")  # opaque
    first.click()
    bars = page.locator(CELL_BARS)
    bars.get_by_text("Top 5: L4 (output)").wait_for(state="detached", timeout=20_000)
    wait_idle(page)
    title = bars.locator("text").evaluate_all("els => els.map(e => e.textContent)")
    assert any(t.startswith("Top 5: L") for t in title) and not any("(output)" in t for t in title)
    # The keyboard picker follows the click, and the link holds the cell.
    layer = page.get_by_role("combobox", name="Cell: layer").input_value()
    assert f"Top 5: {layer}" in title, (layer, title)
    assert "cell=" in page.url
    shoot(page, "2-lens-clicked")


def test_keyboard_picker_selects_a_cell_and_focus_is_visible(page):
    picker = page.get_by_role("combobox", name="position")
    picker.focus()
    ring = picker.evaluate("e => [getComputedStyle(e).outlineStyle, parseFloat(getComputedStyle(e).outlineWidth)]")
    assert ring[0] == "solid" and ring[1] >= 2, ring
    page.keyboard.type("1 ␣Once")
    page.keyboard.press("Enter")
    wait_idle(page)
    subtitle = page.locator(CELL_BARS).locator("text").evaluate_all("els => els.map(e => e.textContent)")
    assert "after 1 ␣Once" in subtitle, subtitle
    assert "cell=0%2C1" in page.url, page.url
    link = page.locator("[data-testid=stPageLink-NavLink]").nth(1)
    link.focus()
    outline = link.evaluate("e => [getComputedStyle(e).outlineStyle, parseFloat(getComputedStyle(e).outlineWidth)]")
    assert outline[0] == "solid" and outline[1] >= 2, outline


def test_link_reopens_the_same_view(page, browser):
    """A saved URL, opened in a fresh browser context, shows the same heatmap and the same cell."""
    page.locator("[data-testid=stSelectbox]", has_text="Colour by").click()
    page.get_by_role("option", name="Entropy (nats)").click()
    wait_idle(page)
    before = heatmap_state(page)
    url = page.url
    assert "cell=" in url and "metric=" in url
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    fresh = context.new_page()
    fresh.goto(url)
    heatmap(fresh).get_by_text("␣Lily").first.wait_for(timeout=60_000)
    wait_idle(fresh)
    after = heatmap_state(fresh)
    context.close()
    assert after == before, url


def test_hand_written_link_keeps_every_value_after_one_interaction(server, browser):
    """Issue 22: a link written by hand, in id form, still holds every value after a click (and a typed target)."""
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    tab = context.new_page()

    def url_values() -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(urlparse(tab.url).query).items()}

    written = {"model": "demo", "metric": "entropy", "top_k": "7", "bos": "on", "prompt": STORY}
    tab.goto(f"{server}/?{urlencode(written)}")
    heatmap(tab).locator("g.mark-rect path").first.wait_for(timeout=90_000)
    wait_idle(tab)
    heatmap(tab).locator("g.mark-rect path").nth(3).click()
    wait_idle(tab)
    after = url_values()
    assert {k: after.get(k) for k in written} == written and "cell" in after, tab.url

    written = {"compare_mode": "models", "model_b": "demo", "compare_metric": "entropy", "compare_measure": "rank"}
    tab.goto(f"{server}/compare?{urlencode(written | {'prompt': STORY})}")
    tab.get_by_text("One prompt, two models").first.wait_for(timeout=60_000)
    wait_idle(tab)
    target = tab.locator("[data-testid=stSidebar] input[aria-label='Target token']")
    target.fill(" Lily")
    target.press("Enter")
    wait_idle(tab)
    after = url_values()
    context.close()
    assert {k: after.get(k) for k in written} == written and after.get("target") == " Lily", after


def test_download_csv(page, tmp_path):
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name="CSV").click()
    path = tmp_path / "lens.csv"
    info.value.save_as(path)
    frame = pd.read_csv(path)
    last = frame[(frame.row == frame.row.max()) & (frame.position == frame.position.max())]
    assert last.top1_token.iloc[0] == "␣Lily"


def test_switch_pages(page):
    page.locator("[data-testid=stPageLink-NavLink]", has_text="Trajectories").click()
    page.get_by_text("Token trajectories").wait_for(timeout=30_000)
    page.locator("[data-testid=stVegaLiteChart]").first.get_by_text("␣Lily").first.wait_for(timeout=60_000)
    page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=30_000)
    wait_idle(page)
    shoot(page, "3-trajectories")
    page.locator("[data-testid=stPageLink-NavLink]", has_text="Compare").click()
    page.get_by_text("Jensen–Shannon divergence from #1").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid=stVegaLiteChart]").count() == 5  # two heatmaps, difference, two line charts
    wait_idle(page)
    shoot(page, "4-compare", full=True)
    assert "prompt=" in page.url  # the view lives in the URL


def test_first_contact_draws_no_legacy_page_list(server, browser):
    """A fresh session on a sub-page URL never shows Streamlit's file-name page list."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    seen = []
    tab.goto(f"{server}/dataset")
    for _ in range(20):
        seen.append(tab.locator("[data-testid=stSidebarNav]").count())
        tab.wait_for_timeout(150)
    wait_idle(tab)
    links = tab.locator("[data-testid=stPageLink-NavLink]").all_inner_texts()
    context.close()
    assert not any(seen), "Streamlit's own page list was drawn"
    names = [t.split("\n")[-1] for t in links]
    assert names == ["Lens", "Trajectories", "Attribution", "Compare", "Patch", "Dataset", "Prompt sets", "Lenses"]
