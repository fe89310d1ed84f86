"""Running work for a page: load a model, run the lens, show progress, report errors in one line.

An error the lens expected (a ``LensError``) is its own one line. Anything else also
becomes one line on the page, and its traceback goes to the server log through
``logging``, with the NDIF key masked, so whoever runs the server can find the cause.
"""

from __future__ import annotations

import html
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import pandas as pd
import streamlit as st

import lens
from lens.tokens import spacing_twin
from ui import cached, config, models
from ui.cached import LensQuery
from ui.escape import code, plain
from ui.state import PROMPT_TOKENS, Choices, choices, query

T = TypeVar("T")
Report = Callable[..., None]  # report(message, fraction or None, value=None)
log = logging.getLogger("lens.app")


@dataclass(frozen=True)
class Context:
    choices: Choices
    model: lens.LensModel | lens.NnsightModel
    result: lens.LensResult


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
    st.error(plain(message), icon=":material/error:")
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
        st.toast(plain(f"{models.label(name)} loaded in {time.monotonic() - started:.1f} s"))
    return model


def with_progress(
    work: Callable[[Report], T], label: str, curve: str | None = None, cancel: threading.Event | None = None
) -> T:
    """Run ``work(report)`` in a worker thread while this one shows its progress and time.

    Streamlit elements can't be drawn from inside a cached function, so the work only
    posts ``report(message, fraction, value=None)``; a cache hit returns at once and
    shows nothing. With ``curve``, posted values are drawn as a live line chart of that
    name (a training loss). Errors are raised here as one-line LensErrors. ``cancel`` is
    set when this run is interrupted (a click anywhere reruns the page), so work that
    checks it stops instead of holding the model for a result nobody will see.
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
    try:
        while worker.is_alive():
            while not messages.empty():
                message, fraction, value = messages.get()
                if value is not None:
                    values.append(value)
            text = plain(f"{message} ({time.monotonic() - started:.0f} s)")
            if fraction is None:
                box.info(text)
            else:
                box.progress(min(max(fraction, 0.0), 1.0), text=text)
            if curve and values:
                plot.line_chart(pd.DataFrame({curve: values}), x_label="step", y_label=curve, height=220)
            worker.join(0.25)
    finally:
        if cancel is not None and worker.is_alive():
            cancel.set()
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
        st.info(plain(f"{what} {models.LOCAL_ONLY}"), icon=":material/cloud_off:")
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
    show_tokens(result)
    return Context(c, model, result)


CHIPS_SHOWN = 64  # a long prompt's chips stop here, with a count of the rest


def show_tokens(result: lens.LensResult) -> None:
    """The prompt's tokens as chips under the prompt box (␣ marks a space); each names its id on hover.

    Token text is escaped: a token is data, never markup.
    """
    slot = st.session_state.get(PROMPT_TOKENS)
    if slot is None:
        return
    chips = "".join(
        f'<span class="lens-chip" title="position {i}, id {token_id}">{html.escape(token)}</span>'
        for i, (token, token_id) in enumerate(zip(result.tokens[:CHIPS_SHOWN], result.token_ids, strict=False))
    )
    rest = result.n_positions - CHIPS_SHOWN
    more = f'<span class="lens-chip-more">+{rest} more</span>' if rest > 0 else ""
    label = f"{result.n_positions} tokens, as the model reads them"
    slot.html(f'<div class="lens-chips"><small>{label}:</small> {chips}{more}</div>')


def describe_target(model: lens.LensModel | lens.NnsightModel, c: Choices) -> None:
    """Under the target box: which token the lens follows for the typed target, and why."""
    caption = st.session_state.get("target_caption")
    if caption is None or not c.target:
        return
    try:
        ids, names, warnings = lens.resolve_targets(model, [c.target])
    except lens.LensError as exc:
        caption.caption(f":material/warning: {plain(exc)}")
        return
    if warnings:
        caption.caption(f":material/warning: {plain(warnings[0])}")
        return
    twin = spacing_twin(model, c.target)
    if twin is None:
        caption.caption(f"One token: {code(names[0])} (id {ids[0]})")
        return
    followed, other = twin
    box = caption.container()
    spaced = "without" if c.target[:1].isspace() else "with"
    line = f"Following {code(names[0])} (id {followed}), as typed. The same word {spaced} a leading space, "
    line += f"{code(model.token_name(other))} (id {other}), is another token"
    if models.has_local_weights(model):  # both from the cached run: no new forward pass
        both = with_targets(query(c), [followed, other], c.top_k)
        other_p, followed_p = (_percent(both.target_probs[i, -1, -1]) for i in (1, 0))
        line += f": at the last position the output gives it {other_p} (the followed one {followed_p})"
    box.caption(line + ".")
    box.button(
        f"Follow {model.token_name(other)} instead",
        key="follow_twin",
        on_click=_set_target,
        args=(lens.typable_token(model, other),),
        help="Switch the target to the other spelling.",
    )


def _percent(p: float) -> str:
    """A probability as a percentage, in scientific notation when 0.1% would read as 0.0%."""
    return f"{p:.1%}" if p >= 0.001 else f"{100 * p:.2g}%"


def _set_target(text: str) -> None:
    st.session_state["target"] = text
