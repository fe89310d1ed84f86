"""What every page does around its charts: load, run, report errors, export."""

from __future__ import annotations

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
from lens.exports import safe_csv
from ui import cached, config
from ui.sidebar import Settings

T = TypeVar("T")
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


def style() -> None:
    """Page-wide CSS: heatmap labels let clicks and hovers through to the cell beneath."""
    st.html("<style>[data-testid=stVegaLiteChart] g.mark-text text { pointer-events: none; }</style>")


def warn_about_settings() -> None:
    """Settings the server could not read: the operator sees them on the page (and once in the log)."""
    for problem in config.limits().problems:
        st.warning(f"Server setting ignored: {problem}", icon=":material/settings:")


def settings() -> Settings:
    return st.session_state["settings"]


def show_error(message: str) -> None:
    """One friendly line; for a model that can't be fetched, a one-click way to the demo."""
    st.error(message, icon=":material/error:")
    if "Could not download" in message or "Could not load model" in message:
        st.button("Use the offline demo model", type="primary", on_click=_switch_to_demo, key="use_demo")


def _switch_to_demo() -> None:
    st.session_state["model"] = "demo"
    st.session_state.pop("failed_models", None)


def load_model(name: str) -> lens.LensModel | None:
    """The cached model, with progress shown while it downloads or loads; None after an error."""
    failures: dict[str, str] = st.session_state.setdefault("failed_models", {})
    problem = failures.get(name) or config.check_model_allowed(name, config.limits())
    if not name:
        problem = "Type a model id in the sidebar."
    if problem:
        show_error(problem)
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
        show_error(str(exc))
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
    model_name: str, texts: Sequence[str], points: tuple[str, ...], max_tokens: int, lens_source: str | None = None
):
    """Cached corpus statistics, with a progress bar and an estimate of the time left."""
    label = config.model_label(model_name)

    def work(report: Report):
        def tell(done: int, expected: int | None, left: float | None) -> None:
            if expected:
                eta = f", about {left:.0f} s left" if left is not None else ""
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
    """Under the target box: how the typed target tokenizes."""
    caption = st.session_state.get("target_caption")
    if caption is None or not s.target:
        return
    try:
        ids, names = cached.target_tokens(s.model_name, s.target)
    except lens.LensError as exc:
        caption.caption(f":material/warning: {exc}")
        return
    pieces = " + ".join(f"`{n}`" for n in names)
    if len(ids) == 1:
        caption.caption(f"One token: {pieces} (id {ids[0]})")
    else:
        caption.caption(f":material/warning: {len(ids)} tokens: {pieces}. The lens follows the first, `{names[0]}`.")


def with_targets(q: cached.LensQuery, targets: Sequence[str | int], top_k: int) -> lens.LensResult:
    """The result with these targets tracked, from the cache: never a new forward pass."""
    return with_top_k(cached.with_targets(q, tuple(targets)), top_k)


METRIC_HELP = (
    "Top-1 probability: how sure the layer is. Entropy: how spread out its guesses are. KL to final output: "
    "how far it is from the model's real answer. Target: how the token you typed in the sidebar fares."
)


def metric_picker(key: str) -> str:
    """The heatmap colour: one of lens.charts.METRICS, kept in the URL under ``key``."""
    return st.selectbox(
        "Colour by",
        list(charts.METRICS),
        format_func=lambda k: charts.METRICS[k].title,
        key=key,
        bind="query-params",
        help=METRIC_HELP,
    )


def measure_picker(key: str, label: str = "Measure") -> str:
    """Probability, log-probability or rank for line charts, kept in the URL under ``key``."""
    return st.radio(
        label, list(charts.MEASURES), format_func=charts.MEASURES.get, key=key, bind="query-params", horizontal=True
    )


def export_buttons(result: lens.LensResult, chart: alt.TopLevelMixin, stem: str) -> None:
    """Downloads of the result (CSV, JSON) and the chart (PNG, SVG), made only when clicked."""

    def png() -> bytes:
        import vl_convert

        return vl_convert.vegalite_to_png(chart.to_json(), scale=2)

    def svg() -> str:
        import vl_convert

        return vl_convert.vegalite_to_svg(chart.to_json())

    cols = st.columns([1, 1, 1, 1, 6], gap="small")
    cols[0].download_button(
        "CSV",
        lambda: safe_csv(result.to_frame()),
        f"{stem}.csv",
        "text/csv",
        key=f"{stem}_csv",
        help="One row per (layer, position): top-k, entropy, KL, targets.",
    )
    cols[1].download_button(
        "JSON",
        lambda: result.to_json(include_unembed_input=False),
        f"{stem}.json",
        "application/json",
        key=f"{stem}_json",
        help="The full result; lens.LensResult.from_json reads it back.",
    )
    cols[2].download_button("PNG", png, f"{stem}.png", "image/png", key=f"{stem}_png")
    cols[3].download_button("SVG", svg, f"{stem}.svg", "image/svg+xml", key=f"{stem}_svg")


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


def selected_cell(result: lens.LensResult, default: tuple[int, int]) -> tuple[int, int]:
    row, position = st.session_state.get("cell", default)
    if not (0 <= row < result.n_rows and 0 <= position < result.n_positions):
        return default
    return row, position


def remember_cell(event) -> None:
    """Keep the clicked cell across reruns (changing the metric redraws the chart)."""
    picked = (event or {}).get("selection", {}).get("cell") or []
    if picked:
        cell = (int(picked[0]["row"]), int(picked[0]["position"]))
        if st.session_state.get("cell") != cell:
            st.session_state["cell"] = cell
            st.rerun()
