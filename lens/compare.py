"""Comparing lens results: full last-position distributions and divergences between them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lens.backend import Backend
from lens.errors import LensError
from lens.result import LensResult
from lens.tokens import is_byte_level, piece_bytes


def last_position_log_probs(model: Backend, result: LensResult) -> np.ndarray:
    """Every row's full next-token log-distribution at the last position, [rows, vocab] float64.

    Only one position, so the whole vocabulary fits: rows x vocab is small.
    """
    if result.unembed_input is None:
        raise LensError("This result did not keep its unembedding inputs; run the lens with keep_unembed_input=True.")
    normed = torch.from_numpy(result.unembed_input[:, -1]).to(model.readout.device)
    logits = model.readout.logits(normed).double()
    return torch.log_softmax(logits, dim=-1).cpu().numpy()


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats along the last axis."""
    p = np.exp(log_p)
    return np.sum(p * (log_p - log_q), axis=-1)


def js_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits: symmetric, 0 for equal distributions, at most 1."""
    log_m = np.logaddexp(log_p, log_q) - np.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m)) / np.log(2.0)


def same_vocabulary(a: Backend, b: Backend) -> bool:
    """Distributions of two models are comparable only over one shared vocabulary."""
    return a is b or (a.d_vocab == b.d_vocab and a.tokenizer.get_vocab() == b.tokenizer.get_vocab())


def token_text(model: Backend, token_id: int) -> str:
    """A token as plain text, leading space kept, so another tokenizer can read it.

    ``tokenizer.decode`` drops SentencePiece's leading word boundary ("▁Lily" -> "Lily"),
    which would make a different token of it; the raw piece keeps the space.
    """
    piece = model.tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        raise LensError(f"Token id {token_id} is outside this model's vocabulary.")
    if is_byte_level(model.tokenizer):
        return piece_bytes(piece, True).decode("utf-8", errors="replace")
    if piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return model.tokenizer.decode([int(token_id)])
    return piece.replace("▁", " ")


def relative_depths(layers: Sequence[str]) -> list[float]:
    """Each row's depth as a fraction of the model's blocks: embedding 0, output 1.

    Models of different depth line up on this axis (the demo's output and a 12-layer
    model's output both sit at 1), where a shared layer axis would misalign them.
    Row names come from lens.backend.lens_rows: "embed", "L{i} attn", "L{i}", "L{i} (output)".
    """
    n_blocks = int(layers[-1].split()[0][1:]) + 1
    depths = []
    for name in layers:
        if name == "embed":
            depths.append(0.0)
            continue
        block = int(name.split()[0][1:])
        depths.append((block + (0.5 if name.endswith("attn") else 1.0)) / n_blocks)
    return depths


def aligned_difference(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    """B - A over the last ``width`` positions of two [rows, positions] arrays of equal depth."""
    if a.shape[0] != b.shape[0]:
        raise LensError("Runs of different depth have no cell-by-cell difference.")
    return b[:, -width:].astype(np.float64) - a[:, -width:].astype(np.float64)
