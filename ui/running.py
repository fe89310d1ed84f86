"""Running work for a page: load a model, run the lens, show progress, report errors in one line.

An error the lens expected (a ``LensError``) is its own one line. Anything else also
becomes one line on the page, and its traceback goes to the server log through
``logging``, with the NDIF key masked, so whoever runs the server can find the cause.
"""

from __future__ import annotations

import logging
import queue
import runpy
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pandas as pd
import streamlit as st

import lens
from ui import cached, config, models
from ui.cached import LensQuery
from ui.state import Choices, choices, query

T = TypeVar("T")
Report = Callable[..., None]  # report(message, fraction or None, value=None)
APP = Path(__file__).resolve().parent.parent / "app.py"
log = logging.getLogger("lens.app")


@dataclass(frozen=True)
class Context:
    choices: Choices
    model: lens.LensModel | lens.NnsightModel
    result: lens.LensResult


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


def one_line(error: BaseException, what: str) -> str:
    """The line a person sees for an error; an unexpected one's traceback goes to the log."""
    if isinstance(error, lens.LensError):
        return str(error)
    key = models.ndif_api_key(config.server())

    def masked(text: str) -> str:
        return text.replace(key, "***") if key else text

    log.error("%s failed:\n%s", what, masked("".join(traceback.format_exception(error))))
    first = str(error).splitlines()[0] if str(error) else ""
    return masked(f"{what} failed: {type(error).__name__}: {first}")


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


def load_model(name: str, demo_key: str | None = "model") -> lens.LensModel | lens.NnsightModel | None:
    """The cached model, with progress shown while it downloads or loads; None after an error."""
    failures: dict[str, str] = st.session_state.setdefault("failed_models", {})
    if not name:
        st.info("Type a model id in the sidebar (under **Model id**) to load it.", icon=":material/keyboard:")
        return None
    problem = failures.get(name) or models.check_allowed(name, config.server())
    if problem:
        show_error(problem, demo_key)
        if name in failures and st.button("Try again", key="retry_model"):
            failures.pop(name)
            st.rerun()
        return None
    started = time.monotonic()
    try:
        model = with_progress(lambda report: cached.model(name, _progress=report), f"Loading {models.label(name)}")
    except lens.LensError as exc:
        failures[name] = str(exc)
        show_error(str(exc), demo_key)
        return None
    if time.monotonic() - started > 1:
        st.toast(f"{models.label(name)} loaded in {time.monotonic() - started:.1f} s")
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
    if isinstance(error, BaseException):
        raise lens.LensError(one_line(error, label)) from error
    return outcome["value"]


def require_local_weights(model: lens.LensModel | lens.NnsightModel, what: str) -> None:
    """Stop a page whose work needs the weights here, with one line, when the model has none."""
    if not models.has_local_weights(model):
        st.info(f"{what} {models.LOCAL_ONLY}", icon=":material/cloud_off:")
        st.stop()


def corpus_with_progress(
    model_name: str,
    texts: Sequence[str],
    points: tuple[str, ...],
    max_tokens: int,
    lens_source: str | None = None,
    readings_after: int = 0,
) -> pd.DataFrame:
    """Cached corpus statistics, with a progress bar and an estimate of the time left.

    The estimate covers the readings still to come after this one (another model or lens
    over the same texts takes about as long), not only this one's.
    """
    label = models.label(model_name)

    def work(report: Report) -> pd.DataFrame:
        if not models.has_local_weights(cached.model(model_name)):
            raise lens.LensError(f"Corpus statistics {models.LOCAL_ONLY}")
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


def prompt_set_with_progress(
    model_name: str, kind: str, text: str, max_prompts: int, lens_source: str | None = None
) -> lens.PromptSetResult:
    """A cached prompt set, with a progress bar: prompts read and the time left."""
    label = models.label(model_name)

    def work(report: Report) -> lens.PromptSetResult:
        def tell(done: int, total: int, left: float | None) -> None:
            eta = "" if left is None else f", about {left:.0f} s left"
            report(f"{label}: {done:,} of {total:,} prompts{eta}", done / total)

        return cached.prompt_set(model_name, kind, text, max_prompts, lens_source, _progress=tell)

    return with_progress(work, f"Reading the prompt set with {label}")


def check_length(model: lens.LensModel | lens.NnsightModel, q: LensQuery) -> None:
    """Refuse prompts over the server's token limit before running anything.

    A prompt of more characters than any such prompt could have is refused before the
    tokenizer sees it: tokenizing a megabyte takes seconds, on every rerun.
    """
    server = config.server()
    limit = server.max_tokens
    if isinstance(q.prompt, str) and len(q.prompt) > server.max_prompt_chars:
        raise lens.LensError(
            f"The prompt is {len(q.prompt):,} characters long; this server reads at most {limit} tokens "
            f"(LENS_MAX_TOKENS), so at most {server.max_prompt_chars:,} characters."
        )
    n = len(lens.tokenize_prompt(model, q.prompt, q.prepend_bos))
    if n > limit:
        raise lens.LensError(f"The prompt is {n} tokens long; this server reads at most {limit} (LENS_MAX_TOKENS).")


def run(model: lens.LensModel | lens.NnsightModel, q: LensQuery, top_k: int) -> lens.LensResult:
    """The cached lens result for a query, its top-k sliced for display."""
    check_length(model, q)
    if not models.has_local_weights(model):
        target = choices().target
        return with_top_k(_remote(q, (target,) if target else ()), top_k)
    with st.spinner(f"Running the lens on {models.label(q.model_name)}…", show_time=True):
        result = cached.lens_result(q)
    return with_top_k(result, top_k)


def with_targets(q: LensQuery, targets: Sequence[str | int], top_k: int) -> lens.LensResult:
    """The result with these targets tracked, from the cache: never a new forward pass here.

    A model that keeps no residuals here (NDIF) runs again with the targets, and caches that.
    """
    if not models.has_local_weights(cached.model(q.model_name)):
        return with_top_k(_remote(q, tuple(targets)), top_k)
    return with_top_k(cached.with_targets(q, tuple(targets)), top_k)


def _remote(q: LensQuery, targets: tuple[str | int, ...]) -> lens.LensResult:
    """A remote run, with the job's status shown while it waits and runs."""
    explanation = st.empty()
    if not st.session_state.get("remote_has_run"):
        explanation.info(models.FIRST_REMOTE_RUN_NOTE, icon=":material/hourglass_top:")
    try:
        result = with_progress(
            lambda report: cached.remote_result(q, targets, _progress=report),
            f"Sending the prompt to NDIF for {models.label(q.model_name)}",
        )
    finally:
        explanation.empty()
    st.session_state["remote_has_run"] = True
    return result


def with_top_k(result: lens.LensResult, k: int) -> lens.LensResult:
    return replace(
        result,
        top_ids=result.top_ids[..., :k],
        top_probs=result.top_probs[..., :k],
        top_tokens=result.top_tokens[..., :k],
    )


def context(needs_local_weights: str | None = None) -> Context:
    """Choices, model and result for this page, or a friendly error and a stop.

    ``needs_local_weights`` names the page's work when it needs the weights here: a model
    without them is refused in one line before anything runs.
    """
    c = choices()
    model = load_model(c.model_name)
    if model is None:
        st.stop()
    if needs_local_weights:
        require_local_weights(model, needs_local_weights)
    try:
        result = run(model, query(c), c.top_k)
    except lens.LensError as exc:
        show_error(str(exc))
        st.stop()
    describe_target(model, c)
    return Context(c, model, result)


def describe_target(model: lens.LensModel | lens.NnsightModel, c: Choices) -> None:
    """Under the target box: which token the lens follows for the typed target, and why."""
    caption = st.session_state.get("target_caption")
    if caption is None or not c.target:
        return
    try:
        ids, names, warnings = lens.resolve_targets(model, [c.target])
    except lens.LensError as exc:
        caption.caption(f":material/warning: {exc}")
        return
    if warnings:
        caption.caption(f":material/warning: {warnings[0]}")
    else:
        caption.caption(f"One token: `{names[0]}` (id {ids[0]})")
