"""Chart builders for attribution: pure functions from an Attribution to an Altair chart.

Charts take ``width="container"`` by default so they fill their column at any screen
width; exports pass a number (the PNG/SVG renderer has no container to fill).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from lens.attribution import Attribution

HEAD_SELECTION = "head"
# Okabe-Ito colours (safe for the common colour-vision deficiencies): a dark and a light
# pair for attention and MLP, a third pair for embeddings and biases; blue pushes up,
# orange pushes down.
COLOURS = {
    ("attention", "up"): "#0072B2",
    ("attention", "down"): "#D55E00",
    ("MLP", "up"): "#56B4E9",
    ("MLP", "down"): "#E69F00",
    ("other", "up"): "#009E73",
    ("other", "down"): "#CC79A7",
}
KIND_NAMES = {"attention": "attn", "MLP": "MLP", "other": "embed/bias"}
Width = int | str


def _what(attribution: Attribution) -> str:
    if attribution.contrast is None:
        return f"logit of {attribution.target}"
    return f"logit of {attribution.target} − {attribution.contrast}"


def layer_frame(attribution: Attribution) -> pd.DataFrame:
    """One bar per per-layer part: where it sits (row label), its kind, sign and colour key."""
    frame = attribution.by_layer()
    frame["row"] = [f"L{layer}" if layer >= 0 else part for part, layer in zip(frame.part, frame.layer, strict=True)]
    frame["direction"] = np.where(frame.contribution >= 0, "up", "down")
    frame["colour"] = [f"{KIND_NAMES[k]} {d}" for k, d in zip(frame.kind, frame.direction, strict=True)]
    return frame


def layer_bars(attribution: Attribution, width: Width = "container") -> alt.Chart:
    """Contribution of each layer's attention and MLP, side by side; embeddings and biases below.

    Bars to the right pushed the token up, to the left pushed it down; the bars add up
    to the logit in the title.
    """
    frame = layer_frame(attribution)
    order = list(dict.fromkeys(frame.row))[::-1]  # output end at the top, like the lens
    domain = [f"{KIND_NAMES[k]} {d}" for k, d in COLOURS]
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("row:N", sort=order, title=None),
            yOffset=alt.YOffset("kind:N", sort=["attention", "MLP", "other"]),
            x=alt.X("contribution:Q", title=f"contribution to the {_what(attribution)}"),
            color=alt.Color(
                "colour:N",
                scale=alt.Scale(domain=domain, range=list(COLOURS.values())),
                legend=alt.Legend(orient="top", title=None, columns=2, labelLimit=120),
            ),
            tooltip=["part:N", alt.Tooltip("contribution:Q", format="+.4f")],
        )
        .properties(
            width=width,
            height=max(160, 26 * len(order)),
            title=alt.TitleParams(f"By layer: total {attribution.logit:+.3f}", anchor="start"),
        )
    )


def head_frame(attribution: Attribution) -> pd.DataFrame:
    frame = attribution.to_frame()
    heads = frame[(frame.component == "attn") & (frame["head"] >= 0)].copy()
    heads["label"] = [f"L{layer} H{head}" for layer, head in zip(heads.layer, heads["head"], strict=True)]
    return heads.reset_index(drop=True)


def head_heatmap(attribution: Attribution, selected: tuple[int, int] | None = None, width: Width = "container"):
    """Layer × head contributions on a diverging scale centred on zero; click a head to select it.

    The selection is named ``head`` with fields layer and head.
    """
    frame = head_frame(attribution)
    bound = max(float(frame.contribution.abs().max()), 1e-9) if len(frame) else 1.0
    layers = sorted(frame.layer.unique(), reverse=True)
    initial = {"value": [{"layer": selected[0], "head": selected[1]}]} if selected else {}
    pick = alt.selection_point(
        name=HEAD_SELECTION, fields=["layer", "head"], on="click", toggle=False, empty=False, **initial
    )
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head"),
            y=alt.Y("layer:O", sort=layers, title="layer"),
            color=alt.Color(
                "contribution:Q",
                scale=alt.Scale(scheme="blueorange", domain=[-bound, bound], reverse=True),
                legend=alt.Legend(orient="top", title="contribution", gradientLength=160),
            ),
            stroke=alt.condition(pick, alt.value("black"), alt.value("white")),
            strokeWidth=alt.condition(pick, alt.value(2.5), alt.value(0.5)),
            tooltip=["label:N", alt.Tooltip("contribution:Q", format="+.4f")],
        )
        .add_params(pick)
        .properties(width=width, height=max(120, 24 * len(layers)), title=alt.TitleParams("By head", anchor="start"))
    )


def source_bars(pattern: pd.DataFrame, label: str, limit: int = 24, width: Width = "container") -> alt.Chart:
    """Where a head looked: its attention weight on each source position (the ``limit`` largest, in order)."""
    shown = pattern.nlargest(limit, "weight").sort_values("position") if len(pattern) > limit else pattern
    shown = shown.assign(source=[f"{p} {t}" for p, t in zip(shown.position, shown.token, strict=True)])
    note = f" (the {limit} largest of {len(pattern)})" if len(pattern) > limit else ""
    return (
        alt.Chart(shown)
        .mark_bar(color="#0072B2")
        .encode(
            y=alt.Y("source:N", sort=list(shown.source), title="source token"),
            x=alt.X("weight:Q", title="attention weight", scale=alt.Scale(domain=[0, 1])),
            tooltip=["source:N", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(
            width=width,
            height=max(100, 20 * len(shown)),
            title=alt.TitleParams(f"{label}: where it looked{note}", anchor="start"),
        )
    )
