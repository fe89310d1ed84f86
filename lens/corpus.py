"""Lens statistics over a corpus: how well each row predicts, averaged over many tokens.

Texts stream through one window at a time, so memory holds one window's statistics,
never the corpus. Every window is read by the same exact, chunked engine as one prompt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lens.backend import Backend, Row, check_backend, lens_rows
from lens.engine import capture_normed_batch, cell_statistics
from lens.errors import LensError
from lens.lenses import Lens, check_lens
from lens.tokens import is_byte_level, piece_bytes, uses_bos

DEFAULT_MAX_TOKENS = 20_000
BATCH_TOKENS = 1024  # padded tokens per forward pass: short texts share one, long windows go alone
COLUMNS = [
    "layer",
    "n_tokens",
    "cross_entropy",
    "bits_per_byte",
    "entropy",
    "kl_to_final",
    "top1_agreement",
    "top1_accuracy",
]
# progress(tokens_done, tokens_expected or None, seconds_left or None)
CorpusProgress = Callable[[int, "int | None", "float | None"], None]


@dataclass
class _Totals:
    """Running sums over every predicted token, per row."""

    n_rows: int
    n_tokens: int = 0
    n_bytes: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, per_cell: np.ndarray) -> None:
        self.sums[name] = self.sums.get(name, np.zeros(self.n_rows)) + per_cell.astype(np.float64).sum(axis=1)


def corpus_stats(
    model: Backend,
    texts: Iterable[str],
    *,
    points: Sequence[str] = ("resid_post",),
    max_tokens: int = DEFAULT_MAX_TOKENS,
    window: int | None = None,
    prepend_bos: bool | None = None,
    lens: Lens | None = None,
    progress: CorpusProgress | None = None,
) -> pd.DataFrame:
    """One row per lens row: mean next-token loss, bits per byte, entropy, KL, top-1 scores.

    A text longer than ``window`` (default: the model's context) is cut into windows,
    each read on its own (with BOS when the model uses it). At most ``max_tokens``
    tokens are read; ``frame.attrs`` says how many texts and tokens were read and
    whether the cap cut the corpus.
    """
    model = check_backend(model)
    lens = check_lens(lens)
    model.capabilities.require("local_weights", "corpus statistics (they read every cell here)", model.name)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 2:
        raise LensError(f"max_tokens must be a whole number of at least 2, not {max_tokens!r}.")
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer))):
        raise LensError(f"window must be a whole number of tokens, not {window!r}.")
    if isinstance(texts, str):
        texts = [texts]
    rows = lens_rows(model, points)
    use_bos = uses_bos(model, prepend_bos)
    window = min(model.n_ctx if window is None else window, model.n_ctx)
    if window < 2 + use_bos:
        raise LensError(f"A window of {window} tokens is too short to predict anything.")
    lens.check_compatible(model)
    if isinstance(texts, Sequence):
        for number, text in enumerate(texts, 1):
            _check_corpus_text(text, number)
    byte_level = is_byte_level(model.tokenizer)
    expected_chars = sum(len(t) for t in texts) if isinstance(texts, Sequence) else None
    totals = _Totals(len(rows))
    pending = _Batch(model, rows, lens, totals, byte_level)
    chars_done, n_texts, capped = 0, 0, False
    started = time.monotonic()

    def flush() -> None:
        nonlocal chars_done
        chars_done += pending.read()
        if progress is not None:
            progress(*_progress_figures(totals.n_tokens, chars_done, expected_chars, max_tokens, started))

    for number, text in enumerate(texts, 1):
        _check_corpus_text(text, number)
        if not text.strip():
            continue
        ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        n_texts += 1
        body = window - use_bos
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            budget = max_tokens - totals.n_tokens - pending.n_predicted
            if len(piece) - 1 + use_bos > budget:
                piece, capped = piece[: budget + 1 - use_bos], True
            fed = [model.tokenizer.bos_token_id] * use_bos + piece
            if len(fed) >= 2:
                if not pending.fits(fed):
                    flush()
                pending.add(fed)
            if capped:
                break
        pending.chars += len(text)
        if capped:
            break
    flush()
    if totals.n_tokens == 0:
        raise LensError("The texts hold no tokens to predict: give at least one text of two or more tokens.")
    frame = _frame(rows, totals)
    frame.attrs.update(n_texts=n_texts, n_tokens=totals.n_tokens, capped=capped, max_tokens=max_tokens)
    return frame


def _check_corpus_text(text: object, number: int) -> None:
    if not isinstance(text, str):
        raise LensError(f"Text {number} is {type(text).__name__}, not a string: corpus_stats reads a list of texts.")


class _Batch:
    """Windows waiting to be read in one forward pass, right-padded to the longest.

    Short texts each cost a whole forward pass when read one by one; batched, the cost
    follows the tokens. Causal attention means a position never sees the padding after
    it, so every real position reads exactly what it would alone.
    """

    def __init__(self, model: Backend, rows: Sequence[Row], lens: Lens, totals: _Totals, byte_level: bool) -> None:
        self.model, self.rows, self.lens, self.totals, self.byte_level = model, rows, lens, totals, byte_level
        self.windows: list[list[int]] = []
        self.chars = 0

    @property
    def n_predicted(self) -> int:
        return sum(len(w) - 1 for w in self.windows)

    def fits(self, fed: list[int]) -> bool:
        longest = max([len(fed), *(len(w) for w in self.windows)])
        return not self.windows or longest * (len(self.windows) + 1) <= BATCH_TOKENS

    def add(self, fed: list[int]) -> None:
        self.windows.append(fed)

    def read(self) -> int:
        """Add the batch's predictions to the totals; the characters of the texts it finished."""
        if self.windows:
            longest = max(len(w) for w in self.windows)
            # Padding repeats each window's last token: a pad or BOS id could be masked or treated specially.
            padded = [w + [w[-1]] * (longest - len(w)) for w in self.windows]
            normed = capture_normed_batch(self.model, padded, self.rows, self.lens)
            cells = torch.cat([normed[:, i, : len(w) - 1] for i, w in enumerate(self.windows)], dim=1)
            next_ids = [t for w in self.windows for t in w[1:]]
            _add_predictions(self.model, cells, next_ids, self.totals, self.byte_level)
        chars, self.windows, self.chars = self.chars, [], 0
        return chars


def _add_predictions(model, normed, next_ids: list[int], totals: _Totals, byte_level: bool) -> None:
    """Add predictions (each cell's position predicting ``next_ids`` there) to the totals."""
    stats = cell_statistics(model.readout, normed, 1, [], next_ids=next_ids)
    log_prob_next = stats["next_logits"] - stats["log_normalizer"]
    top1 = stats["top_ids"][..., 0]
    totals.add("cross_entropy", -log_prob_next)
    totals.add("entropy", stats["entropy"])
    totals.add("kl_to_final", stats["kl_to_final"])
    totals.add("top1_agreement", top1 == top1[-1])
    totals.add("top1_accuracy", top1 == np.asarray(next_ids)[None, :])
    totals.n_tokens += len(next_ids)
    pieces = model.tokenizer.convert_ids_to_tokens(next_ids)
    totals.n_bytes += sum(len(piece_bytes(p, byte_level)) for p in pieces)


def _frame(rows, totals: _Totals) -> pd.DataFrame:
    n = totals.n_tokens
    mean = {name: values / n for name, values in totals.sums.items()}
    frame = pd.DataFrame({"layer": [r.label for r in rows], "n_tokens": n, **mean})
    frame["bits_per_byte"] = totals.sums["cross_entropy"] / math.log(2) / max(totals.n_bytes, 1)
    return frame[COLUMNS]


def _progress_figures(done: int, chars_done: int, expected_chars: int | None, cap: int, started: float):
    """Tokens done, tokens expected (from the characters still to read), and seconds left."""
    if expected_chars is None or chars_done == 0:
        return done, None, None
    expected = min(cap, round(done * expected_chars / chars_done))
    elapsed = time.monotonic() - started
    left = elapsed * (expected - done) / done if done else None
    return done, expected, left
