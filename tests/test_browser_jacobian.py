"""A real browser on the Lenses page: a Jacobian-lens fit is cancelled mid-way, then one runs to the end
and Compare shows it beside the logit lens. Runs last (browser marker), on its own server and lens folder."""

from __future__ import annotations

import re

import pytest

from tests.browser_support import IDLE, chromium, shoot, streamlit_server

pytestmark = pytest.mark.browser
STORY = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def lens_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("lenses")


@pytest.fixture(scope="module")
def server(lens_folder):
    # The demo model (d_model 128), not stories260K (64): its fit of the sample's prompts lasts long enough to be
    # cancelled mid-way (stories260K's takes about 2 s on a quiet machine).
    with streamlit_server({"LENS_DEFAULT_MODEL": "demo", "LENS_CACHE_DIR": str(lens_folder)}) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as browser:
        yield browser


def test_fit_is_cancelled_then_fitted_and_compared(browser, server, lens_folder):
    tab = browser.new_page(viewport={"width": 1400, "height": 1200})
    tab.goto(f"{server}/lenses?lenses_kind=jacobian&prompt={STORY}")
    tab.wait_for_selector(IDLE, timeout=90_000)
    tab.get_by_role("button", name="Fit", exact=True).click()
    tab.get_by_text(re.compile(r"Prompt \d+ of \d+")).wait_for(timeout=120_000)
    shoot(tab, "jlens-fitting")
    tab.get_by_role("button", name="Cancel", exact=True).click()
    tab.get_by_text("Fitting was cancelled; nothing was saved.").wait_for(timeout=60_000)
    tab.wait_for_selector(IDLE, timeout=60_000)
    assert not list(lens_folder.rglob("*.pt"))

    tab.get_by_role("slider").first.focus()
    tab.keyboard.press("Home")  # 1 prompt
    tab.wait_for_selector(IDLE, timeout=60_000)
    tab.get_by_role("button", name="Fit", exact=True).click()
    tab.get_by_text("Fitted on 1 prompt and saved").wait_for(timeout=180_000)
    assert len(list(lens_folder.rglob("*.pt"))) == 1

    tab.goto(f"{server}/compare?compare_mode=lenses&prompt={STORY}")
    tab.wait_for_selector("[data-testid=stVegaLiteChart]", timeout=90_000)
    tab.wait_for_selector(IDLE, timeout=90_000)
    assert tab.get_by_text("KL to the output, layer by layer").count() == 1
    assert tab.locator("[data-testid=stVegaLiteChart]").count() == 6  # 2 heatmaps, difference, 3 line charts
    shoot(tab, "compare-lenses", full=True)
    tab.close()
