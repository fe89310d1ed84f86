"""Every cache of the app, each bounded by bytes. Models load once per process and are shared.

Two least-recently-used caches: ``models`` (loaded models and tuned lenses, by their
weights, within ``LENS_MODEL_CACHE_MB``) and ``results`` (lens results, attribution
writes, attention, corpus tables, within ``LENS_CACHE_MB``): a count bound let 32 results
of 256 tokens reach 2.3 GB. Entries are returned as is, not copied: results are never
modified in place (the pages use ``dataclasses.replace``).

``runs`` counts real computations (cache misses), so tests can check that display
changes never run the model again.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import fields, is_dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
import torch

import lens
from lens.sources import resolve_model_source
from ui import config, lenses
from ui import models as model_picker

TOP_K_COMPUTED = 20  # computed once; the top-k slider only slices it
MB = 2**20
runs: Counter[str] = Counter()
T = TypeVar("T")
Progress = Callable[..., None]


class LensQuery(NamedTuple):
    """Everything that decides a lens result (and so its cache entry)."""

    model_name: str
    prompt: str
    prepend_bos: bool | None
    points: tuple[str, ...]
    lens_source: str | None = None  # a tuned or Jacobian lens (see ui.lenses); None is the logit lens


def held(value: object, depth: int = 0) -> Iterator[tuple[int, int]]:
    """(identity, bytes) of every array, tensor, table and module a cached value holds.

    An array's identity is the array owning its memory, so entries that share arrays (a
    retargeted result keeps its base's) count them once.
    """
    if isinstance(value, np.ndarray):
        while isinstance(value.base, np.ndarray):
            value = value.base
        yield id(value), value.nbytes
    elif isinstance(value, torch.Tensor):
        yield value.untyped_storage().data_ptr(), value.untyped_storage().nbytes()
    elif isinstance(value, pd.DataFrame):
        yield id(value), int(value.memory_usage(deep=True).sum())
    elif isinstance(value, torch.nn.Module):
        yield from ((id(p), p.numel() * p.element_size()) for p in value.parameters() if not p.is_meta)
    elif isinstance(value, lens.JacobianLens):
        yield from ((id(m), m.numel() * m.element_size()) for m in value.fitted.jacobians.values())
    elif isinstance(value, (lens.LensModel, lens.NnsightModel)):
        yield id(value), model_bytes(value)
    elif depth < 3 and is_dataclass(value):
        for f in fields(value):
            yield from held(getattr(value, f.name), depth + 1)
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            yield from held(item, depth + 1)


def result_arrays(result: lens.LensResult) -> list[np.ndarray]:
    return [v for f in fields(result) if isinstance(v := getattr(result, f.name), np.ndarray)]


def model_bytes(model: lens.LensModel | lens.NnsightModel) -> int:
    """Bytes of the weights held in this process (an NDIF model's are on the meta device: none)."""
    module = model.bridge if isinstance(model, lens.LensModel) else model.wrapper._module
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


class BoundedCache:
    """Least-recently-used values within a byte budget; the newest entry always stays.

    ``size(value)`` lists what a value holds as (identity, bytes) pairs, so arrays that
    several entries share count once. Each key is computed once at a time: its lock is
    held until the value is stored, so two sessions asking for one model wait for one
    load instead of loading it twice.
    """

    def __init__(self, size: Callable[[object], list[tuple[int, int]]] = lambda value: list(held(value))) -> None:
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
                    self._entries.move_to_end(key)
                    return self._entries[key]
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    self._key_locks.pop(key, None)
                raise
            with self._lock:  # stored before the key's lock goes: a waiter finds the value
                self._entries[key] = value
                self._key_locks.pop(key, None)
                self._evict(limit_bytes)
        return value

    def nbytes(self) -> int:
        held_now: dict[int, int] = {}
        for value in self._entries.values():
            held_now.update(self._size(value))
        return sum(held_now.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self, limit_bytes: int) -> None:
        while len(self._entries) > 1 and self.nbytes() > limit_bytes:
            self._entries.popitem(last=False)


results = BoundedCache()
models = BoundedCache()


def _results_limit() -> int:
    return config.server().cache_mb * MB


def model(name: str, _progress: Progress | None = None) -> lens.LensModel | lens.NnsightModel:
    """One shared model per name per process; the engine's lock serialises its runs."""
    server = config.server()
    return models.get(name, lambda: model_picker.load(name, server, _progress), server.model_cache_mb * MB)


def tuned_lens(source: str) -> lens.TunedLens:
    return models.get(
        ("tuned", source),
        lambda: lens.TunedLens.load(source.removeprefix(lenses.HUB_PREFIX)),
        config.server().model_cache_mb * MB,
    )


def jacobian_lens(source: str) -> lens.JacobianLens:
    """A Jacobian lens file (``jlens:<path>``) or a model's published lens (``jlens-hub:<model>``)."""
    server = config.server()

    def load() -> lens.JacobianLens:
        if source.startswith(lenses.JACOBIAN_HUB_PREFIX):
            name = source.removeprefix(lenses.JACOBIAN_HUB_PREFIX)
            return lens.published_jacobian_lens(name, max_bytes=server.max_model_bytes)
        return lens.JacobianLens.load(source.removeprefix(lenses.JACOBIAN_PREFIX), max_bytes=server.max_model_bytes)

    return models.get(("jacobian", source), load, server.model_cache_mb * MB)


def _lens(source: str | None) -> lens.Lens | None:
    if not source:
        return None
    return jacobian_lens(source) if lenses.kind(source) == "jacobian" else tuned_lens(source)


def _run_lens(query: LensQuery, **options) -> lens.LensResult:
    runs["lens"] += 1
    return lens.run_lens(
        model(query.model_name),
        query.prompt,
        top_k=TOP_K_COMPUTED,
        prepend_bos=query.prepend_bos,
        points=query.points,
        lens=_lens(query.lens_source),
        **options,
    )


def lens_result(query: LensQuery) -> lens.LensResult:
    return results.get(("lens", query), lambda: _run_lens(query, keep_unembed_input=True), _results_limit())


def remote_result(
    query: LensQuery, targets: tuple[str | int, ...], _progress: Progress | None = None
) -> lens.LensResult:
    """A run that keeps no residuals here (NDIF), with its targets: new targets mean a new run."""
    return results.get(
        ("remote", query, targets),
        lambda: _run_lens(query, targets=list(targets), progress=_progress),
        _results_limit(),
    )


def with_targets(query: LensQuery, targets: tuple[str | int, ...]) -> lens.LensResult:
    """The cached result with these targets: no forward pass, see lens.retarget."""

    def compute() -> lens.LensResult:
        runs["retarget"] += 1
        return lens.retarget(model(query.model_name), lens_result(query), list(targets))

    return results.get(("targets", query, targets), compute, _results_limit())


def last_log_probs(query: LensQuery) -> np.ndarray:
    def compute() -> np.ndarray:
        return lens.last_position_log_probs(model(query.model_name), lens_result(query))

    return results.get(("last_log_probs", query), compute, _results_limit())


def cell_writes(query: LensQuery, row: str, position: int) -> lens.CellWrites:
    """Every component's write at one cell: one forward pass; targets and contrasts reuse it."""

    def compute() -> lens.CellWrites:
        runs["attribution"] += 1
        return lens.cell_writes(
            model(query.model_name),
            query.prompt,
            position=position,
            row=row,
            prepend_bos=query.prepend_bos,
            lens=_lens(query.lens_source),
        )

    return results.get(("writes", query, row, position), compute, _results_limit())


def head_attention(query: LensQuery, layer: int, head: int, position: int) -> pd.DataFrame:
    def compute() -> pd.DataFrame:
        runs["attention"] += 1
        return lens.head_attention(
            model(query.model_name), query.prompt, layer=layer, head=head, position=position,
            prepend_bos=query.prepend_bos,
        )  # fmt: skip

    return results.get(("attention", query, layer, head, position), compute, _results_limit())


def corpus(
    model_name: str,
    texts: tuple[str, ...],
    points: tuple[str, ...],
    max_tokens: int,
    lens_source: str | None = None,
    _progress: Progress | None = None,
) -> pd.DataFrame:
    """Corpus statistics, cached by content; ``_progress`` hears (tokens done, expected, seconds left)."""

    def compute() -> pd.DataFrame:
        runs["corpus"] += 1
        return lens.corpus_stats(
            model(model_name),
            list(texts),
            points=points,
            max_tokens=max_tokens,
            lens=_lens(lens_source),
            progress=_progress,
        )

    return results.get(("corpus", model_name, texts, points, max_tokens, lens_source), compute, _results_limit())


class PatchQuery(NamedTuple):
    """Everything that decides an activation-patching sweep."""

    model_name: str
    clean: str
    corrupted: str
    prepend_bos: bool | None
    target: str | int
    contrast: str | int | None
    point: str
    metric: str


def patch_result(query: PatchQuery, _progress: Progress | None = None) -> lens.PatchResult:
    """A sweep of every (layer, position), within the server's LENS_MAX_PATCH_CELLS (part of the key)."""
    max_cells = config.server().max_patch_cells

    def compute() -> lens.PatchResult:
        runs["patch"] += 1
        return lens.patch(
            model(query.model_name),
            query.clean,
            query.corrupted,
            target=query.target,
            contrast=query.contrast,
            point=query.point,
            metric=query.metric,
            prepend_bos=query.prepend_bos,
            max_cells=max_cells,
            progress=_progress,
        )

    return results.get(("patch", query, max_cells), compute, _results_limit())


def patched_lens(query: PatchQuery, layer: int, position: int) -> lens.LensResult:
    """The lens view of one cell's patched run (one forward pass of each prompt)."""

    def compute() -> lens.LensResult:
        runs["patched_lens"] += 1
        return lens.patched_lens(model(query.model_name), patch_result(query), layer, position)

    return results.get(("patched_lens", query, layer, position), compute, _results_limit())


def prompt_set(
    model_name: str,
    kind: str,
    text: str,
    max_prompts: int,
    lens_source: str | None = None,
    _progress: Callable[[int, int, float | None], None] | None = None,
) -> lens.PromptSetResult:
    """A prompt set (CSV or JSONL ``text``) read by the lens, cached by content; ``_progress`` hears prompts done."""

    def compute() -> lens.PromptSetResult:
        runs["prompt_set"] += 1
        rows = lens.read_prompt_rows(text, kind)
        return lens.prompt_set(
            model(model_name), rows, lens=_lens(lens_source), max_prompts=max_prompts, progress=_progress
        )

    return results.get(("prompt_set", model_name, kind, text, max_prompts, lens_source), compute, _results_limit())


@st.cache_data(ttl=120, max_entries=64, show_spinner=False)
def unavailable(model_id: str) -> str | None:
    """Why a model can't be loaded here without trying (not cached and no hub), or None.

    Kept two minutes, not for good: the network may come back. Each entry is one line.
    """
    try:
        resolve_model_source(model_id)
    except lens.LensError as exc:
        return str(exc)
    return None


@st.cache_resource(max_entries=8, show_spinner=False)
def chat_tokenizer(model_id: str):
    """The tokenizer of a model on this machine when it has a chat template, else None.

    Read on its own (a fraction of a second, no weights), so the sidebar can offer the
    template before the model loads. A model that isn't here (NDIF, uncached) has none.
    """
    from transformers import AutoTokenizer

    try:
        source, _ = resolve_model_source(model_id)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer here: no template to offer
        return None
    return tokenizer if getattr(tokenizer, "chat_template", None) else None
