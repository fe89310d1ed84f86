"""Attribution: which layers, heads and MLPs put a token where the lens shows it."""

from __future__ import annotations

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

import re

import streamlit as st

import lens
from lens import attribution_charts as charts
from lens import charts as lens_charts
from lens import provenance, safe_csv, typable_token
from ui import cached, exports, reproduce, running, state
from ui.escape import code, plain


def draw(chart, extra: int, **kwargs):
    """A column-wide chart. Streamlit squeezes stretched charts to a default height, so the
    plot's own height plus ``extra`` pixels for its title, legend and axes is passed on."""
    return st.altair_chart(chart, width="stretch", height=int(chart.height) + extra, **kwargs)


def keep_valid(key: str, options) -> None:
    """Drop a remembered choice the current prompt no longer offers (a shorter prompt, other rows)."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


st.title("Attribution: why this token?")
st.markdown(
    "**How much each part of the model pushed this word up or down at this point.** Every layer's attention "
    "heads and MLP write into the model's running state; the lens reads that state. Here the lens's score "
    "(logit) for one token at one cell is split into those writes, and the parts add up exactly to it."
)
with st.expander("How is this computed?"):
    st.markdown(
        "This is *direct logit attribution*. The lens divides the state by its size before reading it (the final "
        "norm); that size is taken from the real state at this cell and held fixed, so each part can be read on "
        "its own and the parts sum to the lens's logit. A part's bar is what it writes directly: a head that "
        "matters only by steering later layers shows up in those layers instead. With a contrast token, the "
        "bars explain the gap between the two tokens' logits."
    )

ctx = running.context(needs_local_weights="Attribution")
result, model = ctx.result, ctx.model
positions = lens_charts.column_labels(result)  # "13 ␣named": the URL holds this label
keep_valid("attr_row", result.layers)
keep_valid("attr_position", positions)
left, middle, right, far = st.columns(4)
row = left.selectbox(
    "Row (layer)",
    result.layers,
    index=result.n_rows - 1,
    key="attr_row",
    bind="query-params",
    help="Which layer's reading to explain; the top row is the model's real output.",
)
position_label = middle.selectbox(
    "Position",
    positions,
    index=result.n_positions - 1,
    key="attr_position",
    bind="query-params",
    help="The guess made after this input token.",
)
position = positions.index(position_label)
row_index = result.layers.index(row)
top_guess = typable_token(model, int(result.top_ids[row_index, position, 0]))
# One target: the sidebar's, unless this box names another token to explain on this page only.
sidebar_target = ctx.choices.target
typed_target = right.text_input(
    "Token to explain (this page only)",
    key="attr_target",
    bind="query-params",
    placeholder=sidebar_target or top_guess,
    help="Empty: the sidebar's target token, or the lens's top guess at this cell when none is typed there. "
    "A token here is explained on this page only; the other pages keep following the sidebar's. "
    "'#123' is token id 123.",
)
explained_token = typed_target or sidebar_target or top_guess
contrast = far.text_input(
    "Contrast token (optional)",
    key="attr_contrast",
    bind="query-params",
    placeholder="e.g. ' Tom'",
    help="Explain why the target beat this token: the bars then split the difference of their logits.",
)

query = state.query(ctx.choices)
try:
    running.check_length(model, query)
    with st.spinner("Splitting the logit into the model's parts…", show_time=True):
        writes = cached.cell_writes(query, row, position)
    attribution = writes.attribute(
        model, state.parse_token(explained_token), state.parse_token(contrast) if contrast.strip() else None
    )
except lens.LensError as exc:
    running.show_error(str(exc))
    st.stop()
if typed_target and sidebar_target and state.parse_token(typed_target) != state.parse_token(sidebar_target):
    st.caption(
        ":material/info: This page explains the token in its own box, not the sidebar's target; "
        "clear the box to explain the sidebar's target here too."
    )

what = code(attribution.target) + (f" − {code(attribution.contrast)}" if attribution.contrast else "")
shown = "logit difference" if attribution.contrast else "logit"
st.markdown(
    f"Explaining the lens's {shown} of {what} at row **{plain(row)}**, after **{plain(position_label)}**: "
    f"**{attribution.logit:+.3f}**"
    + (f" (after the model's soft-cap: {attribution.softcapped_logit:+.3f})" if attribution.softcapped_logit else "")
)
for note in attribution.notes:
    st.caption(f":material/info: {plain(note)}")

bars_column, heads_column = st.columns(2)
with bars_column:
    draw(charts.layer_bars(attribution), 240)
heads = charts.head_frame(attribution)
head_labels = list(heads.label)
keep_valid("attr_head", head_labels)
head = st.session_state.get("attr_head") or (
    heads.loc[heads.contribution.abs().idxmax(), "label"] if len(heads) else None
)
with heads_column:
    if head_labels:
        selected = tuple(int(n) for n in re.findall(r"\d+", head))
        event = draw(
            charts.head_heatmap(attribution, selected),
            200,
            on_select="rerun",
            selection_mode=charts.HEAD_SELECTION,
            key="head_map",
        )
        clicked = (event or {}).get("selection", {}).get(charts.HEAD_SELECTION) or []
        if clicked:
            label = f"L{int(clicked[0]['layer'])} H{int(clicked[0]['head'])}"
            if label != head:
                st.session_state["attr_head"] = label
                st.rerun()
    else:
        st.info("This model's attention is split by layer only (see the note above), so there is no head map.")

if head_labels:
    head = st.selectbox(
        "Head",
        head_labels,
        index=None if "attr_head" in st.session_state else head_labels.index(head),
        key="attr_head",
        bind="query-params",
        help="Click a cell of the head map, or pick here. The head with the largest part is picked first.",
    )
    layer_number, head_number = (int(n) for n in re.findall(r"\d+", head))
    try:
        pattern = cached.head_attention(query, layer_number, head_number, position)
    except lens.LensError as exc:
        running.show_error(str(exc))
    else:
        draw(charts.source_bars(pattern, head), 90)

st.subheader("What each part promotes and suppresses")
st.caption("Each part's write read through the unembedding on its own: the tokens it pushes most up and down.")
by_layer = attribution.by_layer()
contributions = dict(zip(by_layer.part, by_layer.contribution, strict=True))
contributions |= dict(zip(heads.label, heads.contribution, strict=True))
promoted_parts = [p for p in by_layer.part if not p.endswith("bias")] + ([head] if head_labels else [])
table = writes.promoted(model, k=5, parts=promoted_parts)
table.insert(1, "contribution", [contributions[p] for p in table.part])
st.dataframe(table, hide_index=True, width="stretch")

explained = attribution.writes
target_named = attribution.target + (f" − {attribution.contrast}" if attribution.contrast else "")
lines = exports.describe_run(explained.model_name, explained.lens_kind, explained.prompt, [target_named])
run = provenance.Run(query.model_name, tuple(explained.token_ids), query.prompt, query.lens_source)
view = provenance.View(
    "attribution",
    (run,),
    points=tuple(ctx.choices.points),
    row=row,
    position=position,
    target=attribution.target_id,
    contrast=attribution.contrast_id,
)
exports.buttons(
    "attribution",
    safe_csv(attribution.to_frame()).encode(),
    reproduce.with_provenance(attribution.to_json(), view),
    exports.titled(charts.layer_bars(attribution, width=560), f"Attribution at {explained.row}", lines),
    csv_help="One row per part (embedding, head, MLP, biases): its contribution; they add up to the logit.",
    json_help="The parts with their context: model, prompt, cell, target and contrast.",
)
reproduce.offer(view)
