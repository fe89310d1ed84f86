"""Hostile link values in a real browser (issue 23): no link or image the app didn't make, no request elsewhere.

Every query parameter of every page gets markdown that would make a link, an image
fetched from another host, attacker-styled text and bare URLs GFM links by itself.
Once with the model left alone (so the pages run and show every other value), once
with the model itself hostile (so the page stops at its error).
"""

from __future__ import annotations

from urllib.parse import urlencode, urlparse

import pytest

from tests.browser_support import chromium, shoot, streamlit_server, wait_idle
from tests.conftest import STORIES, require_shared

pytestmark = pytest.mark.browser
HOST = "evil.example"
HOSTILE = (
    f"[Download the update](https://{HOST}/update.exe) ![x](https://{HOST}/pixel.png) "
    f":red[**Security alert**] https://{HOST}/login www.{HOST} <img src=https://{HOST}/raw.png>"
)
PARAMETERS = [
    "prompt",
    "target",
    "lens_kind",
    "tuned_lens",
    "jacobian_lens",
    "chat_template",
    "trim_prompt",
    "bos",
    "embed_row",
    "attn_rows",
    "top_k",
    "window",
    "cell",
    "metric",
    "measure",
    "position",
    "track",
    "example",
    "attr_target",
    "attr_contrast",
    "attr_row",
    "attr_position",
    "attr_head",
    "head_map",
    "compare_mode",
    "prompts",
    "model_b",
    "compare_follow",
    "compare_width",
    "compare_metric",
    "compare_pair",
    "compare_kl_on",
    "patch_clean",
    "patch_corrupted",
    "patch_target",
    "patch_contrast",
    "patch_point",
    "patch_metric",
    "patch_word",
    "patch_replacement",
    "set_example",
    "set_source",
    "set_text",
    "set_scale",
    "set_model_b",
    "corpus_source",
    "corpus_text",
    "corpus_model_b",
    "corpus_column",
    "train_source",
    "train_text",
    "train_steps",
    "lenses_kind",
    "jlens_prompts",
    "jlens_tokens",
]
STREAMLIT_ICON = "https://fonts.gstatic.com/s/i/short-term/release/materialsymbolsrounded/"
PAGES = ["", "trajectories", "attribution", "compare", "patch", "dataset", "prompt_set", "lenses"]


@pytest.fixture(scope="module")
def server():
    require_shared()
    with streamlit_server({"LENS_DEFAULT_MODEL": str(STORIES)}) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as browser:
        yield browser


def _visit(browser, url: str, shot: str) -> tuple[list[str], list[str], list[str], str]:
    """Links and images on the page once the script is idle, requests to any other host, and the main text."""
    tab = browser.new_page(viewport={"width": 1400, "height": 1200})
    server_host = urlparse(url).hostname
    elsewhere: list[str] = []

    def note(request) -> None:
        if urlparse(request.url).hostname not in (server_host, None):  # None: data: and blob: URLs
            elsewhere.append(request.url)

    tab.on("request", note)
    try:
        tab.goto(url)
        tab.wait_for_selector("[data-testid=stApp][data-test-connection-state=CONNECTED]", timeout=60_000)
        wait_idle(tab)
        links = tab.locator("a[href]").evaluate_all("els => els.map(e => e.href)")
        images = tab.locator("img[src]").evaluate_all("els => els.map(e => e.src)")
        shown = tab.locator("body").inner_text().replace("\u2060", "")  # the joiners that stop autolinks
        shoot(tab, shot)
        return links, images, elsewhere, shown
    finally:
        tab.close()


@pytest.mark.parametrize("page", PAGES)
def test_hostile_link_values_make_no_link_image_or_outside_request(server, browser, page):
    runs = {
        "values": {name: HOSTILE for name in PARAMETERS} | {"prompt": "Once upon a time " + HOSTILE},
        "model": {"model": HOSTILE, "prompt": "Once upon a time"},
    }
    for kind, parameters in runs.items():
        url = f"{server}/{page}?{urlencode(parameters)}"
        links, images, elsewhere, shown = _visit(browser, url, f"hostile-{page or 'lens'}-{kind}")
        assert not [link for link in links if HOST in (urlparse(link).hostname or "")], links
        assert not [source for source in images if HOST in (urlparse(source).hostname or "")], images
        # The one outside request is Streamlit's own, the same on every page: the page icon
        # (st.set_page_config's ":material/..." icon) drawn from Google's font CDN.
        assert not [u for u in elsewhere if not u.startswith(STREAMLIT_ICON) or HOST in u or "evil" in u], elsewhere
        if kind == "model":  # the refusal shows the id as typed, markdown and all
            assert "[Download the update](https://evil.example/update.exe)" in shown, shown[:500]
