"""Every page at phone, laptop and desktop widths, on a 12-layer GPT-2-shaped model: geometry and axe-core.

Runs last (see conftest): one server, one tab, pages opened by URL; each page is measured
at every width after one run (resizing reruns nothing). Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import urllib.parse

import pytest

from tests.browser_support import chromium, shoot, streamlit_server, wait_idle
from tests.conftest import GPT2_TOKENIZER, require_shared

pytestmark = pytest.mark.browser
WIDTHS = (390, 1024, 1280, 1400, 1920)
PAGES = {
    "lens": "",
    "trajectories": "trajectories",
    "attribution": "attribution",
    "compare": "compare",
    "dataset": "dataset",
    "prompt_set": "prompt_set",
    "tuned": "tuned_lens",
}
PROMPTS = {
    "13tok": "The Eiffel Tower is in the city of Paris, France",
    "40tok": "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face",
}

# Each chart's visible box: its frame when the frame scrolls sideways on its own, else what
# it draws (the canvas or SVG may spill out of a frame that doesn't scroll).
GEOMETRY = """() => {
  const box = r => ({left: r.left, right: r.right, top: r.top, bottom: r.bottom});
  const main = document.querySelector('[data-testid=stMain]');
  const charts = [...document.querySelectorAll('[data-testid=stVegaLiteChart]')].map(frame => {
    const drawn = frame.querySelector('canvas, svg.marks') || frame;
    const style = getComputedStyle(frame);
    const scrolls = ['auto', 'scroll'].includes(style.overflowX) && frame.scrollWidth > frame.clientWidth + 1;
    const r = (scrolls ? frame : drawn).getBoundingClientRect();
    return {scrolls, ...box(r)};
  }).filter(c => c.right - c.left > 0 && c.bottom - c.top > 0);
  return {
    main: box(main.getBoundingClientRect()),
    mainScrolls: main.scrollWidth > main.clientWidth + 1,
    bodyScroll: document.body.scrollWidth, docScroll: document.documentElement.scrollWidth, width: innerWidth,
    charts, exceptions: document.querySelectorAll('[data-testid=stException]').length,
  };
}"""


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """GPT-2 small's shape with random weights and the real tokenizer, saved once."""
    require_shared()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("gpt2-shape")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tab(gpt2_folder, tmp_path_factory):
    env = {"LENS_DEFAULT_MODEL": str(gpt2_folder), "LENS_CACHE_DIR": str(tmp_path_factory.mktemp("lens-cache"))}
    with streamlit_server(env) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.base_url = url
        yield page


def _open(tab, page: str, prompt: str) -> None:
    tab.set_viewport_size({"width": 1280, "height": 900})
    tab.goto(f"{tab.base_url}/{PAGES[page]}?{urllib.parse.urlencode({'prompt': prompt})}")
    wait_idle(tab)


def _overlaps(a: dict, b: dict) -> bool:
    return min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1 and (
        min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    )


def test_prompts_have_the_lengths_the_issue_names(gpt2_folder):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(gpt2_folder))
    assert [len(tokenizer(p)["input_ids"]) for p in PROMPTS.values()] == [13, 40]


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("page", list(PAGES))
def test_layout_at_every_width(tab, page, prompt):
    _open(tab, page, PROMPTS[prompt])
    problems = []
    for width in WIDTHS:
        tab.set_viewport_size({"width": width, "height": 900})
        tab.wait_for_timeout(700)
        g = tab.evaluate(GEOMETRY)
        shoot(tab, f"layout-{page}-{prompt}-{width}", full=True)
        where = f"{page} {prompt} {width}px"
        if g["exceptions"]:
            problems.append(f"{where}: an exception is shown")
        if max(g["bodyScroll"], g["docScroll"]) > g["width"] or g["mainScrolls"]:
            problems.append(f"{where}: the page scrolls sideways ({g['bodyScroll']}, {g['docScroll']} > {g['width']})")
        for i, chart in enumerate(g["charts"]):
            if chart["left"] < g["main"]["left"] - 1 or chart["right"] > g["main"]["right"] + 1:
                problems.append(f"{where}: chart {i} runs out of the main area {chart} {g['main']}")
            for j, other in enumerate(g["charts"][i + 1 :], start=i + 1):
                if _overlaps(chart, other):
                    problems.append(f"{where}: charts {i} and {j} overlap")
    assert tab.locator("[data-testid=stVegaLiteChart]").count() > 0 or page == "tuned"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", list(PAGES))
def test_axe_finds_no_serious_violation(tab, page):
    from axe_playwright_python.sync_playwright import Axe

    _open(tab, page, PROMPTS["13tok"])
    results = Axe().run(tab)
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("critical", "serious")
    ]
    assert not serious, serious
