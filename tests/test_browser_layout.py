"""Every page at phone, laptop and desktop widths, on a 12-layer GPT-2-shaped model: geometry and axe-core.

Runs last (see conftest): one server, one tab, pages opened by URL; each page is measured
at every width after one run (resizing reruns nothing). Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import urllib.parse

import pytest

from tests.browser_support import HEATMAP, chromium, shoot, streamlit_server, wait_idle
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
    "lenses": "lenses",
    "patch": "patch",
}
PROMPTS = {
    "13tok": "The Eiffel Tower is in the city of Paris, France",
    "40tok": "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face",
}
# The Patch page's corrupted prompts: a late word swapped, in as many tokens (cells before it need no run).
CORRUPTED = {
    PROMPTS["13tok"]: PROMPTS["13tok"].replace(" Paris", " Rome"),
    PROMPTS["40tok"]: PROMPTS["40tok"].removesuffix(" face") + " water",
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
    params = {"prompt": prompt} | ({"patch_corrupted": CORRUPTED[prompt]} if page == "patch" else {})
    tab.goto(f"{tab.base_url}/{PAGES[page]}?{urllib.parse.urlencode(params)}")
    wait_idle(tab)


def _overlaps(a: dict, b: dict) -> bool:
    return min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1 and (
        min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    )


def test_prompts_have_the_lengths_the_issue_names(gpt2_folder):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(gpt2_folder))
    assert [len(tokenizer(p)["input_ids"]) for p in PROMPTS.values()] == [13, 40]
    assert [len(tokenizer(CORRUPTED[p])["input_ids"]) for p in PROMPTS.values()] == [13, 40]
    assert all(CORRUPTED[p] != p for p in PROMPTS.values())


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
    assert tab.locator("[data-testid=stVegaLiteChart]").count() > 0 or page == "lenses"
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


# Whether each layer name and each colour legend is wholly in view: inside the window and not
# cut off by a frame that scrolls (or hides) what overflows it.
AXES_IN_VIEW = """() => {
  const shown = el => {
    const r = el.getBoundingClientRect();
    let left = Math.max(r.left, 0), right = Math.min(r.right, innerWidth);
    for (let a = el.parentElement; a; a = a.parentElement) {
      if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(a).overflowX)) {
        const b = a.getBoundingClientRect();
        left = Math.max(left, b.left); right = Math.min(right, b.right);
      }
    }
    return r.width > 0 && right - left >= r.width - 1;
  };
  const layer = /^L\\d+( \\(output\\))?$/;
  const labels = [...document.querySelectorAll('[data-testid=stVegaLiteChart] g.role-axis text')]
    .filter(t => layer.test(t.textContent));
  const legends = [...document.querySelectorAll('[data-testid=stVegaLiteChart] g.role-legend')];
  return {labels: labels.map(t => [t.textContent, shown(t)]), legends: legends.map(shown)};
}"""


# The selectable heatmap's frame, the leftmost cell wholly inside it (middle row), and the outline.
CELLS = """() => {
  const frame = document.querySelector('[class*=st-key-heatmap_] [data-testid=stVegaLiteChart]');
  const box = e => {
    const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};
  };
  const groups = frame.querySelectorAll('svg.marks g.mark-rect');
  const view = box(frame);
  const cells = [...groups[0].querySelectorAll('path')].map(box)
    .filter(c => c.left >= view.left + 2 && c.right <= view.right - 2);
  const tops = [...new Set(cells.map(c => Math.round(c.top)))].sort((a, b) => a - b);
  const row = tops[Math.floor(tops.length / 2)];
  const pick = cells.filter(c => Math.round(c.top) === row).sort((a, b) => a.left - b.left)[0];
  return {frame: view, pick, outline: groups.length > 1 ? box(groups[groups.length - 1]) : null};
}"""


def test_wide_heatmap_keeps_layer_names_legend_and_clicked_cell_in_view(tab):
    _open(tab, "lens", PROMPTS["40tok"])
    n_layers = 12
    problems = []
    for width in WIDTHS:
        tab.set_viewport_size({"width": width, "height": 900})
        tab.wait_for_timeout(700)
        seen = tab.evaluate(AXES_IN_VIEW)
        hidden = [name for name, shown in seen["labels"] if not shown]
        if len(seen["labels"]) != n_layers or hidden:
            problems.append(f"{width}px: layer names not all in view ({len(seen['labels'])} found; hidden {hidden})")
        if not seen["legends"] or not all(seen["legends"]):
            problems.append(f"{width}px: the colour legend is not wholly in view {seen['legends']}")
        # Scroll the heatmap to its left end, click a cell there: after the rerun it stays in view.
        tab.locator(HEATMAP).first.evaluate("f => f.scrollBy(-100000, 0)")
        tab.wait_for_timeout(300)
        before = tab.evaluate(CELLS)
        pick = before["pick"]
        tab.mouse.click((pick["left"] + pick["right"]) / 2, (pick["top"] + pick["bottom"]) / 2)
        tab.wait_for_timeout(500)
        wait_idle(tab)
        tab.wait_for_timeout(300)
        after = tab.evaluate(CELLS)
        shoot(tab, f"clicked-cell-{width}")
        outline, frame = after["outline"], after["frame"]
        if outline is None or outline["left"] < frame["left"] - 3 or outline["right"] > frame["right"] + 3:
            problems.append(f"{width}px: the clicked cell's outline {outline} is outside its frame {frame}")
        elif abs(outline["left"] - pick["left"]) > 4:
            moved = f"cell at {pick['left']}, now {outline['left']}"
            problems.append(f"{width}px: the heatmap scrolled on a click ({moved})")
    assert not problems, "\n".join(problems)


# Every axis, legend and title text of every chart: its text, computed fill and fill opacity.
CHART_TEXT = """() => [...document.querySelectorAll(
    ['g.role-axis', 'g.role-legend', 'g.role-title'].map(g => `[data-testid=stVegaLiteChart] ${g} text`).join(', '))]
  .filter(t => t.textContent.trim())
  .map(t => {
    const s = getComputedStyle(t);
    return [t.textContent, s.fill, parseFloat(s.fillOpacity) * parseFloat(s.opacity)];
  })
"""


def _contrast_on_white(fill: str, alpha: float) -> float:
    """WCAG contrast of a CSS rgb() fill, blended at ``alpha`` over the page's white."""
    channels = [float(v) for v in fill[fill.index("(") + 1 : fill.index(")")].split(",")[:3]]
    blended = [alpha * c + (1 - alpha) * 255 for c in channels]
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in blended]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 1.05 / (luminance + 0.05)


@pytest.mark.parametrize("page", [p for p in PAGES if p != "lenses"])  # no chart until a lens is made
def test_chart_text_contrast(tab, page):
    """Axis labels, layer and token names, legends and titles read at 4.5:1 or better, as drawn."""
    _open(tab, page, PROMPTS["13tok"])
    texts = tab.evaluate(CHART_TEXT)
    assert len(texts) > 10, texts  # the charts are there and their text is found
    # Labels an axis hides where they would overlap are drawn fully transparent: not shown, not measured.
    faint = [(text, fill, round(_contrast_on_white(fill, alpha), 2)) for text, fill, alpha in texts if alpha > 0]
    faint = [t for t in faint if t[2] < 4.5]
    assert not faint, faint[:10]
