"""URL and selection state: what the sidebar chose, link values, the selected heatmap cell.

Streamlit's bind="query-params" stores a choice's display label in the URL and silently
drops anything else, so a hand-written ``?model=demo`` or ``?metric=target_prob`` would be
lost. Before such a widget is drawn, an id in the link is put into session state (which
Streamlit then uses), and a value that matches nothing becomes a visible warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import altair as alt
import streamlit as st

import lens
from lens import charts
from ui.cached import LensQuery

CELL = "cell"  # session key and URL parameter of the selected heatmap cell, "row,position"
CHOICES = "choices"  # session key of this run's sidebar choices
PROMPT_TOKENS = "prompt_tokens"  # session key of the sidebar slot the prompt's token chips go in
METRIC_HELP = (
    "Top-1 probability: how sure the layer is. Entropy: how spread out its guesses are. KL to final output: "
    "how far it is from the model's real answer. Target: how the token you typed in the sidebar fares."
)


@dataclass(frozen=True)
class Choices:
    """What the sidebar says: the model, prompt and lens every page reads."""

    model_name: str
    prompt: str
    prepend_bos: bool | None
    points: tuple[str, ...]
    top_k: int
    target: str
    lens_source: str | None = None  # a tuned lens (folder or hub:<model>); None is the logit lens
    chat_template: bool = False  # the prompt is wrapped in the model's chat format (already, in ``prompt``)


def choices() -> Choices:
    return st.session_state[CHOICES]


def query(c: Choices, **changes) -> LensQuery:
    """The sidebar's lens query, with any field changed (another prompt, model or lens)."""
    return LensQuery(c.model_name, c.prompt, c.prepend_bos, c.points, c.lens_source)._replace(**changes)


def warn(message: str) -> None:
    """One visible line about a link value the app can't use (called outside the sidebar)."""
    st.warning(message, icon=":material/link_off:")


def accept_choice(key: str, options: Sequence, label: Callable[[object], str]) -> bool:
    """Seed widget ``key`` from the link if the link names an option by id; False if it names none.

    Only the first time the key is seen in a session: afterwards the widget's own state wins.
    """
    value = st.query_params.get(key)
    if value is None or key in st.session_state or any(label(o) == value for o in options):
        return True
    match = next((o for o in options if str(o) == value), None)
    if match is None:
        return False
    st.session_state[key] = match
    return True


def choice(key: str, options: Sequence, label: Callable[[object], str], what: str) -> None:
    """accept_choice, warning when the link's value is not one of the options."""
    if not accept_choice(key, options, label):
        value = st.query_params.get(key)
        shown = ", ".join(str(o) for o in options if o is not None)
        warn(f"The link's {what} '{value}' isn't one of the choices here ({shown}); showing the default instead.")


def metric_picker(key: str) -> str:
    """The heatmap colour: one of lens.charts.METRICS, kept in the URL under ``key`` (id or label)."""
    choice(key, list(charts.METRICS), lambda k: charts.METRICS[k].title, "colour measure")
    return st.selectbox(
        "Colour by",
        list(charts.METRICS),
        format_func=lambda k: charts.METRICS[k].title,
        key=key,
        bind="query-params",
        help=METRIC_HELP,
    )


def measure_picker(key: str, label: str = "Measure") -> str:
    """Probability, log-probability or rank for line charts, kept in the URL under ``key`` (id or label)."""
    choice(key, list(charts.MEASURES), charts.MEASURES.get, "measure")
    return st.radio(
        label, list(charts.MEASURES), format_func=charts.MEASURES.get, key=key, bind="query-params", horizontal=True
    )


def position_window(result: lens.LensResult, width: int) -> tuple[int, int] | None:
    """A slider over positions for long prompts; moving it recomputes nothing.

    A new prompt starts at its last positions. Its slider is a new widget (its range
    changed), which Streamlit would give the old prompt's window, and then write that
    into the URL. A window that came from a link is seeded into the new widget from the
    URL whatever the session says, so that one is reset on a rerun.
    """
    n = result.n_positions
    default = (max(0, n - width), n - 1)
    shown_for = (result.prompt, n)
    changed = st.session_state.get("window_for", shown_for) != shown_for
    st.session_state["window_for"] = shown_for
    if n <= width:
        return None
    stored = st.session_state.get("window")
    out_of_range = stored is not None and not (0 <= stored[0] <= stored[1] <= n - 1)
    if st.session_state.pop("window_reset", False) or changed or out_of_range:
        st.session_state["window"] = default
    first, last = st.slider(
        "Positions shown",
        0,
        n - 1,
        default,
        key="window",
        bind="query-params",
        help="Long prompts show a window of positions so the tokens stay readable.",
    )
    if changed and (first, last) != default:
        st.session_state["window_reset"] = True
        st.rerun()
    if first > last:
        st.info(f"The positions asked for ({first} to {last}) run backwards; showing {last} to {first}.")
        first, last = last, first
    return first, last + 1


def selected_cell(result: lens.LensResult, query: LensQuery, window: tuple[int, int]) -> tuple[int, int]:
    """The outlined cell: the link's on first contact, then the last click or pick; else the top right one.

    A new result (prompt, model, lens, rows) drops the old selection, and a cell outside the
    window is replaced, so the details beside the heatmap always belong to the outlined cell.
    The cell is kept in the URL as ``cell=row,position``.
    """
    state = st.session_state
    if state.get("cell_for") != query:
        from_link = "cell_for" not in state and CELL in st.query_params
        state["cell_for"] = query
        state[CELL] = _link_cell(st.query_params[CELL], result, window) if from_link else None
    cell = state[CELL]
    if cell is None or not (0 <= cell[0] < result.n_rows and window[0] <= cell[1] < window[1]):
        cell = (result.n_rows - 1, window[1] - 1)
    state[CELL] = cell
    st.query_params[CELL] = f"{cell[0]},{cell[1]}"
    return cell


def _link_cell(text: str, result: lens.LensResult, window: tuple[int, int]) -> tuple[int, int] | None:
    try:
        row, position = (int(part) for part in text.split(","))
    except ValueError:
        warn(f"The link's cell '{text}' isn't 'row,position' (two whole numbers); showing the default cell.")
        return None
    if not (0 <= row < result.n_rows and window[0] <= position < window[1]):
        warn(f"The link's cell {row},{position} isn't in this view; showing the default cell.")
        return None
    return row, position


def _clicked(key: str) -> None:
    picked = (st.session_state.get(key) or {}).get("selection", {}).get(charts.SELECTION) or []
    if picked:
        st.session_state[CELL] = (int(picked[0]["row"]), int(picked[0]["position"]))


def _picked() -> None:
    st.session_state[CELL] = (int(st.session_state["pick_row"]), int(st.session_state["pick_position"]))


def selectable_heatmap(chart: alt.TopLevelMixin, cell: tuple[int, int]) -> None:
    """The heatmap; a click selects a cell (the same selection the keyboard picker drives).

    The chart's key names the cell: the browser keeps a chart's last click across reruns and
    would outline it even after the picker or a new prompt chose another cell.
    """
    key = f"heatmap_{cell[0]}_{cell[1]}"
    st.altair_chart(chart, on_select=lambda: _clicked(key), selection_mode=charts.SELECTION, key=key, width="content")


def cell_picker(result: lens.LensResult, window: tuple[int, int], cell: tuple[int, int]) -> None:
    """Keyboard access to the selection: a layer and a position, kept in step with clicks."""
    st.session_state["pick_row"], st.session_state["pick_position"] = cell
    rows = list(reversed(range(result.n_rows)))
    with st.container(horizontal=True, gap="small"):
        st.selectbox(
            "Cell: layer",
            rows,
            format_func=lambda r: result.layers[r],
            key="pick_row",
            on_change=_picked,
            width=180,
        )
        st.selectbox(
            "position",
            list(range(*window)),
            format_func=lambda p: f"{p} {result.tokens[p]}",
            key="pick_position",
            on_change=_picked,
            width=220,
        )
