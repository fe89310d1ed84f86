"""Cached engine calls, bounded by memory. Models load once per process and are shared.

Results live in one least-recently-used cache bounded by the bytes of their arrays
(``LENS_CACHE_MB``): a count bound let 32 results of 256 tokens reach 2.3 GB. Models
are kept while their weights total at most ``LENS_MODEL_CACHE_MB``, so switching among
a few small models doesn't reload each time. Entries are returned as is, not copied:
results are never modified in place (the pages use ``dataclasses.replace``).

``runs`` counts real lens runs (cache misses), so tests can check that display changes
never run the model again.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import fields
from typing import NamedTuple, TypeVar

import numpy as np
import streamlit as st

import lens
from lens.compare import last_position_log_probs
from lens.tuned import TunedLens
from ui import config, ndif
from ui.lenses import HUB_PREFIX

TOP_K_COMPUTED = 20  # computed once; the top-k slider only slices it
MB = 2**20
runs: Counter[str] = Counter()
T = TypeVar("T")


class LensQuery(NamedTuple):
    """Everything that decides a lens result (and so its cache entry)."""

    model_name: str
    prompt: str
    prepend_bos: bool | None
    points: tuple[str, ...]
    lens_source: str | None = None  # a tuned lens folder or hub:<model>; None is the logit lens


def _owner(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def result_arrays(result: lens.LensResult) -> list[np.ndarray]:
    return [v for f in fields(result) if isinstance(v := getattr(result, f.name), np.ndarray)]


def model_bytes(model: lens.LensModel | lens.NnsightModel) -> int:
    """Bytes of the weights held in this process (an NDIF model's are on the meta device: none)."""
    module = model.bridge if isinstance(model, lens.LensModel) else model.wrapper._module
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


class BoundedCache:
    """Least-recently-used values within a byte budget; the newest entry always stays.

    ``size(value)`` lists what a value holds as (identity, bytes) pairs, so arrays that
    several entries share (a retargeted result keeps its base's arrays) count once.
    Each key is computed once at a time: two sessions asking for the same model wait for
    one load instead of loading it twice.
    """

    def __init__(self, size: Callable[[object], list[tuple[int, int]]]) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], T], limit_bytes: int) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            with self._lock:
                self._entries[key] = value
                self._evict(limit_bytes)
        return value

    def nbytes(self) -> int:
        held: dict[int, int] = {}
        for value in self._entries.values():
            held.update(self._size(value))
        return sum(held.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self, limit_bytes: int) -> None:
        while len(self._entries) > 1 and self.nbytes() > limit_bytes:
            self._entries.popitem(last=False)


results = BoundedCache(lambda result: [(id(a := _owner(x)), a.nbytes) for x in result_arrays(result)])
models = BoundedCache(lambda m: [(id(m), model_bytes(m))])


def model(name: str, _progress=None) -> lens.LensModel | lens.NnsightModel:
    """One shared model per name per process; the engine's lock serialises its runs."""

    def load() -> lens.LensModel | lens.NnsightModel:
        return ndif.load(name, _progress) if ndif.is_remote(name) else lens.load_model(name, progress=_progress)

    return models.get(name, load, config.limits().model_cache_mb * MB)


@st.cache_resource(max_entries=4, show_spinner=False)
def tuned_lens(source: str) -> TunedLens:
    return TunedLens.load(source.removeprefix(HUB_PREFIX))


def _lens(source: str | None) -> TunedLens | None:
    return None if not source else tuned_lens(source)


def lens_result(query: LensQuery) -> lens.LensResult:
    def compute() -> lens.LensResult:
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

    return results.get(("lens", query), compute, config.limits().cache_mb * MB)


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


def with_targets(query: LensQuery, targets: tuple[str | int, ...]) -> lens.LensResult:
    """The cached result with these targets: no forward pass, see lens.retarget."""

    def compute() -> lens.LensResult:
        runs["retarget"] += 1
        return lens.retarget(model(query.model_name), lens_result(query), list(targets))

    return results.get(("targets", query, targets), compute, config.limits().cache_mb * MB)


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
