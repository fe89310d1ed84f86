"""Jacobian lens (Gurnee et al. 2026): block ℓ's output read as ``W_U · norm(J_ℓ · h_ℓ)``.

``J_ℓ`` is the corpus-averaged Jacobian from block ℓ's output to the final block's
output, so the lens asks what the residual would *do* to the output to first order,
rather than what it already *says* through the unembedding (the logit lens is J = I).

The estimator, the artifact format and the published-lens registry are TransformerLens
4.3's (``transformer_lens.tools.analysis.JacobianLens``, after Anthropic's reference
code); this module puts a fitted lens under the :class:`~lens.lenses.Lens` interface so
the engine reads it like any other lens, and adds what a server needs around it: a
budget, progress and cancel for fitting, and files checked before they are read.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lens.backend import Backend, Row, check_backend
from lens.budget import check_fits
from lens.errors import LensError
from lens.lenses import Lens

if TYPE_CHECKING:
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

DEFAULT_MAX_PROMPTS = 100  # the reference code finds ~100 prompts of 128 tokens usable
DEFAULT_MAX_TOKENS = 128
# Early positions are attention sinks with atypical residuals; the reference skips 16.
SKIP_FIRST_POSITIONS = 16
MIN_TOKENS = SKIP_FIRST_POSITIONS + 2  # at least one position left to average over
# The fit replicates a prompt once per output dimension it backpropagates at a time;
# this many bytes of activations per replica-batch keeps memory modest on a small server.
FIT_BATCH_BYTES = 512 * 2**20
PICKLE_LIMIT_BYTES = 16 * 2**20  # a lens file's structure and metadata; the matrices are separate entries
DASHBOARD_KEY = "logit_lens_dashboard"  # our additive metadata: what the lens was fitted against
PROBE_TOKENS = 16
PROBE_TOLERANCE = 1e-2

# progress(prompts_done, prompts_total, seconds_left)
FitProgress = Callable[[int, int, "float | None"], None]


class FitCancelled(LensError):
    """A fit stopped by its caller; ``done`` prompts of ``total`` were fitted and nothing was returned."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"Fitting the Jacobian lens was cancelled after {done} of {total} prompts.")
        self.done, self.total = done, total


class JacobianLens(Lens):
    """A fitted TransformerLens Jacobian lens, read through the dashboard's engine.

    Rows it reads are block outputs (``resid_post``) of its fitted source layers; the
    final block's output is the model's own and never transformed. The embedding row and
    after-attention rows have no Jacobian in this lens (TransformerLens fits block outputs
    only), so they are refused rather than silently read as the logit lens.
    """

    kind = "jacobian"

    def __init__(self, fitted: TLJacobianLens, source: str = "") -> None:
        from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

        if not isinstance(fitted, TLJacobianLens):
            raise LensError(f"A JacobianLens wraps a TransformerLens JacobianLens, not {type(fitted).__name__}.")
        for layer, matrix in fitted.jacobians.items():
            if not torch.isfinite(matrix).all():
                raise LensError(f"This Jacobian lens's matrix J[{layer}] holds NaN or infinite values.")
        self.fitted = fitted
        self.source = source

    @property
    def d_model(self) -> int:
        return self.fitted.d_model

    @property
    def source_layers(self) -> list[int]:
        return self.fitted.source_layers

    @property
    def n_prompts(self) -> int:
        return self.fitted.n_prompts

    @property
    def metadata(self) -> dict:
        return self.fitted.metadata

    @property
    def description(self) -> str:
        return f"Jacobian lens ({self.n_prompts} prompts)"

    def transform(self, row: Row, resid: torch.Tensor) -> torch.Tensor:
        """``J_ℓ · h`` for block ℓ's output, in fp32 as TransformerLens's readout does."""
        if not row.hook.endswith("hook_resid_post"):
            raise LensError(
                f"The Jacobian lens reads block outputs only; it has no matrix for the {row.label!r} row "
                "(embeddings or after-attention). Turn those rows off, or use the logit or tuned lens."
            )
        if row.layer not in self.fitted.jacobians:
            layers = self.source_layers
            raise LensError(
                f"This Jacobian lens has no matrix for layer {row.layer}; it was fitted for layers "
                f"{layers[0]}–{layers[-1]}."
            )
        return self.fitted.transport(resid, row.layer)

    def check_compatible(self, model: Backend) -> None:
        """Refuse, in one line, a lens whose shapes or unembedding are not this model's."""
        model.capabilities.require("local_weights", "the Jacobian lens (it reads the weights here)", model.name)
        if self.d_model != model.d_model:
            raise LensError(
                f"This Jacobian lens was fitted for d_model {self.d_model}; '{model.name}' has d_model {model.d_model}."
            )
        final = model.n_layers - 1
        target = self.metadata.get("target_layer", final)
        if self.source_layers[-1] >= final or target != final:
            raise LensError(
                f"This Jacobian lens maps layers {self.source_layers[0]}–{self.source_layers[-1]} to layer {target}; "
                f"'{model.name}' has {model.n_layers} layers, so it was fitted for another model."
            )
        recorded = self.metadata.get(DASHBOARD_KEY)
        if (
            isinstance(recorded, dict)
            and "unembed_probe" in recorded
            and (
                recorded.get("d_vocab") != model.d_vocab
                or not _probe_matches(recorded["unembed_probe"], unembed_probe(model))
            )
        ):
            raise LensError(
                f"This Jacobian lens was fitted on a model with another unembedding than '{model.name}' "
                f"(vocabulary {recorded.get('d_vocab')} tokens against {model.d_vocab}, or other weights)."
            )

    def save(self, path: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
        """Write TransformerLens's (the reference code's) artifact format; fp32 so it reads back as fitted."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fitted.save(str(path), dtype=dtype)
        return path

    @classmethod
    def load(cls, path: str | Path, *, max_bytes: int | None = None) -> JacobianLens:
        """A lens file (TransformerLens's artifact or fit-checkpoint format), or one LensError line.

        The archive's entry sizes are read from its directory and checked against ``max_bytes``
        (default: the memory still free) before a tensor is allocated; tensors are read with ``weights_only``, so a
        pickled payload never runs; NaN or infinite matrices are refused by name.
        """
        from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

        path = Path(path)
        if not path.is_file():
            raise LensError(f"There is no Jacobian lens file at '{path}'.")
        _check_archive(path, max_bytes)
        try:
            fitted = TLJacobianLens.load(str(path))
        except Exception as exc:  # noqa: BLE001 - torch and TransformerLens raise many types
            raise LensError(f"'{path.name}' is not a Jacobian lens file: {_first_line(exc)}") from exc
        return cls(fitted, source=str(path))


def _check_archive(path: Path, max_bytes: int | None) -> None:
    """Sizes from the zip directory torch.save writes, before anything is unpickled or allocated."""
    if not zipfile.is_zipfile(path):
        raise LensError(f"'{path.name}' is not a Jacobian lens file: it is not a torch.save archive.")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LensError(f"'{path.name}' is not a Jacobian lens file: {_first_line(exc)}") from exc
    pickles = [e for e in entries if e.filename.endswith(".pkl")]
    if len(pickles) != 1:
        raise LensError(f"'{path.name}' is not a Jacobian lens file: it holds no single torch.save record.")
    if pickles[0].file_size > PICKLE_LIMIT_BYTES:
        raise LensError(
            f"'{path.name}' is not a Jacobian lens file: its record is {pickles[0].file_size / 2**20:,.0f} MB "
            f"(at most {PICKLE_LIMIT_BYTES / 2**20:,.0f} MB)."
        )
    stored = sum(e.file_size for e in entries if "/data/" in e.filename)
    # Matrices may be stored in fp16 and are read as fp32: count two bytes a value, the larger reading.
    check_fits(stored / 2, f"The Jacobian lens '{path.name}'", max_bytes)


def unembed_probe(model: Backend) -> list[float]:
    """A few numbers that pin down a model's unembedding: fixed token rows against a fixed direction.

    Saved with a lens fitted here, so a lens is matched to a model by its weights, not its
    name; fp16 and fp32 copies of one model agree to well within :data:`PROBE_TOLERANCE`.
    """
    rows = model.readout.unembed_rows
    ids = torch.linspace(0, rows.shape[0] - 1, PROBE_TOKENS).round().long().to(rows.device)
    direction = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    picked = rows[ids].double().cpu()
    return [float(v) for v in picked @ (direction / direction.norm())] + [float(n) for n in picked.norm(dim=1)]


def _probe_matches(recorded: object, current: list[float]) -> bool:
    if not isinstance(recorded, list) or len(recorded) != len(current):
        return False
    values, norms = np.asarray(current[:PROBE_TOKENS]), np.asarray(current[PROBE_TOKENS:])
    try:
        old = np.asarray(recorded, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.abs(old[:PROBE_TOKENS] - values) <= PROBE_TOLERANCE * (norms + 1e-6)))


def fit_jacobian_lens(
    model: Backend,
    texts: Sequence[str],
    *,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: FitProgress | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> JacobianLens:
    """Fit a Jacobian lens on ``texts`` with TransformerLens's estimator, within a budget.

    The texts are cut into windows of ``max_tokens`` tokens, at most ``max_prompts`` of
    them; each window is one prompt of TransformerLens's ``JacobianLens.fit``, and the
    per-prompt lenses are combined with its ``merge`` (a prompt-weighted mean, the same
    estimate as one fit over all of them), so the caller hears progress, with the time
    left, after every prompt and can stop between prompts (``cancel``: an Event, or a
    function that returns True to stop; stopping raises :class:`FitCancelled`).
    """
    _check_whole("max_prompts", max_prompts, 1)
    _check_whole("max_tokens", max_tokens, MIN_TOKENS)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Iterable):
        raise LensError(f"texts must be a list of strings, not {type(texts).__name__}.")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise LensError("Give some text to fit the Jacobian lens on.")
    model = check_backend(model)
    model.capabilities.require("local_weights", "Jacobian-lens fitting (it needs the weights here)", model.name)
    model.capabilities.require("gradients", "Jacobian-lens fitting (it backpropagates through the model)", model.name)
    bridge = _fit_bridge(model)
    prompts = prompt_windows(model, texts, max_tokens, max_prompts)
    if not prompts:
        raise LensError(
            f"The texts hold fewer than {MIN_TOKENS} tokens; the Jacobian lens skips the first "
            f"{SKIP_FIRST_POSITIONS} positions of each prompt, so give longer text."
        )
    stop = _stop_check(cancel)
    corpus = "sha256:" + hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]
    metadata = {DASHBOARD_KEY: {"d_vocab": model.d_vocab, "unembed_probe": unembed_probe(model)}}
    dim_batch = fit_dim_batch(model, bridge.cfg, max_tokens)
    fitted = None
    started = time.monotonic()
    for done, prompt in enumerate(prompts):
        if stop():
            raise FitCancelled(done, len(prompts))
        one = _fit_one(model, bridge, prompt, corpus, dim_batch, max_tokens, metadata)
        fitted = one if fitted is None else type(one).merge([fitted, one])
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(done + 1, len(prompts), elapsed / (done + 1) * (len(prompts) - done - 1))
    return JacobianLens(fitted, source=f"fitted on {fitted.n_prompts} prompts")


def _fit_one(model, bridge, prompt: str, corpus: str, dim_batch: int, max_tokens: int, metadata: dict):
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    with model.lock, warnings.catch_warnings():
        # A prompt too short after re-tokenizing is skipped by TransformerLens with a warning; the
        # windows are long enough that this is rare, and the count it leaves is in n_prompts.
        warnings.simplefilter("ignore")
        try:
            return TLJacobianLens.fit(
                bridge,
                [prompt],
                corpus=corpus,
                dim_batch=dim_batch,
                max_seq_len=max_tokens,
                skip_first_positions=SKIP_FIRST_POSITIONS,
                show_progress=False,
                metadata=metadata,
            )
        except (TypeError, ValueError) as exc:
            raise LensError(f"TransformerLens can't fit a Jacobian lens on '{model.name}': {_first_line(exc)}") from exc


def _fit_bridge(model: Backend):
    """The TransformerBridge the estimator runs on; other backends can read a J-lens but not fit one."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = getattr(model, "bridge", None)
    if not isinstance(bridge, TransformerBridge):
        raise LensError(
            f"Fitting a Jacobian lens runs TransformerLens's estimator; load '{model.name}' with the "
            "TransformerLens backend (the default) to fit one."
        )
    return bridge


def fit_dim_batch(model: Backend, cfg, max_tokens: int) -> int:
    """Output dimensions per backward pass: as many as fit FIT_BATCH_BYTES of replicated activations.

    The estimator replicates the prompt once per dimension in a pass; FLOPs are the same
    either way, but fewer, wider passes cost far less Python and kernel overhead.
    """
    heads = int(getattr(cfg, "n_heads", 1) or 1)
    # Per replica, each block keeps ~28 residual-width and one [heads x positions] tensor per position
    # for the backward pass (measured: 13 MB a replica on the demo model at 128 tokens).
    per_replica = 4 * max_tokens * model.n_layers * (28 * model.d_model + heads * max_tokens)
    return int(max(1, min(model.d_model, FIT_BATCH_BYTES // max(per_replica, 1))))


def prompt_windows(model: Backend, texts: Sequence[str], max_tokens: int, max_prompts: int) -> list[str]:
    """Up to ``max_prompts`` windows of ``max_tokens`` tokens over the texts in order, as text.

    Texts run on into one another (as in tuned-lens training), so short lines still make
    whole windows; TransformerLens's fit takes strings, so each window is decoded back.
    A last window shorter than :data:`MIN_TOKENS` is dropped.
    """
    body = max_tokens - 1  # the estimator prepends a start token where the model uses one
    windows: list[str] = []
    buffer: list[int] = []
    for text in texts:
        buffer += model.tokenizer(text, add_special_tokens=False)["input_ids"]
        while len(buffer) >= body and len(windows) < max_prompts:
            windows.append(model.tokenizer.decode(buffer[:body]))
            buffer = buffer[body:]
        if len(windows) >= max_prompts:
            return windows
    if len(buffer) >= MIN_TOKENS:
        windows.append(model.tokenizer.decode(buffer))
    return windows


def _stop_check(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise LensError(f"cancel must be a threading.Event or a function, not {type(cancel).__name__}.")


def _check_whole(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise LensError(f"{name} must be a whole number of at least {least}, not {value!r}.")


def published_jacobian_lens(model_name: str, *, max_bytes: int | None = None) -> JacobianLens:
    """The published lens for a model (``neuronpedia/jacobian-lens``), from the hub or its local cache.

    Resolved through TransformerLens's registry, the way ``JacobianLens.from_pretrained``
    does, then read with :meth:`JacobianLens.load`'s checks. Without the hub, a lens
    downloaded once before is read from the cache; otherwise, or when no lens is published
    for the model, one line says so and how to fit one.
    """
    from transformer_lens.tools.analysis import jacobian_lens as tl_jacobian

    from lens.sources import hub_offline
    from lens.tuned import model_key

    if not isinstance(model_name, str) or not model_name.strip():
        raise LensError(f"A published lens is found by model name, not {model_name!r}.")
    how = "fit one with lens.fit_jacobian_lens(model, texts), or on the Lenses page"
    entry = tl_jacobian._resolve_registry_entry(model_name) or tl_jacobian._resolve_registry_entry(
        model_key(model_name)
    )
    if entry is None:
        raise LensError(f"No Jacobian lens is published for '{model_name}' and none is fitted here: {how}.")
    repo_id, filename = entry
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id, filename, revision=tl_jacobian._registry_revision(), local_files_only=hub_offline()
        )
    except Exception as exc:  # offline, missing file, network: one line for people
        raise LensError(
            f"The published Jacobian lens for '{model_name}' is not cached here and the Hugging Face hub "
            f"can't be reached; connect once to download it, or {how}."
        ) from exc
    return JacobianLens.load(path, max_bytes=max_bytes)


def has_published_lens(model_name: str) -> bool:
    """Whether TransformerLens's registry lists a published Jacobian lens for this model."""
    from transformer_lens.tools.analysis import jacobian_lens as tl_jacobian

    from lens.tuned import model_key

    return any(tl_jacobian._resolve_registry_entry(n) is not None for n in (model_name, model_key(model_name)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()[:300]
