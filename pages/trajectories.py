"""How chosen tokens rise and fall across the layers at one position."""

import streamlit as st

from lens import charts
from ui import exports, running, state

running.run_through_app()
st.title("Token trajectories")
with st.expander("What am I looking at?"):
    st.markdown(
        "Pick a position in your prompt and some candidate next tokens. Each line follows one token from the "
        "first layer (left) to the model's output (right): how likely each layer thinks it is, or where it "
        "ranks among all tokens (rank 1 is the favourite). A token that shoots up late was decided late."
    )

ctx = running.context()
result = ctx.result
vocab = ctx.model.d_vocab


def favourites(position: int) -> list[int]:
    """The output's five favourites at a position: what the page follows by default."""
    return [int(i) for i in result.top_ids[-1, position, :5]]


def follow_new_position() -> None:
    """A new position follows that position's favourites (as the help text promises)."""
    position = st.session_state.get("position")
    if position is not None and 0 <= position < result.n_positions:
        st.session_state["track"] = favourites(position)


if st.session_state.get("position") not in range(result.n_positions):  # a shorter prompt than before
    st.session_state.pop("position", None)
position = state.linked_choice(
    st.selectbox,
    "Position",
    list(range(result.n_positions)),
    key="position",
    what="position",
    name=lambda i: f"{i}: {result.tokens[i]}  (guessing what comes next)",
    default=result.n_positions - 1,
    on_change=follow_new_position,
    help="The lens at this position predicts the token after it. The last position predicts the continuation. "
    "Changing it follows that position's five favourites.",
)
# Followed tokens live in the URL as token ids (``track=11,42``): display labels, which a
# bound multiselect would store, are not unique and can't be typed into a link.
if "track" not in st.session_state:
    named = [t.strip() for t in st.query_params.get("track", "").split(",") if t.strip()]
    linked = [int(t) for t in named if t.isdigit() and int(t) < vocab]
    unusable = [t for t in named if not (t.isdigit() and int(t) < vocab)]
    if unusable:
        state.warn(
            f"The link's tokens to follow {', '.join(unusable)} aren't token ids of this model (0 to {vocab - 1}); "
            + ("following the others." if linked else "following the output's favourites.")
        )
    if len(linked) > charts.MAX_LINES:
        state.warn(f"The link names {len(linked)} tokens to follow; following the first {charts.MAX_LINES}.")
    st.session_state["track"] = linked[: charts.MAX_LINES] or favourites(position)
chosen = [int(t) for t in st.session_state["track"] if int(t) < vocab]  # another model may have fewer tokens
st.session_state["track"] = chosen
candidates = list(
    dict.fromkeys([*favourites(position), *(int(i) for i in result.top_ids[:, position, :].ravel()), *chosen])
)
tracked = st.multiselect(
    "Tokens to follow",
    candidates,
    format_func=ctx.model.token_name,
    key="track",
    max_selections=charts.MAX_LINES,
    help=f"By default the output's five favourites at this position, plus the target typed in the sidebar; "
    f"at most {charts.MAX_LINES}, so every line keeps its own colour, marker and dash.",
)
st.query_params["track"] = ",".join(str(t) for t in tracked)
measure = state.measure_picker("measure")
typed = [ctx.choices.target] if ctx.choices.target else []
if not tracked and not typed:
    st.info("Choose at least one token to follow.")
    st.stop()
followed = [*tracked, *typed]
if len(followed) > charts.MAX_LINES:
    st.caption(f"Following the first {charts.MAX_LINES} tokens: more lines could not be told apart.")
    followed = followed[: charts.MAX_LINES]
traced = running.with_targets(state.query(ctx.choices), followed, ctx.choices.top_k)
for warning in traced.warnings:
    st.warning(warning)
chart = charts.trajectory_chart(traced, position, measure, title=f"Position {position}: {result.tokens[position]}")
with st.container(key="trajectory_row"):
    left, right = st.columns([3, 2], gap="medium")
left.altair_chart(charts.stretched(chart), width="stretch")
table = charts.trajectory_frame(traced, position, measure).pivot(index="layer", columns="token", values="value")
right.dataframe(table.reindex(reversed(traced.layers)), height=min(600, 38 + 35 * traced.n_rows))
exports.export_buttons(traced, chart, "trajectories", heading=f"Token trajectories at position {position}")
