"""URL and selection state: what the sidebar chose, link values, the selected heatmap cell.

Streamlit's bind="query-params" stores a choice's display label in the URL, drops a
hand-written id (``?model=demo``, ``?metric=entropy``), and never writes a value set from
code, so a link copied after one click lost them. Choice widgets are therefore not bound:
:func:`linked_choice` reads the link (id or label) on first contact and writes the id of
the value in force into the URL on every run. Text, number and toggle widgets stay bound.
A link value the app can't use becomes one visible warning, never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import streamlit as st

import lens
from lens import charts
from ui import config, models
from ui.cached import LensQuery
from ui.escape import plain

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


def parse_token(text: str) -> str | int:
    """A typed token: its text, or '#123' for token id 123 (tokens no text spells alone)."""
    match = re.fullmatch(r"#(\d+)", text.strip())
    return int(match.group(1)) if match else text


def warn(message: str) -> None:
    """One visible line about a link value the app can't use (called outside the sidebar)."""
    st.warning(plain(message), icon=":material/link_off:")


def accept_choice(key: str, options: Sequence, label: Callable[[object], str]) -> bool:
    """Seed widget ``key`` from the link, which names an option by id or label; False if it names none.

    Only the first time the key is seen in a session: afterwards the widget's own state wins.
    """
    value = st.query_params.get(key)
    if value is None or key in st.session_state:
        return True
    matches = [o for o in options if str(o) == value] or [o for o in options if label(o) == value]
    if not matches:
        return False
    st.session_state[key] = matches[0]
    return True


def choice(key: str, options: Sequence, label: Callable[[object], str], what: str) -> None:
    """accept_choice, warning when the link's value is not one of the options."""
    if not accept_choice(key, options, label):
        value = st.query_params.pop(key)  # the URL holds what is in force, not the unusable value
        named = [str(o) for o in options if o is not None]
        shown = ", ".join(named if len(named) <= 8 else [*named[:3], "…", *named[-3:]])
        warn(f"The link's {what} '{value}' isn't one of the choices here ({shown}); showing the default instead.")


def keep_in_link(key: str, value: object, default: object = None) -> None:
    """Write the value in force into the URL under ``key``; the default (or nothing) leaves no parameter."""
    if value is None or value == "" or (default is not None and value == default):
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = str(value)


def linked_choice(
    draw: Callable[..., Any],
    text: str,
    options: Sequence,
    *,
    key: str,
    what: str,
    name: Callable[[Any], str] = str,
    default: object = None,
    **widget: Any,
) -> Any:
    """A choice widget (``st.selectbox``, ``st.radio``, ``st.segmented_control``) kept in the URL by id.

    A link may name the option by id or label; one that names none is a warning. ``default``
    is the value the widget starts with, which needs no parameter (None: the widget's own
    first value, and the value is always written).
    """
    choice(key, options, name, what)
    if default is not None and key not in st.session_state:
        st.session_state[key] = default
    value = draw(text, options, format_func=name, key=key, **widget)
    keep_in_link(key, value, default)
    return value


def link_checked_once(key: str) -> list[str] | None:
    """The link's values for ``key`` the first time a session sees them, else None (check them once)."""
    checked: set[str] = st.session_state.setdefault("_links_checked", set())
    if key in checked or key not in st.query_params:
        return None
    checked.add(key)
    return st.query_params.get_all(key)


def warn_number_out_of_range(key: str, what: str, least: int, most: int, default: int) -> None:
    """One warning when the link's whole number for ``key`` can't be read or lies outside least..most."""
    values = link_checked_once(key)
    if not values:
        return
    text = ",".join(values)
    try:
        number = int(text)
    except ValueError:
        warn(f"The link's {what} '{text}' isn't a whole number; showing {default}.")
        return
    if not least <= number <= most:
        warn(f"The link's {what} {number} is outside {least} to {most}; showing {min(max(number, least), most)}.")


def metric_picker(key: str) -> str:
    """The heatmap colour: one of lens.charts.METRICS, kept in the URL under ``key`` (id or label)."""
    return linked_choice(
        st.selectbox,
        "Colour by",
        list(charts.METRICS),
        key=key,
        what="colour measure",
        name=lambda k: charts.METRICS[k].title,
        default=next(iter(charts.METRICS)),
        help=METRIC_HELP,
    )


def measure_picker(key: str, label: str = "Measure") -> str:
    """Probability, log-probability or rank for line charts, kept in the URL under ``key`` (id or label)."""
    return linked_choice(
        st.radio,
        label,
        list(charts.MEASURES),
        key=key,
        what="measure",
        name=charts.MEASURES.get,
        default=next(iter(charts.MEASURES)),
        horizontal=True,
    )


def position_window(result: lens.LensResult, width: int) -> tuple[int, int] | None:
    """A slider over positions for long prompts; moving it recomputes nothing.

    A new prompt starts at its last positions. Its slider is a new widget (its range
    changed), which Streamlit would give the old prompt's window, and then write that
    into the URL. A window that came from a link is seeded into the new widget from the
    URL whatever the session says, so that one is reset on a rerun. The default goes to
    the slider only while the session holds no window: a default beside a value set in
    session state makes Streamlit log a warning with a stack trace.
    """
    n = result.n_positions
    default = (max(0, n - width), n - 1)
    shown_for = (result.prompt, n)
    changed = st.session_state.get("window_for", shown_for) != shown_for
    st.session_state["window_for"] = shown_for
    linked = link_checked_once("window")
    unusable = linked is not None and not _window_fits(linked, n)
    if n <= width:
        if unusable:
            warn(f"The link's window '{','.join(linked)}' isn't within positions 0 to {n - 1}; showing them all.")
        return None
    stored = st.session_state.get("window")
    out_of_range = stored is not None and not (0 <= stored[0] <= stored[1] <= n - 1)
    if st.session_state.pop("window_reset", False) or changed or out_of_range or unusable:
        st.session_state["window"] = default
    first, last = st.slider(
        "Positions shown",
        0,
        n - 1,
        None if "window" in st.session_state else default,  # None: the range the session holds
        key="window",
        bind="query-params",
        help="Long prompts show a window of positions so the tokens stay readable.",
    )
    if unusable:
        warn(f"The link's window '{','.join(linked)}' isn't within positions 0 to {n - 1}; showing {first} to {last}.")
    if changed and (first, last) != default:
        st.session_state["window_reset"] = True
        st.rerun()
    if first > last:
        st.info(f"The positions asked for ({first} to {last}) run backwards; showing {last} to {first}.")
        first, last = last, first
    return first, last + 1


def _window_fits(values: list[str], n: int) -> bool:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        return False
    return len(numbers) == 2 and all(0 <= v < n for v in numbers)


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


def second_model(current: str, key: str) -> str | None:
    """A second local model to overlay on ``current``'s curves, or None; the link keeps it under ``key``."""
    others = [m for m in models.local_choices(config.server()) if m != current]
    return linked_choice(
        st.selectbox,
        "Overlay a second model",
        [None, *others],
        key=key,
        what="second model",
        name=lambda m: "—" if m is None else models.label(m),
    )
