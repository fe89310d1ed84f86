"""Heatmap colours: every cell label is readable on the fill the chart really draws."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from lens import charts, run_lens

METRICS = list(charts.METRICS)


def _luminance(rgb) -> np.ndarray:
    """WCAG 2 relative luminance, written out again here so the test doesn't trust the code under test."""
    c = np.asarray(rgb, dtype=float) / 255
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[..., 0] + 0.7152 * c[..., 1] + 0.0722 * c[..., 2]


def _contrast(a, b) -> np.ndarray:
    la, lb = _luminance(a), _luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@pytest.mark.parametrize("metric", METRICS)
def test_label_contrast_over_the_whole_colour_range(metric):
    info = charts.METRICS[metric]
    domain = (1.0, 50_257.0) if info.log else (info.fixed_domain or (0.0, 7.3))
    values = np.geomspace(*domain, 4001) if info.log else np.linspace(*domain, 4001)
    fills = charts.fill_colors(values, info, domain)
    labels = charts.label_colors(fills)
    label_rgb = np.where((labels == "white")[:, None], WHITE, BLACK)
    ratios = _contrast(fills, label_rgb)
    assert ratios.min() >= 4.5, (metric, values[ratios.argmin()], fills[ratios.argmin()], ratios.min())
    assert len({tuple(f) for f in fills}) > 100  # a real gradient, not one flat colour


def test_scales_are_perceptually_ordered():
    """Sequential and colour-blind safe: lightness rises monotonically along every scheme."""
    for name, stops in charts.SCHEMES.items():
        rgb = np.array([[int(s[i : i + 2], 16) for i in (1, 3, 5)] for s in stops])
        assert np.all(np.diff(_luminance(rgb)) > 0), name


def _rendered(chart) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Cell fills and label fills as Vega itself draws them (SVG from vl-convert)."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(chart.to_json())
    cells_group = svg[svg.index('class="mark-rect') : svg.index('class="mark-text')]
    fills = [tuple(int(v) for v in m) for m in re.findall(r'fill="rgb\((\d+), (\d+), (\d+)\)"', cells_group)]
    text_group = svg[svg.index('class="mark-text') :]
    text_group = text_group[: text_group.index("</g>")]
    labels = re.findall(r'<text[^>]*fill="(#000|#fff|black|white)"', text_group)
    return fills, ["white" if f in ("#fff", "white") else "black" for f in labels]


@pytest.mark.parametrize("metric", METRICS)
def test_labels_contrast_with_the_fill_vega_draws(stories, metric):
    result = run_lens(stories, "Once upon a time, there was a little girl named", top_k=3, targets=[" Lily"])
    chart = charts.heatmap(result, metric, target=result.target_ids[0], selectable=False)
    fills, labels = _rendered(chart)
    frame = charts.heatmap_frame(result, metric, result.target_ids[0])
    assert len(fills) == len(labels) == len(frame)
    info = charts.METRICS[metric]
    expected = charts.fill_colors(frame.value.to_numpy(), info, charts.default_domain(info, frame.value.to_numpy()))
    assert np.abs(np.asarray(fills) - expected).max() <= 1  # Python computes the fill Vega draws
    label_rgb = np.where((np.asarray(labels) == "white")[:, None], WHITE, BLACK)
    assert _contrast(np.asarray(fills), label_rgb).min() >= 4.5


def _rendered_labels(chart) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cell fills, label fills (RGB) and label texts of a heatmap as Vega draws it."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(chart.to_json())
    cells_group = svg[svg.index('class="mark-rect') : svg.index('class="mark-text')]
    fills = [tuple(int(v) for v in m) for m in re.findall(r'fill="rgb\((\d+), (\d+), (\d+)\)"', cells_group)]
    text_group = svg[svg.index('class="mark-text') :]
    text_group = text_group[: text_group.index("</g>")]
    labels = re.findall(r'<text[^>]*fill="(#000|#fff|black|white)"[^>]*>([^<]*)</text>', text_group)
    label_rgb = [WHITE if colour in ("#fff", "white") else BLACK for colour, _ in labels]
    return np.asarray(fills), np.asarray(label_rgb), [text for _, text in labels]


PROMPTS = ("Once upon a time, there was a little girl named", "Once upon a time, there was a little boy named")


@pytest.mark.parametrize("metric", METRICS)
def test_difference_labels_are_readable_and_say_the_difference(stories, metric):
    a, b = (run_lens(stories, p, top_k=3, targets=[" Lily"]) for p in PROMPTS)
    width = 6
    chart = charts.difference_heatmap(a, b, metric, width, ("A", "B"), (a.target_ids[0], b.target_ids[0]))
    fills, label_rgb, texts = _rendered_labels(chart)
    assert len(fills) == len(texts) == a.n_rows * width
    ratios = _contrast(fills, label_rgb)
    assert ratios.min() >= 4.5, (metric, fills[ratios.argmin()], ratios.min())
    # Each label reads back as its cell's difference, computed here independently.
    values_a, values_b = (charts.metric_values(r, metric, r.target_ids[0]) for r in (a, b))
    if charts.METRICS[metric].log:
        values_a, values_b = np.log10(values_a), np.log10(values_b)
    diff = (values_b[:, -width:].astype(float) - values_a[:, -width:].astype(float)).ravel()
    shown = np.array([float(t.replace("−", "-")) for t in texts])
    assert np.abs(shown - diff).max() <= 0.01 * np.abs(diff).max() + 1e-12


def test_tiny_differences_keep_their_precision(stories):
    """A scale spanning ±0.0004 must not read "+0.00" in every cell."""
    a = run_lens(stories, PROMPTS[0], top_k=3, targets=[" Lily"])
    rng = np.random.default_rng(0)
    shift = rng.uniform(-4e-4, 4e-4, a.target_probs.shape).astype(np.float32)
    b = dataclasses.replace(a, target_probs=a.target_probs + shift)
    chart = charts.difference_heatmap(a, b, "target_prob", 6, ("A", "B"), (a.target_ids[0], b.target_ids[0]))
    fills, label_rgb, texts = _rendered_labels(chart)
    shown = np.array([float(t) for t in texts])
    diff = (b.target_probs[0, :, -6:].astype(float) - a.target_probs[0, :, -6:].astype(float)).ravel()
    assert len(set(texts)) > len(texts) // 2
    assert np.abs(shown - diff).max() <= 0.05 * np.abs(diff).max()
    assert _contrast(fills, label_rgb).min() >= 4.5
