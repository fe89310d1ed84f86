"""Line charts as Vega draws them: depths line up, legends are whole, lines differ by more than colour."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from lens import charts


def _svg(chart) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_json())


def _texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def _points(svg: str) -> list[tuple[str, float]]:
    """(aria label, x) of every point marker."""
    found = re.finditer(r'<path aria-label="([^"]*)"[^>]*transform="translate\(([-\d.]+),([-\d.]+)\)"', svg)
    return [(m.group(1), float(m.group(2))) for m in found]


def _corpus_source(name: str, n_blocks: int) -> pd.DataFrame:
    layers = [f"L{i}" for i in range(n_blocks - 1)] + [f"L{n_blocks - 1} (output)"]
    values = {metric: np.linspace(3.0, 1.0, n_blocks) for metric in charts.CORPUS_METRICS}
    return pd.DataFrame({"layer": layers, "n_tokens": 100, **values}).assign(source=name)


def test_corpus_overlay_puts_outputs_of_different_depth_together_with_whole_legend():
    names = ["bars-gpt2-small-shaped-random-model-folder", "demo · tuned lens"]
    frame = pd.concat([_corpus_source(names[0], 12), _corpus_source(names[1], 6)], ignore_index=True)
    svg = _svg(charts.corpus_chart(frame, "cross_entropy"))
    texts = _texts(svg)
    assert all(name in texts for name in names), texts  # no "bars-g…"
    points = _points(svg)
    assert len(points) == 18
    right_end = max(x for _, x in points)
    # Each model's output is drawn at the right end; the demo's L2 (half way) under GPT-2's L5.
    outputs = [x for label, x in points if "(output)" in label]
    assert len(outputs) == 2 and all(abs(x - right_end) < 0.5 for x in outputs), outputs
    xs = sorted({round(x, 1) for _, x in points})
    assert len(xs) == 12  # the demo's 6 depths fall on 6 of GPT-2's 12
    assert len(set(re.findall(r'stroke-dasharray="([^"]*)"', svg))) == 2  # dashes, not colour alone


def test_divergence_legend_names_each_line_whole_with_dashes():
    layers = [f"L{i}" for i in range(5)] + ["L5 (output)"]
    pairs = [f"#{i} The Eiffel Tower is in the city of v{'x' * i}" for i in (2, 3, 4)]
    frame = pd.DataFrame(
        [
            {"pair": p, "layer": layer, "value": float(i + j)}
            for i, p in enumerate(pairs)
            for j, layer in enumerate(layers)
        ]
    )
    svg = _svg(charts.divergence_chart(frame, layers, "JS", "bits"))
    texts = _texts(svg)
    assert all(p in texts for p in pairs), texts
    assert len(set(re.findall(r'stroke-dasharray="([^"]*)"', svg))) == 3
    shapes = {m for m in re.findall(r'aria-roledescription="point"[^>]*d="([^"]{0,12})', svg)}
    assert len(shapes) == 3


def test_eight_lines_are_all_visible_on_white():
    rgb = np.array([charts._hex_rgb(c) for c in charts.LINE_COLORS[-1:]])
    assert charts.contrast_ratio(charts.relative_luminance(rgb), 1.0).min() >= 3.0  # WCAG non-text contrast
