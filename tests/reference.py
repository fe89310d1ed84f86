"""An independent logit lens, computed the slow obvious way on the Hugging Face model.

Forward hooks capture each block's output; the model's final norm and lm_head are
applied; the full softmax is taken in float64. Nothing here uses TransformerLens or
the engine.
"""

from __future__ import annotations

import numpy as np
import torch


def _blocks_and_norm(hf_model):
    base = hf_model.base_model
    for blocks_name, norm_name in (("h", "ln_f"), ("layers", "norm"), ("layers", "final_layer_norm")):
        if hasattr(base, blocks_name) and hasattr(base, norm_name):
            return getattr(base, blocks_name), getattr(base, norm_name)
    raise AssertionError(f"reference does not know {type(hf_model).__name__}")


def reference_lens(hf_model, token_ids, top_k: int):
    """Per-row log-probabilities [rows, positions, vocab] in float64, and the model's own logits."""
    blocks, final_norm = _blocks_and_norm(hf_model)
    captured = []
    handles = [
        b.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
        for b in blocks
    ]
    try:
        with torch.no_grad():
            output_logits = hf_model(torch.tensor([token_ids])).logits[0].double()
            rows = [hf_model.get_output_embeddings()(final_norm(h))[0].double() for h in captured]
    finally:
        for h in handles:
            h.remove()
    logits = torch.stack(rows)
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    final = log_probs[-1]
    top = torch.topk(logits, top_k, dim=-1)
    return {
        "logits": logits.numpy(),
        "log_probs": log_probs.numpy(),
        "top_ids": top.indices.numpy(),
        "top_probs": torch.gather(probs, -1, top.indices).numpy(),
        "entropy": (-(probs * log_probs).sum(-1)).numpy(),
        "kl_to_final": (final.exp() * (final - log_probs)).sum(-1).numpy(),
        "output_log_probs": torch.log_softmax(output_logits, -1).numpy(),
    }


def assert_top_ids_match(engine_ids: np.ndarray, reference: dict, tie: float = 1e-5) -> None:
    """Top-k ids equal exactly, except where the reference's own logits tie within ``tie``."""
    logits = reference["logits"]
    ref_ids = reference["top_ids"]
    mismatch = np.argwhere(engine_ids != ref_ids)
    for r, p, k in mismatch:
        a = logits[r, p, engine_ids[r, p, k]]
        b = logits[r, p, ref_ids[r, p, k]]
        assert abs(a - b) < tie, (
            f"top-{k + 1} differs at row {r}, position {p}: {engine_ids[r, p, k]} vs {ref_ids[r, p, k]}"
        )
