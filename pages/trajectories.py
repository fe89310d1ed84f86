"""How chosen tokens rise and fall across the layers at one position."""

import streamlit as st

from lens import charts
from ui import page

page.run_through_app()
st.title("Token trajectories")
with st.expander("What am I looking at?"):
    st.markdown(
        "Pick a position in your prompt and some candidate next tokens. Each line follows one token from the "
        "first layer (left) to the model's output (right): how likely each layer thinks it is, or where it "
        "ranks among all tokens (rank 1 is the favourite). A token that shoots up late was decided late."
    )

ctx = page.context()
result = ctx.result
position = st.selectbox(
    "Position",
    list(range(result.n_positions)),
    index=result.n_positions - 1,
    format_func=lambda i: f"{i}: {result.tokens[i]}  (guessing what comes next)",
    key="position",
    bind="query-params",
    help="The lens at this position predicts the token after it. The last position predicts the continuation.",
)
final_top = [int(i) for i in result.top_ids[-1, position, :5]]
typed = [ctx.settings.target] if ctx.settings.target else []
chosen = st.session_state.get("track") or []
candidates = list(dict.fromkeys([*final_top, *(int(i) for i in result.top_ids[:, position, :].ravel()), *chosen]))
tracked = st.multiselect(
    "Tokens to follow",
    candidates,
    default=final_top,
    format_func=ctx.model.token_name,
    key="track",
    bind="query-params",
    help="By default the output's five favourites at this position, plus the target typed in the sidebar.",
)
measure = page.measure_picker("measure")
if not tracked and not typed:
    st.info("Choose at least one token to follow.")
    st.stop()
traced = page.with_targets(page.query(ctx.settings), [*tracked, *typed], ctx.settings.top_k)
for warning in traced.warnings:
    st.warning(warning)
chart = charts.trajectory_chart(traced, position, measure, title=f"Position {position}: {result.tokens[position]}")
left, right = st.columns([3, 2])
left.altair_chart(chart, width="content")
table = charts.trajectory_frame(traced, position, measure).pivot(index="layer", columns="token", values="value")
right.dataframe(table.reindex(reversed(traced.layers)), height=min(600, 38 + 35 * traced.n_rows))
page.export_buttons(traced, chart, "trajectories")
