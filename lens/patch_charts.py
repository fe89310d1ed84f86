"""Chart builder for activation patching: a pure function from a PatchResult to an Altair heatmap."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from lens.charts import CELL_WIDTH, PAD, SELECTION, _grid
from lens.patching import PatchResult

METRIC_TITLES = {"logit_diff": "logit difference", "prob": "probability"}


def column_labels(result: PatchResult) -> list[str]:
    """'3 ␣girl' where the prompts agree, '3 ␣girl→␣boy' where they differ: the swept positions, in order."""
    labels = []
    for p in result.positions:
        clean, corrupted = result.clean_tokens[p], result.corrupted_tokens[p]
        labels.append(f"{p} {clean}" if clean == corrupted else f"{p} {clean}→{corrupted}")
    return labels


def effect_frame(result: PatchResult) -> pd.DataFrame:
    """One row per cell: row (layer index), layer label, position, column label, effect, raw metric, cell text."""
    frame = result.to_frame()
    columns = dict(zip(result.positions.tolist(), column_labels(result), strict=True))
    frame.insert(0, "row", frame.pop("layer"))
    frame.insert(1, "layer", np.asarray(result.layer_labels, dtype=object)[frame.row.to_numpy()])
    frame["column"] = [columns[p] for p in frame.position]
    frame["label"] = ["" if np.isnan(v) else f"{v:.2f}" for v in frame.effect]
    return frame


def effect_heatmap(
    result: PatchResult,
    *,
    selected: tuple[int, int] | None = None,
    selectable: bool = True,
    title: str | None = None,
) -> alt.LayerChart:
    """Layers (bottom-up) by positions; each cell the effect of patching it, 0 the corrupted run and 1 the clean one.

    Diverging blue–orange (colour-blind safe) centred on 0 with a symmetric domain of at
    least [-1, 1], so white is "no effect" and full blue "all of the clean answer back".
    Clicking selects a cell (selection ``cell``, fields row and position), as on the lens heatmap.
    """
    frame = effect_frame(result)
    finite = frame.effect.to_numpy()[np.isfinite(frame.effect.to_numpy())]
    bound = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    quantity = METRIC_TITLES[result.metric]
    color = alt.Color(
        "effect:Q",
        title="effect (0 corrupted, 1 clean)",
        scale=alt.Scale(scheme="blueorange", domain=[-bound, bound], domainMid=0, reverse=True),
        legend=alt.Legend(orient="top", gradientLength=220),
    )
    tooltip = [
        alt.Tooltip("layer:N", title="layer"),
        alt.Tooltip("column:N", title="position"),
        alt.Tooltip("effect:Q", title="effect", format=".3f"),
        alt.Tooltip("raw:Q", title=quantity, format=".4g"),
    ]
    columns = column_labels(result)
    base = _grid(columns, result.layer_labels, "position (clean→corrupted where they differ)")
    cells = base.mark_rect(stroke="white", strokeWidth=0.5).encode(color=color, tooltip=tooltip)
    text = base.mark_text(fontSize=10, limit=CELL_WIDTH - 6).encode(
        text="label:N",
        color=alt.condition(f"abs(datum.effect) > {0.6 * bound}", alt.value("white"), alt.value("black")),
        tooltip=tooltip,
    )
    layers = [cells, text]
    if selectable:
        initial = {"value": [{"row": selected[0], "position": selected[1]}]} if selected is not None else {}
        pick = alt.selection_point(name=SELECTION, fields=["row", "position"], on="click", toggle=False, **initial)
        outline = base.transform_filter(pick)
        layers = [
            cells.add_params(pick),
            text,
            outline.mark_rect(fill=None, stroke="black", strokeWidth=4),
            outline.mark_rect(fill=None, stroke="white", strokeWidth=1.5),
        ]
    return alt.layer(*layers, data=frame).properties(
        width=max(300, CELL_WIDTH * len(columns)),
        height=max(120, 26 * result.n_layers),
        title=title or "",
        autosize=PAD,
    )
