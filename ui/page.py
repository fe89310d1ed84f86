"""What every page does around its charts: load, run, report errors, export."""

from __future__ import annotations

import contextlib
import queue
import runpy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import altair as alt
import pandas as pd
import streamlit as st

import lens
from lens import charts
from lens.provenance import Run, View
from ui import cached, config, exports, links, ndif, reproduce
from ui.sidebar import Settings

T = TypeVar("T")
SELECTION_NAME = charts.SELECTION
Report = Callable[..., None]  # report(message, fraction or None, value=None)


@dataclass(frozen=True)
class Context:
    settings: Settings
    model: lens.LensModel
    result: lens.LensResult


APP = Path(__file__).resolve().parent.parent / "app.py"


def run_through_app() -> None:
    """Make sure app.py, with its navigation and sidebar, drives this run.

    When the very first request a server sees opens a sub-page URL, Streamlit runs that
    page file on its own (its legacy pages/ folder mode) until app.py has called
    st.navigation once. Then run app.py, which draws this same page, and stop here.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()


# High-contrast chrome: captions and the selected segmented button meet WCAG AA (4.5:1),
# keyboard focus shows as a thick dark ring, tooltips are opaque, and every chart that is
# wider than the main area scrolls inside its own frame, so the page never scrolls sideways.
# The Lens heatmap's frame starts at its right end: the prompt's last positions and the
# default selected cell.
CSS = """
[data-testid=stVegaLiteChart] g.mark-text text { pointer-events: none; }
[data-testid=stCaptionContainer], [data-testid=stWidgetLabel] p, [data-testid=stTooltipHoverTarget] svg,
[data-testid=stMarkdownContainer] small { color: #3d3d45 !important; opacity: 1 !important; }
[data-testid=stBaseButton-segmented_controlActive] { background: #1d4f91 !important; color: #fff !important; }
[data-testid=stBaseButton-segmented_controlActive] * { color: #fff !important; }
a:focus-visible, button:focus-visible, [role=option]:focus-visible, input:focus-visible, textarea:focus-visible,
[data-baseweb=select] :focus-visible, [role=slider]:focus-visible, [role=radio]:focus-visible,
[data-testid=stSidebarNavLink]:focus-visible, summary:focus-visible, [tabindex]:focus-visible {
  outline: 3px solid #111 !important; outline-offset: 2px !important; box-shadow: 0 0 0 5px #fff !important;
}
#vg-tooltip-element { background: #fff !important; opacity: 1 !important; color: #111 !important;
  border: 1px solid #555 !important; box-shadow: 0 2px 8px rgba(0,0,0,.35) !important; }
[data-testid=stMain] [data-testid=stVerticalBlock] { min-width: 0; }
[data-testid=stVegaLiteChart] { max-width: 100%; overflow-x: auto; overflow-y: hidden; }
[class*=st-key-heatmap_] [data-testid=stVegaLiteChart] { direction: rtl; }
[class*=st-key-heatmap_] [data-testid=stVegaLiteChart] > * { direction: ltr; }
.st-key-lens_charts { flex-direction: row !important; flex-wrap: wrap; align-items: flex-start; column-gap: 2rem; }
.st-key-lens_charts > * { flex: 0 1 auto; width: auto !important; max-width: 100%; min-width: 0; }
.st-key-cell_details { flex: 0 0 auto; width: 340px !important; max-width: 100%; }
[data-testid=stElementContainer]:has([data-testid=stVegaLiteChart]),
[data-testid=stFullScreenFrame] { max-width: 100%; }
"""


# A chart frame that scrolls sideways must be reachable by keyboard (Tab, then the arrow
# keys scroll it): give every chart frame a tab stop and a name as it appears.
FOCUSABLE_FRAMES = """
if (!window.lensFramesWatched) {
  window.lensFramesWatched = true;
  const mark = () => document.querySelectorAll('[data-testid=stVegaLiteChart]:not([tabindex])').forEach(f => {
    f.setAttribute('tabindex', '0');
    f.setAttribute('aria-label', 'Chart (scroll sideways with the arrow keys when it is wider than the page)');
  });
  new MutationObserver(mark).observe(document.body, {childList: true, subtree: true});
  mark();
}
"""


def style() -> None:
    """Page-wide CSS and one constant script (see CSS, FOCUSABLE_FRAMES); no user text goes in."""
    st.html(f"<style>{CSS}</style><script>{FOCUSABLE_FRAMES}</script>", unsafe_allow_javascript=True)


def warn_about_settings() -> None:
    """Settings the server could not read: the operator sees them on the page (and once in the log)."""
    for problem in config.limits().problems:
        st.warning(f"Server setting ignored: {problem}", icon=":material/settings:")


def settings() -> Settings:
    return st.session_state["settings"]


def show_error(message: str, demo_key: str | None = "model") -> None:
    """One friendly line; for a model that can't be fetched, a one-click way to the demo.

    ``demo_key`` is the model picker the button sets to the demo (None: no button, as when
    the demo is already the other model being compared).
    """
    st.error(message, icon=":material/error:")
    if demo_key and ("Could not download" in message or "Could not load model" in message):
        st.button(
            "Use the offline demo model", type="primary", on_click=_switch_to_demo, args=(demo_key,), key="use_demo"
        )


def _switch_to_demo(key: str) -> None:
    st.session_state[key] = "demo"
    st.session_state.pop("failed_models", None)


def load_model(name: str, demo_key: str | None = "model") -> lens.LensModel | None:
    """The cached model, with progress shown while it downloads or loads; None after an error."""
    failures: dict[str, str] = st.session_state.setdefault("failed_models", {})
    if not name:
        st.info("Type a model id in the sidebar (under **Model id**) to load it.", icon=":material/keyboard:")
        return None
    problem = failures.get(name) or config.check_model_allowed(name, config.limits())
    if problem:
        show_error(problem, demo_key)
        if name in failures and st.button("Try again", key="retry_model"):
            failures.pop(name)
            st.rerun()
        return None
    started = time.monotonic()
    try:
        model = with_progress(
            lambda report: cached.model(name, _progress=report), f"Loading {config.model_label(name)}"
        )
    except lens.LensError as exc:
        failures[name] = str(exc)
        show_error(str(exc), demo_key)
        return None
    if time.monotonic() - started > 1:
        st.toast(f"{config.model_label(name)} loaded in {time.monotonic() - started:.1f} s")
    return model


def with_progress(work: Callable[[Report], T], label: str, curve: str | None = None) -> T:
    """Run ``work(report)`` in a worker thread while this one shows its progress and time.

    Streamlit elements can't be drawn from inside a cached function, so the work only
    posts ``report(message, fraction, value=None)``; a cache hit returns at once and
    shows nothing. With ``curve``, posted values are drawn as a live line chart of that
    name (a training loss). Errors are raised here as one-line LensErrors.
    """
    messages: queue.Queue = queue.Queue()
    outcome: dict[str, object] = {}

    def run_work() -> None:
        try:
            outcome["value"] = work(lambda message, fraction, value=None: messages.put((message, fraction, value)))
        except Exception as exc:  # noqa: BLE001 - handed to the page thread below
            outcome["error"] = exc

    worker = threading.Thread(target=run_work, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(0.2)
    box, plot = st.empty(), st.empty()
    message, fraction, values = label, None, []
    while worker.is_alive():
        while not messages.empty():
            message, fraction, value = messages.get()
            if value is not None:
                values.append(value)
        text = f"{message} ({time.monotonic() - started:.0f} s)"
        if fraction is None:
            box.info(text)
        else:
            box.progress(min(max(fraction, 0.0), 1.0), text=text)
        if curve and values:
            plot.line_chart(pd.DataFrame({curve: values}), x_label="step", y_label=curve, height=220)
        worker.join(0.25)
    plot.empty()
    box.empty()
    error = outcome.get("error")
    if isinstance(error, lens.LensError):
        raise error
    if error is not None:
        raise lens.LensError(
            f"{label} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )
    return outcome["value"]


def corpus_with_progress(
    model_name: str,
    texts: Sequence[str],
    points: tuple[str, ...],
    max_tokens: int,
    lens_source: str | None = None,
    readings_after: int = 0,
):
    """Cached corpus statistics, with a progress bar and an estimate of the time left.

    The estimate covers the readings still to come after this one (another model or lens
    over the same texts takes about as long), not only this one's.
    """
    label = config.model_label(model_name)

    def work(report: Report):
        started = time.monotonic()

        def tell(done: int, expected: int | None, left: float | None) -> None:
            if expected:
                if left is not None:
                    this_reading = time.monotonic() - started + left
                    eta = f", about {left + this_reading * readings_after:.0f} s left"
                else:
                    eta = ""
                report(f"{label}: {done:,} of about {expected:,} tokens{eta}", done / expected)

        return cached.corpus(model_name, tuple(texts), points, max_tokens, lens_source, _progress=tell)

    return with_progress(work, f"Reading {len(texts)} texts with {label}")


def query(s: Settings, **changes) -> cached.LensQuery:
    """The sidebar's lens query, with any field changed (another prompt, model or lens)."""
    return cached.LensQuery(s.model_name, s.prompt, s.prepend_bos, s.points, s.lens_source)._replace(**changes)


def check_length(model: lens.LensModel, q: cached.LensQuery) -> None:
    """Refuse prompts over the server's token limit before running anything.

    A prompt of more characters than any such prompt could have is refused before the
    tokenizer sees it: tokenizing a megabyte takes seconds, on every rerun.
    """
    server = config.limits()
    limit = server.max_tokens
    if isinstance(q.prompt, str) and len(q.prompt) > server.max_prompt_chars:
        raise lens.LensError(
            f"The prompt is {len(q.prompt):,} characters long; this server reads at most {limit} tokens "
            f"(LENS_MAX_TOKENS), so at most {server.max_prompt_chars:,} characters."
        )
    n = len(lens.tokenize_prompt(model, q.prompt, q.prepend_bos))
    if n > limit:
        raise lens.LensError(f"The prompt is {n} tokens long; this server reads at most {limit} (LENS_MAX_TOKENS).")


def run(model: lens.LensModel, q: cached.LensQuery, top_k: int) -> lens.LensResult:
    """The cached lens result for a query, its top-k sliced for display."""
    check_length(model, q)
    if ndif.is_remote(q.model_name):
        target = settings().target
        return with_top_k(ndif.run(q, (target,) if target else ()), top_k)
    with st.spinner(f"Running the lens on {config.model_label(q.model_name)}…", show_time=True):
        result = cached.lens_result(q)
    return with_top_k(result, top_k)


def with_top_k(result: lens.LensResult, k: int) -> lens.LensResult:
    return replace(
        result,
        top_ids=result.top_ids[..., :k],
        top_probs=result.top_probs[..., :k],
        top_tokens=result.top_tokens[..., :k],
    )


def context() -> Context:
    """Settings, model and result for this page, or a friendly error and a stop."""
    s = settings()
    model = load_model(s.model_name)
    if model is None:
        st.stop()
    try:
        result = run(model, query(s), s.top_k)
    except lens.LensError as exc:
        show_error(str(exc))
        st.stop()
    describe_target(model, s)
    return Context(s, model, result)


def describe_target(model: lens.LensModel, s: Settings) -> None:
    """Under the target box: which token the lens follows for the typed target, and why."""
    caption = st.session_state.get("target_caption")
    if caption is None or not s.target:
        return
    try:
        ids, names, warnings = lens.resolve_targets(model, [s.target])
    except lens.LensError as exc:
        caption.caption(f":material/warning: {exc}")
        return
    if warnings:
        caption.caption(f":material/warning: {warnings[0]}")
    else:
        caption.caption(f"One token: `{names[0]}` (id {ids[0]})")


def with_targets(q: cached.LensQuery, targets: Sequence[str | int], top_k: int) -> lens.LensResult:
    """The result with these targets tracked, from the cache: never a new forward pass (on NDIF, a cached run)."""
    if ndif.is_remote(q.model_name):
        return with_top_k(ndif.run(q, tuple(targets)), top_k)
    return with_top_k(cached.with_targets(q, tuple(targets)), top_k)


METRIC_HELP = (
    "Top-1 probability: how sure the layer is. Entropy: how spread out its guesses are. KL to final output: "
    "how far it is from the model's real answer. Target: how the token you typed in the sidebar fares."
)


def metric_picker(key: str) -> str:
    """The heatmap colour: one of lens.charts.METRICS, kept in the URL under ``key`` (id or label)."""
    links.choice(key, list(charts.METRICS), lambda k: charts.METRICS[k].title, "colour measure")
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
    links.choice(key, list(charts.MEASURES), charts.MEASURES.get, "measure")
    return st.radio(
        label, list(charts.MEASURES), format_func=charts.MEASURES.get, key=key, bind="query-params", horizontal=True
    )


def export_buttons(
    result: lens.LensResult,
    chart: alt.TopLevelMixin,
    stem: str,
    heading: str | None = None,
    shown: dict[str, object] | None = None,
) -> None:
    """Downloads of the result (CSV, JSON) and the chart (PNG, SVG) as the screen shows them, and
    the Python that remakes them. ``shown`` names display settings (metric, window) for both.

    A target typed in the sidebar goes into the files even when the chart isn't coloured by it.
    """
    s = settings()
    if s.target and not result.targets and result.prompt == s.prompt:
        with contextlib.suppress(lens.LensError):  # the sidebar already shows why the target can't be used
            result = with_targets(query(s), [s.target], s.top_k)
    csv, json_text = exports.result_files(result)
    heading = heading or f"{result.lens_kind.capitalize()} lens"
    run = Run(s.model_name, tuple(result.token_ids), result.prompt, s.lens_source, tuple(result.target_ids))
    view = View("lens", (run,), top_k=s.top_k, points=tuple(s.points), settings=shown or {}, stem=stem)
    exports.buttons(
        stem, csv, reproduce.with_provenance(json_text, view), exports.titled(chart, heading, exports.describe(result))
    )
    reproduce.offer(view)


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


CELL = "cell"  # session key and URL parameter of the selected heatmap cell, "row,position"


def selected_cell(result: lens.LensResult, query: cached.LensQuery, window: tuple[int, int]) -> tuple[int, int]:
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
        links.warn(f"The link's cell '{text}' isn't 'row,position' (two whole numbers); showing the default cell.")
        return None
    if not (0 <= row < result.n_rows and window[0] <= position < window[1]):
        links.warn(f"The link's cell {row},{position} isn't in this view; showing the default cell.")
        return None
    return row, position


def _clicked(key: str) -> None:
    picked = (st.session_state.get(key) or {}).get("selection", {}).get(SELECTION_NAME) or []
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
    st.altair_chart(
        chart, on_select=lambda: _clicked(key), selection_mode=SELECTION_NAME, key=key, width="content"
    )


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
