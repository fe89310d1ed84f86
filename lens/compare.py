"""Comparing lens results: full last-position distributions and divergences between them."""

from __future__ import annotations

import numpy as np
import torch

from lens.errors import LensError
from lens.model import LensModel
from lens.result import LensResult


def last_position_log_probs(model: LensModel, result: LensResult) -> np.ndarray:
    """Every row's full next-token log-distribution at the last position, [rows, vocab] float64.

    Only one position, so the whole vocabulary fits: rows x vocab is small.
    """
    if result.unembed_input is None:
        raise LensError("This result did not keep its unembedding inputs; run the lens with keep_unembed_input=True.")
    normed = torch.from_numpy(result.unembed_input[:, -1]).to(model.unembed_weight.device)
    logits = model.logits_from_normed(normed).double()
    return torch.log_softmax(logits, dim=-1).cpu().numpy()


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats along the last axis."""
    p = np.exp(log_p)
    return np.sum(p * (log_p - log_q), axis=-1)


def js_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits: symmetric, 0 for equal distributions, at most 1."""
    log_m = np.logaddexp(log_p, log_q) - np.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m)) / np.log(2.0)


def same_vocabulary(a: LensModel, b: LensModel) -> bool:
    """Distributions of two models are comparable only over one shared vocabulary."""
    return a is b or (a.d_vocab == b.d_vocab and a.tokenizer.get_vocab() == b.tokenizer.get_vocab())
