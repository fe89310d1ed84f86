"""Home page: the layer-by-position heatmap of the model's guesses."""

import streamlit as st

from lens import charts, typable_token
from ui import exports, running, state

WINDOW = 16

running.run_through_app()
choices = state.choices()
lens_name = "Tuned lens" if choices.lens_source else "Logit lens"
st.title(lens_name)
with st.expander("What am I looking at?"):
    st.markdown(
        "A language model reads your prompt one token at a time and, at every position, guesses the **next** "
        "token. It does so in stages (layers). The *logit lens* asks each layer: *if you had to answer now, "
        "what would you say?* (A *tuned lens* first passes each layer through a small learned translator.)\n\n"
        "- **Columns** are the tokens of your prompt (␣ marks a space).\n"
        "- **Rows** are layers, from the first (bottom) to the model's real output (top).\n"
        "- **Each cell** shows that layer's best guess for the token that comes *after* its column; "
        "the colour shows the measure you pick below. Hover for the top guesses; click a cell, or pick it "
        "with the layer and position boxes, for its bar chart."
    )

ctx = running.context()
result = ctx.result
metric = state.metric_picker("metric")
target = None
if charts.METRICS[metric].needs_target:
    if choices.target:
        result = running.with_targets(state.query(choices), [choices.target], choices.top_k)
        target = result.target_ids[0]
    else:
        st.info("Type a target token in the sidebar to colour by it; showing top-1 probability meanwhile.")
        metric = "top1_prob"
for warning in result.warnings:
    st.warning(warning)
default_bos = "the tokenizer's default" if choices.prepend_bos is None else "set in More settings"
st.caption(f"Reads a start token first: {'yes' if result.prepend_bos else 'no'} ({default_bos}).")

window = state.position_window(result, WINDOW) or (0, result.n_positions)
row, position = state.selected_cell(result, state.query(choices), window)
chart = charts.heatmap(result, metric, target=target, window=window, selected=(row, position))
# A wrapping row (ui/static/app.css): the selected cell's details sit beside the heatmap
# when both fit and below it otherwise, never over it; a heatmap wider than the page
# scrolls inside its own frame.
with st.container(key="lens_charts"):
    state.selectable_heatmap(chart, (row, position))
    with st.container(key="cell_details"):
        state.cell_picker(result, window, (row, position))
        st.altair_chart(charts.topk_bars(result, row, position), width="content")
if st.button("Why this token?", key="why", help="Which layers, heads and MLPs put the selected cell's top guess there"):
    cell = {"attr_row": result.layers[row], "attr_position": charts.column_labels(result)[position]}
    cell["attr_target"] = typable_token(ctx.model, int(result.top_ids[row, position, 0]))
    st.switch_page("pages/attribution.py", query_params=cell)  # the sidebar's own settings stay in the URL
exports.export_buttons(result, chart, "logit-lens")
