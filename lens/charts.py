"""Chart builders: pure functions from a LensResult to an Altair chart (no Streamlit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from lens.compare import aligned_difference, relative_depths
from lens.result import LensResult

SELECTION = "cell"
CELL_WIDTH = 54  # px per heatmap column: room for a short token label
# Sizes below are of the plotting area; axes and legends are added around it (Streamlit's
# default "fit" would squeeze the cells to make room for rotated token labels).
PAD = alt.AutoSizeParams(type="pad")


# Perceptually uniform, colour-blind-safe sequential scales (matplotlib's viridis, cividis
# and plasma), as evenly spaced stops. The chart interpolates them in RGB, exactly as
# fill_colors does, so each label's colour is chosen against the fill it really sits on.
SCHEMES: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"),
    "cividis": ("#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8678", "#a59c74", "#c3b369", "#fee838"),
    "plasma": ("#0d0887", "#5302a3", "#8b0aa5", "#b83289", "#db5c68", "#f48849", "#febd2a", "#f0f921"),
}
# Vega's "blueorange" diverging scheme (colour-blind safe), as its stops: differences are
# drawn from these so each label's colour is chosen against the fill Vega really draws.
DIVERGING = (
    "#134b85", "#2f78b3", "#5da2cb", "#9dcae1", "#d2e5ef", "#f2f0eb",
    "#fce0ba", "#fbbf74", "#e8932f", "#c5690d", "#994a07",
)  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """A quantity the heatmap can colour by. ``log`` scales run from rank 1 (the bright end)."""

    key: str
    title: str
    scheme: str
    log: bool = False
    needs_target: bool = False
    fixed_domain: tuple[float, float] | None = None


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("top1_prob", "Top-1 probability", "viridis", fixed_domain=(0.0, 1.0)),
        Metric("entropy", "Entropy (nats)", "cividis"),
        Metric("kl_to_final", "KL to final output (nats)", "plasma"),
        Metric("target_prob", "Target probability", "viridis", needs_target=True, fixed_domain=(0.0, 1.0)),
        Metric("target_rank", "Target rank (log scale)", "viridis", log=True, needs_target=True),
    )
}


def default_domain(metric: Metric, values: np.ndarray) -> tuple[float, float]:
    """The values the colour scale spans: the metric's fixed range, or 0 (rank 1) to the largest value."""
    if metric.fixed_domain is not None:
        return metric.fixed_domain
    if metric.log:
        return 1.0, max(float(np.max(values, initial=1.0)), 2.0)
    return 0.0, max(float(np.max(values, initial=0.0)), 1e-9)


def _scale_stops(metric: Metric, domain: tuple[float, float]) -> list[float]:
    """Domain values of the scheme's stops (log-spaced for ranks, which run reversed)."""
    n = len(SCHEMES[metric.scheme])
    low, high = domain
    if metric.log:
        return [float(v) for v in np.geomspace(high, low, n)]
    return [float(v) for v in np.linspace(low, high, n)]


def fill_colors(values: np.ndarray, metric: Metric, domain: tuple[float, float]) -> np.ndarray:
    """Each value's fill as [n, 3] RGB in 0..255, computed as Vega's piecewise RGB scale does."""
    low, high = domain
    values = np.asarray(values, dtype=float)
    if metric.log:
        position = (np.log(np.maximum(values, low)) - np.log(low)) / (np.log(high) - np.log(low))
        position = 1 - position
    else:
        position = (values - low) / (high - low)
    return ramp(SCHEMES[metric.scheme], position)


def ramp(colors: Sequence[str], position: np.ndarray) -> np.ndarray:
    """[n, 3] RGB at fractions 0..1 along evenly spaced colour stops, interpolated in RGB."""
    stops = np.asarray([_hex_rgb(c) for c in colors], dtype=float)
    scaled = np.clip(np.asarray(position, dtype=float), 0, 1) * (len(stops) - 1)
    index = np.minimum(np.floor(scaled).astype(int), len(stops) - 2)
    fraction = (scaled - index)[:, None]
    return np.rint(stops[index] + (stops[index + 1] - stops[index]) * fraction)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of [n, 3] sRGB colours in 0..255."""
    channel = np.asarray(rgb, dtype=float) / 255
    linear = np.where(channel <= 0.04045, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(luminance_a: np.ndarray, luminance_b: np.ndarray | float) -> np.ndarray:
    light, dark = np.maximum(luminance_a, luminance_b), np.minimum(luminance_a, luminance_b)
    return (light + 0.05) / (dark + 0.05)


def label_colors(fills: np.ndarray) -> np.ndarray:
    """Black or white, whichever contrasts more with each fill (one of them always reaches 4.58:1)."""
    luminance = relative_luminance(fills)
    white_wins = contrast_ratio(luminance, 1.0) >= contrast_ratio(luminance, 0.0)
    return np.where(white_wins, "white", "black")


def metric_values(result: LensResult, metric: str, target: int | None = None) -> np.ndarray:
    """The [rows, positions] values a metric colours the heatmap with."""
    if metric == "top1_prob":
        return result.top1_probs
    if metric in ("entropy", "kl_to_final"):
        return getattr(result, metric)
    if target is None:
        raise ValueError(f"Metric {metric!r} needs a target token.")
    index = result.target_index(target)
    return result.target_probs[index] if metric == "target_prob" else result.target_ranks[index]


def column_labels(result: LensResult) -> list[str]:
    """Unique x labels: position, then the input token with its whitespace visible."""
    return [f"{i} {tok}" for i, tok in enumerate(result.tokens)]


def heatmap_frame(
    result: LensResult,
    metric: str,
    target: int | None = None,
    window: tuple[int, int] | None = None,
    domain: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """One row per visible cell: its place, top-1 token, metric value, label colour and top-k for the tooltip.

    The colour scale spans the whole result (``domain``, or the metric's own), so moving
    the window never recolours a cell.
    """
    start, stop = window or (0, result.n_positions)
    frame = result.to_frame()
    frame = frame[(frame.position >= start) & (frame.position < stop)].copy()
    values = metric_values(result, metric, target)
    frame["value"] = values[frame.row.to_numpy(), frame.position.to_numpy()].astype(float)
    frame["column"] = np.asarray(column_labels(result), dtype=object)[frame.position.to_numpy()]
    frame["top1"] = frame.top1_token
    for k in range(result.top_k):
        frame[f"top {k + 1}"] = [
            f"{tok}  {p:.1%}" for tok, p in zip(frame[f"top{k + 1}_token"], frame[f"top{k + 1}_prob"], strict=True)
        ]
    info = METRICS[metric]
    fills = fill_colors(frame["value"].to_numpy(), info, domain or default_domain(info, values))
    frame["label_color"] = label_colors(fills)
    keep = ["row", "layer", "position", "column", "token", "top1", "value", "label_color"]
    return frame[keep + [f"top {k + 1}" for k in range(result.top_k)]].reset_index(drop=True)


def _grid(columns: Sequence[str], layers: Sequence[str], x_title: str, layer_axis: bool = True) -> alt.Chart:
    """A layer × position grid (output row on top) with no data: data goes on the layer, since
    Altair hashes per-layer frames slowly."""
    x = alt.X(
        "column:O",
        sort=list(columns),
        title=x_title,
        axis=alt.Axis(labelAngle=-40, labelLimit=120, labelOverlap=False),
    )
    return alt.Chart().encode(x=x, y=_layer_y(layers, layer_axis))


def _layer_y(layers: Sequence[str], axis: bool) -> alt.Y:
    return alt.Y("layer:O", sort=list(reversed(layers)), title="layer", axis=alt.Axis() if axis else None)


def heatmap_height(n_rows: int) -> int:
    return max(120, 26 * n_rows)


def heatmap(
    result: LensResult,
    metric: str = "top1_prob",
    *,
    target: int | None = None,
    window: tuple[int, int] | None = None,
    color_domain: tuple[float, float] | None = None,
    selected: tuple[int, int] | None = None,
    selectable: bool = True,
    title: str | None = None,
    axes_apart: bool = False,
) -> alt.LayerChart:
    """Rows are layers (output at the top), columns input tokens; each cell shows its top-1 guess.

    When ``selectable``, clicking a cell selects it (selection ``cell``, fields row and
    position) and ``selected`` is outlined; charts drawn together must not all be selectable.
    With ``axes_apart`` the chart has neither layer axis nor legend: a page that lets a wide
    heatmap scroll draws :func:`layer_axis` and :func:`colour_legend` outside the scrolling
    frame, so they stay in view wherever it is scrolled.
    """
    info = METRICS[metric]
    domain = color_domain or default_domain(info, metric_values(result, metric, target))
    initial = {"value": [{"row": selected[0], "position": selected[1]}]} if selected is not None else {}
    pick = alt.selection_point(name=SELECTION, fields=["row", "position"], on="click", toggle=False, **initial)
    frame = heatmap_frame(result, metric, target, window, domain)
    columns = list(frame.drop_duplicates("position").sort_values("position").column)
    tooltip = [
        alt.Tooltip("token:N", title="input token"),
        alt.Tooltip("layer:N", title="layer"),
        alt.Tooltip("value:Q", title=info.title, format=".3g"),
        *[alt.Tooltip(f"top {k + 1}:N") for k in range(result.top_k)],
    ]
    base = _grid(columns, result.layers, "input token (position)", layer_axis=not axes_apart)
    color = _metric_color(info, domain, legend=not axes_apart)
    cells = base.mark_rect(stroke="white", strokeWidth=0.5).encode(color=color, tooltip=tooltip)
    labels = base.mark_text(fontSize=11, limit=CELL_WIDTH - 4).encode(
        text="top1:N", fill=alt.Fill("label_color:N", scale=None), tooltip=tooltip
    )
    layers = [cells, labels]
    if selectable:
        # Labels sit on top of their cells; pages make them transparent to the pointer
        # (CSS in ui.page.style) so a click anywhere in a cell reaches the cell. The
        # selected cell gets a black and white double outline, visible on every fill.
        cells = cells.add_params(pick)
        outline = base.transform_filter(pick)
        layers = [
            cells,
            labels,
            outline.mark_rect(fill=None, stroke="black", strokeWidth=4),
            outline.mark_rect(fill=None, stroke="white", strokeWidth=1.5),
        ]
    chart = alt.layer(*layers, data=frame)
    width = max(300, CELL_WIDTH * len(columns))
    return chart.properties(width=width, height=heatmap_height(result.n_rows), title=title or "", autosize=PAD)


def _metric_color(info: Metric, domain: tuple[float, float], legend: bool = True) -> alt.Color:
    scale = alt.Scale(
        type="log" if info.log else "linear",
        domain=_scale_stops(info, domain),
        range=list(SCHEMES[info.scheme]),
        interpolate="rgb",
        clamp=True,
        nice=False,
        zero=False,
    )
    shown = alt.Legend(orient="top", gradientLength=220) if legend else None
    return alt.Color("value:Q", title=info.title, scale=scale, legend=shown)


def colour_legend(metric: str, domain: tuple[float, float]) -> alt.Chart:
    """The heatmap's colour scale on its own (drawn above a heatmap made with ``axes_apart``)."""
    info = METRICS[metric]
    stops = pd.DataFrame({"value": _scale_stops(info, domain)})
    return (
        alt.Chart(stops)
        .mark_point(opacity=0, size=0)
        .encode(color=_metric_color(info, domain))
        .properties(width=1, height=1, autosize=PAD)
    )


def layer_axis(layers: Sequence[str]) -> alt.Chart:
    """The heatmap's layer names on their own, as tall as its rows (drawn left of a heatmap made
    with ``axes_apart``, top-aligned: neither has a title or legend above its rows)."""
    return (
        alt.Chart(pd.DataFrame({"layer": list(layers)}))
        .mark_rect(opacity=0)
        .encode(y=_layer_y(layers, True))
        .properties(width=1, height=heatmap_height(len(layers)), autosize=PAD)
    )


def _with_label_limit(chart: alt.LayerChart, limit: float | alt.ExprRef) -> alt.LayerChart:
    """The chart with its text layers' labels cut (with an ellipsis) at ``limit`` pixels."""
    layers = []
    for layer in chart.layer:
        mark = layer.mark
        if (mark if isinstance(mark, str) else mark.type) == "text":
            options = {} if isinstance(mark, str) else mark.to_dict()
            layer = layer.copy(deep=False)
            layer.mark = alt.MarkDef(**{**options, "type": "text", "limit": limit})
        layers.append(layer)
    limited = chart.copy(deep=False)
    limited.layer = layers
    return limited


def fit_to_container(chart: alt.LayerChart, n_columns: int) -> alt.LayerChart:
    """A heatmap as wide as its page column: cells share the width, labels are cut to a cell.

    Draw with ``st.altair_chart(width="stretch")``; side-by-side runs then fit their columns
    at any screen width instead of overflowing them.
    """
    return stretched(_with_label_limit(chart, alt.ExprRef(f"max(0, width / {max(n_columns, 1)} - 6)")))


def stretched(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """The chart as wide as its page column (axes and legend included), for ``width="stretch"``."""
    return chart.properties(width="container", autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))


def labels_within_cells(chart: alt.LayerChart) -> alt.LayerChart:
    """A fixed-width heatmap whose cell labels end inside their cell (for image exports)."""
    n_columns = max(1, len(pd.unique(chart.data["column"]))) if isinstance(chart.data, pd.DataFrame) else 1
    width = chart.width if isinstance(chart.width, (int, float)) else 52 * n_columns
    return _with_label_limit(chart, max(0, width / n_columns - 6))


def difference_heatmap(
    a: LensResult,
    b: LensResult,
    metric: str,
    width: int,
    labels: tuple[str, str],
    targets: tuple[int | None, int | None] = (None, None),
) -> alt.LayerChart:
    """B − A of a metric over the last ``width`` positions of two runs of equal depth.

    Diverging blue–orange (colour-blind safe), centred on 0 with a symmetric domain, so
    near-white means no difference. Ranks are compared as log10(rank). Labels are black or
    white against the fill they sit on, with the precision the scale needs.
    """
    info = METRICS[metric]
    values_a, values_b = metric_values(a, metric, targets[0]), metric_values(b, metric, targets[1])
    if info.log:
        values_a, values_b = np.log10(np.maximum(values_a, 1)), np.log10(np.maximum(values_b, 1))
    diff = aligned_difference(values_a, values_b, width)
    tokens_a, tokens_b = a.tokens[-width:], b.tokens[-width:]
    columns = [
        f"{i - width} {ta}" if ta == tb else f"{i - width} {ta}|{tb}"
        for i, (ta, tb) in enumerate(zip(tokens_a, tokens_b, strict=True))
    ]
    rows, cols = np.meshgrid(np.arange(a.n_rows), np.arange(width), indexing="ij")
    frame = pd.DataFrame(
        {
            "row": rows.ravel(),
            "layer": np.asarray(a.layers, dtype=object)[rows.ravel()],
            "column": np.asarray(columns, dtype=object)[cols.ravel()],
            "value": diff.ravel(),
        }
    )
    bound = max(float(np.abs(diff).max()), 1e-6)
    fills = ramp(DIVERGING, (frame.value.to_numpy() + bound) / (2 * bound))
    frame["label"] = signed_labels(frame.value.to_numpy(), bound)
    frame["label_color"] = label_colors(fills)
    quantity = f"log10 {info.title.split(' (')[0].lower()}" if info.log else info.title
    title = f"Difference: {labels[1]} − {labels[0]}"
    base = _grid(columns, a.layers, "position from the end (A|B tokens)")
    color = alt.Color(
        "value:Q",
        title=f"Δ {quantity}",
        scale=alt.Scale(
            domain=list(np.linspace(-bound, bound, len(DIVERGING))), range=list(DIVERGING), interpolate="rgb"
        ),
        legend=alt.Legend(orient="top", gradientLength=220, format=signed_format(bound), values=[-bound, 0, bound]),
    )
    tooltip = ["layer:N", "column:N", alt.Tooltip("value:Q", title=f"Δ {quantity}", format="+.4~g")]
    cells = base.mark_rect(stroke="white", strokeWidth=0.5).encode(color=color, tooltip=tooltip)
    text = base.mark_text(fontSize=10, limit=46).encode(
        text="label:N", fill=alt.Fill("label_color:N", scale=None), tooltip=tooltip
    )
    return alt.layer(cells, text, data=frame).properties(
        width=max(300, 52 * width), height=heatmap_height(a.n_rows), title=title, autosize=PAD
    )


def signed_format(bound: float) -> str:
    """A d3 format with the precision the scale needs: two significant figures of its largest value.

    Fixed decimals down to ±0.01; below, scientific notation (a difference of ±0.0004 in
    fixed two decimals would read "+0.00" in every cell).
    """
    if bound >= 0.1:
        return "+.2f"
    if bound >= 0.01:
        return "+.3f"
    return "+.1e"


def signed_labels(values: np.ndarray, bound: float) -> list[str]:
    """Cell labels in :func:`signed_format`, exponents shortened ("+4.0e-4")."""
    spec = signed_format(bound)[1:]
    out = []
    for v in np.asarray(values, dtype=float):
        text = format(v, "+" + spec)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = "0" if v == 0 else f"{mantissa}e{int(exponent)}"
        out.append(text)
    return out


def export_title(heading: str, lines: Sequence[str]) -> alt.TitleParams:
    """The title an exported image carries: what it is, then model, prompt, lens and target."""
    return alt.TitleParams(heading, subtitle=list(lines), anchor="start", fontSize=15, subtitleFontSize=12, offset=14)


def comparison_figure(
    heatmaps: Sequence[alt.LayerChart], lines: Sequence[alt.TopLevelMixin], title: alt.TitleParams
) -> alt.VConcatChart:
    """The whole comparison in one image: heatmaps side by side, then the line charts."""
    row = alt.hconcat(*[_nestable(labels_within_cells(h)) for h in heatmaps], spacing=24).resolve_scale(
        color="independent"
    )
    return alt.vconcat(row, *[_nestable(c) for c in lines], spacing=30, title=title, autosize=PAD).resolve_scale(
        color="independent", shape="independent", strokeDash="independent"
    )


def _nestable(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """A copy that can sit inside a concatenation (only the top level may set autosize)."""
    inner = chart.copy(deep=False)
    inner.autosize = alt.Undefined
    return inner


def topk_frame(result: LensResult, row: int, position: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": np.arange(1, result.top_k + 1),
            "token": result.top_tokens[row, position],
            "probability": result.top_probs[row, position].astype(float),
        }
    )


def topk_bars(result: LensResult, row: int, position: int) -> alt.Chart:
    """The selected cell's top-k as horizontal bars, most likely first."""
    frame = topk_frame(result, row, position)
    title = alt.TitleParams(
        f"Top {result.top_k}: {result.layers[row]}", subtitle=f"after {position} {result.tokens[position]}"
    )
    bars = (
        alt.Chart()
        .mark_bar(color="#4c78a8")
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1.3]), axis=alt.Axis(format="%", values=[0, 0.5, 1])),
            y=alt.Y("token:N", sort=list(frame.token), title=None),
            tooltip=["rank:Q", "token:N", alt.Tooltip("probability:Q", format=".2%")],
        )
    )
    text = bars.mark_text(align="left", dx=3).encode(text=alt.Text("probability:Q", format=".1%"))
    return alt.layer(bars, text, data=frame).properties(
        width=200, height=max(120, 22 * result.top_k), title=title, autosize=PAD
    )


MEASURES = {"probability": "Probability", "log_probability": "Log-probability (nats)", "rank": "Rank (log scale)"}


def trajectory_frame(result: LensResult, position: int, measure: str = "probability") -> pd.DataFrame:
    """Long frame: one row per (tracked token, layer) at one position, from the result's targets."""
    records = []
    for t, name in enumerate(result.targets):
        for r, layer in enumerate(result.layers):
            prob = float(result.target_probs[t, r, position])
            value = {
                "probability": prob,
                "log_probability": float(np.log(max(prob, 1e-45))),
                "rank": int(result.target_ranks[t, r, position]),
            }[measure]
            records.append({"token": name, "row": r, "layer": layer, "value": value})
    return pd.DataFrame.from_records(records, columns=["token", "row", "layer", "value"])


def trajectory_chart(result: LensResult, position: int, measure: str = "probability", title: str = "") -> alt.Chart:
    """One line per tracked token across layers, bottom layer on the left."""
    frame = trajectory_frame(result, position, measure)
    return _lines(frame, result.layers, measure, color_field="token", color_title="token", title=title)


# Okabe & Ito's palette: told apart in the common colour-vision deficiencies. Lines also
# differ by point shape and dash, so no two are distinguished by colour alone. Its yellow
# is faint on white: Paul Tol's wine takes its place as the eighth.
LINE_COLORS = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#882255"]
LINE_SHAPES = [
    "circle",
    "square",
    "triangle-up",
    "diamond",
    "cross",
    "triangle-down",
    "triangle-right",
    "triangle-left",
]
LINE_DASHES = [[1, 0], [6, 3], [2, 2], [8, 3, 2, 3], [1, 0], [6, 3], [2, 2], [8, 3, 2, 3]]
MAX_LINES = len(LINE_COLORS)


def _line_style(field: str, title: str, names: Sequence[str], columns: int = 2) -> dict[str, alt.SchemaBase]:
    """Colour, point shape and dash pattern, all keyed on one field, with one legend whose labels are never cut."""
    domain = list(dict.fromkeys(names))
    # symbolOpacity: a translucent band drawn under a line would otherwise fade its legend symbol.
    legend = alt.Legend(
        orient="top", columns=columns, labelLimit=0, symbolStrokeWidth=2, symbolSize=90, symbolOpacity=1
    )
    n = len(domain)
    return {
        "color": alt.Color(
            f"{field}:N", title=title, scale=alt.Scale(domain=domain, range=_cycle(LINE_COLORS, n)), legend=legend
        ),
        "shape": alt.Shape(
            f"{field}:N", title=title, scale=alt.Scale(domain=domain, range=_cycle(LINE_SHAPES, n)), legend=legend
        ),
        "strokeDash": alt.StrokeDash(
            f"{field}:N", title=title, scale=alt.Scale(domain=domain, range=_cycle(LINE_DASHES, n)), legend=legend
        ),
    }


def _cycle(values: Sequence, n: int) -> list:
    return [values[i % len(values)] for i in range(max(n, 1))]


def _lines(
    frame: pd.DataFrame,
    layers: Sequence[str],
    measure: str,
    color_field: str,
    color_title: str,
    title: str,
    relative: bool = False,
    legend_columns: int = 2,
) -> alt.LayerChart:
    """Lines with a marker at every layer; ``relative`` puts rows at their depth fraction (column ``depth``)."""
    log = measure == "rank"
    y_scale = alt.Scale(type="log", reverse=True) if log else alt.Scale(zero=measure == "probability")
    y = alt.Y("value:Q", title=MEASURES[measure], scale=y_scale)
    tooltip = [f"{color_field}:N", "layer:N", alt.Tooltip("value:Q", format=".4g")]
    return styled_lines(
        frame, _depth_axis(layers, relative), y, color_field, color_title, tooltip, legend_columns
    ).properties(width=480, height=300, title=title, autosize=PAD)


def _depth_axis(layers: Sequence[str], relative: bool) -> alt.X:
    """Layers left to right, or (``relative``, column ``depth``) their fraction of the model's depth."""
    if relative:
        return alt.X(
            "depth:Q", title="relative depth (layer / number of layers; 1 = output)", scale=alt.Scale(domain=[0, 1])
        )
    return alt.X("layer:O", sort=list(layers), title="layer (bottom → output)", axis=alt.Axis(labelAngle=-40))


def styled_lines(
    frame: pd.DataFrame, x: alt.X, y: alt.Y, field: str, title: str | None, tooltip: list, legend_columns: int = 1
) -> alt.LayerChart:
    """One line per value of ``field``, told apart by colour, dash and marker, with one full legend."""
    style = _line_style(field, title, frame[field], legend_columns)
    base = alt.Chart().encode(x=x, y=y, color=style["color"], tooltip=tooltip)
    lines = base.mark_line(strokeWidth=2).encode(strokeDash=style["strokeDash"])
    points = base.mark_point(filled=True, size=60, opacity=1).encode(shape=style["shape"])
    return alt.layer(lines, points, data=frame)


def compare_trajectory_chart(
    results: Mapping[str, LensResult], target_index: int = 0, measure: str = "probability"
) -> alt.LayerChart:
    """The target's trajectory at each result's last position, one line per prompt or model.

    Results of different depth go on a relative-depth axis, so each output sits at 1.
    """
    frames = []
    for label, result in results.items():
        frame = trajectory_frame(result, result.n_positions - 1, measure)
        frame = frame[frame.token == result.targets[target_index]].assign(source=label)
        frame["depth"] = np.asarray(relative_depths(result.layers))[frame.row.to_numpy()]
        frame["target"] = result.targets[target_index]
        frames.append(frame)
    relative = len({tuple(r.layers) for r in results.values()}) > 1
    layers = max((r.layers for r in results.values()), key=len)
    names = {r.targets[target_index] for r in results.values()}
    title = "Target, last position" + (f": {names.pop()}" if len(names) == 1 else "")
    return _lines(
        pd.concat(frames, ignore_index=True),
        layers,
        measure,
        "source",
        "prompt / model",
        title=title,
        relative=relative,
        legend_columns=1,
    )


def divergence_chart(frame: pd.DataFrame, layers: Sequence[str], title: str, axis_title: str) -> alt.LayerChart:
    """Per-layer divergence lines; ``frame`` has columns pair, layer, value (pair names must be distinct)."""
    tooltip = ["pair:N", "layer:N", alt.Tooltip("value:Q", format=".4f")]
    y = alt.Y("value:Q", title=axis_title)
    return styled_lines(frame, _depth_axis(layers, False), y, "pair", "compared", tooltip).properties(
        width=520, height=280, title=title, autosize=PAD
    )


CORPUS_METRICS = {
    "cross_entropy": "Cross-entropy (nats/token)",
    "bits_per_byte": "Bits per byte",
    "top1_accuracy": "Top-1 accuracy",
    "top1_agreement": "Top-1 agreement with output",
    "kl_to_final": "KL to final output (nats)",
    "entropy": "Entropy (nats)",
}


def corpus_chart(frame: pd.DataFrame, metric: str) -> alt.LayerChart:
    """One corpus metric against depth; one line per ``source`` (model or lens) in the frame.

    Sources of different depth go on a relative-depth axis (each output at 1), as in Compare.
    """
    depths = frame.groupby("source", sort=False)["layer"].transform(lambda names: relative_depths(list(names)))
    data = frame.assign(depth=depths.astype(float))
    relative = data.groupby("source", sort=False).size().nunique() > 1
    layers = list(max((list(g.layer) for _, g in data.groupby("source", sort=False)), key=len))
    percent = metric.startswith("top1")
    # d3's bare "%" prints six decimals ("0.000000%") and "~g" writes 10 as "1e+1".
    y = alt.Y(f"{metric}:Q", title=CORPUS_METRICS[metric], axis=alt.Axis(format=".0%" if percent else ",~r"))
    tooltip = [
        "source:N",
        "layer:N",
        alt.Tooltip(f"{metric}:Q", format=".1%" if percent else ".4g"),
        alt.Tooltip("n_tokens:Q", format=","),
    ]
    return styled_lines(data, _depth_axis(layers, relative), y, "source", None, tooltip).properties(
        width=360, height=220, title=CORPUS_METRICS[metric], autosize=PAD
    )


def loss_chart(history: Sequence[float], title: str = "Training: mean KL to the output (nats)") -> alt.Chart:
    """A tuned lens's training curve, one point per step."""
    frame = pd.DataFrame({"step": np.arange(1, len(history) + 1), "kl": np.asarray(history, dtype=float)})
    return (
        alt.Chart(frame)
        .mark_line()
        .encode(
            x=alt.X("step:Q"), y=alt.Y("kl:Q", title="KL (nats)"), tooltip=["step:Q", alt.Tooltip("kl:Q", format=".4f")]
        )
        .properties(width=480, height=220, title=title, autosize=PAD)
    )


PROMPT_SET_SCALES = {
    "probability": "Probability (mean, 95% band)",
    "logit": "Logit (mean, 95% band)",
    "rank": "Rank (mean, 95% band; log scale)",
}
_MEASURE_NAMES = {
    "target_probability": "p(target)",
    "target_logit": "target logit",
    "target_rank": "target rank",
    "logit_difference": "logit target − contrast",
}


def measure_scale(measure: str) -> str:
    """Which of PROMPT_SET_SCALES a prompt-set measure is drawn on: measures on one chart share a y-axis."""
    if measure == "target_rank":
        return "rank"
    return "logit" if measure in ("target_logit", "logit_difference") else "probability"


def measure_name(measure: str) -> str:
    """A prompt-set measure as a legend shows it: "p(target)", "p(concept: flower)"."""
    return _MEASURE_NAMES.get(measure, f"p({measure})")


def prompt_set_frame(summaries: Mapping[str, pd.DataFrame], measures: Sequence[str]) -> pd.DataFrame:
    """The summaries' rows for ``measures``, each with its line's name and its band within the scale's range.

    ``summaries`` maps a source (a model) to ``PromptSetResult.to_frame()``; with more than
    one, line names start with the source. A t-interval can reach below 0 (probability) or
    1 (rank), which no value can: the band drawn stops there, the table keeps the interval.
    """
    frames = []
    for source, summary in summaries.items():
        part = summary[summary.measure.isin(measures)].copy()
        prefix = f"{source} · " if len(summaries) > 1 else ""
        part["series"] = prefix + part.group.astype(str) + " · " + part.measure.map(measure_name)
        part["source"] = source
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    low, high = {"probability": (0.0, 1.0), "rank": (1.0, np.inf)}.get(measure_scale(measures[0]), (-np.inf, np.inf))
    frame["band_low"] = frame.ci_low.clip(low, high)
    frame["band_high"] = frame.ci_high.clip(low, high)
    return frame


def prompt_set_chart(summaries: Mapping[str, pd.DataFrame], measures: Sequence[str], title: str = "") -> alt.LayerChart:
    """One line per group and measure (and source), the mean at every layer inside its 95% confidence band.

    ``measures`` share one scale (see :func:`measure_scale`). Lines differ by colour, marker
    and dash; sources of different depth go on a relative-depth axis, each output at 1.
    """
    scale = measure_scale(measures[0])
    frame = prompt_set_frame(summaries, measures)
    relative = len({tuple(s.layer_index.unique()) for s in summaries.values()}) > 1
    layers = list(dict.fromkeys(frame.sort_values("layer_index").layer))
    x = _depth_axis(layers, relative)
    y_scale = alt.Scale(type="log", reverse=True) if scale == "rank" else alt.Scale(zero=scale == "probability")
    y = alt.Y("mean:Q", title=PROMPT_SET_SCALES[scale], scale=y_scale)
    style = _line_style("series", "group · measure", frame.series, columns=1)  # a phone shows a whole column
    tooltip = [
        "series:N",
        "layer:N",
        alt.Tooltip("n:Q", title="prompts"),
        alt.Tooltip("mean:Q", format=".4g"),
        alt.Tooltip("ci_low:Q", title="95% CI low", format=".4g"),
        alt.Tooltip("ci_high:Q", title="95% CI high", format=".4g"),
        alt.Tooltip("median:Q", format=".4g"),
    ]
    base = alt.Chart().encode(x=x, color=style["color"])
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("band_low:Q", scale=y_scale), y2="band_high:Q")
    lines = base.mark_line(strokeWidth=2).encode(y=y, strokeDash=style["strokeDash"])
    points = base.mark_point(filled=True, size=60, opacity=1).encode(y=y, shape=style["shape"], tooltip=tooltip)
    return alt.layer(band, lines, points, data=frame).properties(width=480, height=300, title=title, autosize=PAD)
