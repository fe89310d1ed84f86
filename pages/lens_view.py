"""Home page: the layer-by-position heatmap of the model's guesses."""

import streamlit as st

from lens import charts
from lens.attribution import token_text
from ui import page

WINDOW = 12

page.run_through_app()
st.title("Logit lens")
with st.expander("What am I looking at?"):
    st.markdown(
        "A language model reads your prompt one token at a time and, at every position, guesses the **next** "
        "token. It does so in stages (layers). The *logit lens* asks each layer: *if you had to answer now, "
        "what would you say?*\n\n"
        "- **Columns** are the tokens of your prompt (␣ marks a space).\n"
        "- **Rows** are layers, from the first (bottom) to the model's real output (top).\n"
        "- **Each cell** shows that layer's best guess for the token that comes *after* its column; "
        "the colour shows the measure you pick below. Hover for the top guesses, click a cell for a bar chart."
    )

ctx = page.context()
result = ctx.result
metric = page.metric_picker("metric")
target = None
if charts.METRICS[metric].needs_target:
    if ctx.settings.target:
        result = page.with_targets(page.query(ctx.settings), [ctx.settings.target], ctx.settings.top_k)
        target = result.target_ids[0]
    else:
        st.info("Type a target token in the sidebar to colour by it; showing top-1 probability meanwhile.")
        metric = "top1_prob"
for warning in result.warnings:
    st.warning(warning)

window = page.position_window(result, WINDOW)
default_cell = (result.n_rows - 1, result.n_positions - 1)
row, position = page.selected_cell(result, default_cell)
chart = charts.heatmap(result, metric, target=target, window=window, selected=(row, position))
left, right = st.columns([5, 2])
with left:
    event = st.altair_chart(chart, on_select="rerun", selection_mode=charts.SELECTION, key="heatmap", width="content")
    page.remember_cell(event)
with right:
    st.altair_chart(charts.topk_bars(result, *page.selected_cell(result, default_cell)), width="content")
if st.button("Why this token?", key="why", help="Which layers, heads and MLPs put the selected cell's top guess there"):
    cell = {"attr_row": result.layers[row], "attr_position": charts.column_labels(result)[position]}
    cell["attr_target"] = token_text(ctx.model, int(result.top_ids[row, position, 0]))
    st.switch_page("pages/attribution.py", query_params=cell)  # the sidebar's own settings stay in the URL
page.export_buttons(result, chart, "logit-lens")
