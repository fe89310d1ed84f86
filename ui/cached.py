"""Cached engine calls. The model loads once per process; results are cached with a bound.

``runs`` counts real lens runs (cache misses), so tests can check that display changes
never run the model again.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import streamlit as st

import lens
from lens.compare import last_position_log_probs
from lens.tuned import TunedLens
from ui import ndif
from ui.lenses import HUB_PREFIX

TOP_K_COMPUTED = 20  # computed once; the top-k slider only slices it
runs: Counter[str] = Counter()


class LensQuery(NamedTuple):
    """Everything that decides a lens result (and so its cache entry)."""

    model_name: str
    prompt: str
    prepend_bos: bool | None
    points: tuple[str, ...]
    lens_source: str | None = None  # a tuned lens folder or hub:<model>; None is the logit lens


@st.cache_resource(max_entries=2, show_spinner=False)
def model(name: str, _progress=None) -> lens.LensModel | lens.NnsightModel:
    """One shared model per name per process; the engine's lock serialises its runs."""
    if ndif.is_remote(name):
        return ndif.load(name, _progress)
    return lens.load_model(name, progress=_progress)


@st.cache_resource(max_entries=4, show_spinner=False)
def tuned_lens(source: str) -> TunedLens:
    return TunedLens.load(source.removeprefix(HUB_PREFIX))


def _lens(source: str | None) -> TunedLens | None:
    return None if not source else tuned_lens(source)


@st.cache_data(max_entries=32, show_spinner=False)
def lens_result(query: LensQuery) -> lens.LensResult:
    runs["lens"] += 1
    return lens.run_lens(
        model(query.model_name),
        query.prompt,
        top_k=TOP_K_COMPUTED,
        prepend_bos=query.prepend_bos,
        points=query.points,
        keep_unembed_input=True,
        lens=_lens(query.lens_source),
    )


@st.cache_data(max_entries=32, show_spinner=False)
def ndif_result(query: LensQuery, targets: tuple[str | int, ...], _progress=None) -> lens.LensResult:
    """A run on NDIF with its targets: the final-norm outputs stay there, so new targets mean a new run."""
    runs["lens"] += 1
    return lens.run_lens(
        model(query.model_name),
        query.prompt,
        top_k=TOP_K_COMPUTED,
        targets=list(targets),
        prepend_bos=query.prepend_bos,
        points=query.points,
        lens=_lens(query.lens_source),
        progress=_progress,
    )


@st.cache_data(max_entries=64, show_spinner=False)
def with_targets(query: LensQuery, targets: tuple[str | int, ...]) -> lens.LensResult:
    """The cached result with these targets: no forward pass, see lens.retarget."""
    runs["retarget"] += 1
    return lens.retarget(model(query.model_name), lens_result(query), list(targets))


@st.cache_data(max_entries=32, show_spinner=False)
def last_log_probs(query: LensQuery):
    return last_position_log_probs(model(query.model_name), lens_result(query))


@st.cache_data(max_entries=16, show_spinner=False)
def corpus(
    model_name: str,
    texts: tuple[str, ...],
    points: tuple[str, ...],
    max_tokens: int,
    lens_source: str | None = None,
    _progress=None,
):
    """Corpus statistics, cached by content; ``_progress`` hears (tokens done, expected, seconds left)."""
    if ndif.is_remote(model_name):
        raise lens.LensError(f"Corpus statistics {ndif.LOCAL_ONLY}")
    runs["corpus"] += 1
    return lens.corpus_stats(
        model(model_name),
        list(texts),
        points=points,
        max_tokens=max_tokens,
        lens=_lens(lens_source),
        progress=_progress,
    )
