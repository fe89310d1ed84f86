"""An independent logit lens, computed the slow obvious way on the Hugging Face model.

Forward hooks capture each block's output; the model's final norm and lm_head are
applied; the full softmax is taken in float64. Nothing here uses TransformerLens or
the engine.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_LISTS = ("h", "layers", "blocks", "decoder.layers", "model.layers")
FINAL_NORMS = (
    "ln_f",
    "norm",
    "final_layer_norm",
    "final_layernorm",
    "final_norm",
    "norm_f",
    "ln_out",
    "layer_norm",
    "embedding_norm",  # LFM2 names its final norm so
    "decoder.final_layer_norm",
    "model.norm",
)


def _blocks_and_norm(hf_model):
    """The decoder blocks and the final norm, by the names Hugging Face's decoders use."""
    base = hf_model.base_model
    blocks = next((base.get_submodule(n) for n in BLOCK_LISTS if _has(base, n)), None)
    norm = next((base.get_submodule(n) for n in FINAL_NORMS if _has(base, n)), None)
    if blocks is None or norm is None:
        raise AssertionError(f"reference does not know {type(hf_model).__name__}")
    return blocks, norm


def _has(module, dotted: str) -> bool:
    try:
        module.get_submodule(dotted)
    except AttributeError:
        return False
    return True


def _output_scale(config) -> float:
    """The multiplier Hugging Face's own forward puts on lm_head's output (1 for most models)."""
    scale = getattr(config, "logit_scale", None) or 1.0  # Cohere, Cohere-2
    scale /= getattr(config, "logits_scaling", None) or 1.0  # Granite
    return scale * (getattr(config, "lm_head_multiplier", None) or 1.0)  # Falcon-H1


def head_logits(hf_model, hidden: torch.Tensor) -> torch.Tensor:
    """A residual [1, positions, d_model] read as the model's own output: final norm, lm_head, scale, soft-cap."""
    _, final_norm = _blocks_and_norm(hf_model)
    logits = hf_model.get_output_embeddings()(final_norm(hidden))[0].double() * _output_scale(hf_model.config)
    config = hf_model.config
    cap = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_soft_cap", None)  # RecurrentGemma
    return cap * torch.tanh(logits / cap) if cap else logits


def reference_lens(hf_model, token_ids, top_k: int):
    """Per-row log-probabilities [rows, positions, vocab] in float64, and the model's own logits."""
    blocks, _ = _blocks_and_norm(hf_model)
    captured = []
    handles = [
        b.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
        for b in blocks
    ]
    try:
        with torch.no_grad():
            output_logits = hf_model(torch.tensor([token_ids])).logits[0].double()
            logits = torch.stack([head_logits(hf_model, h) for h in captured])
    finally:
        for h in handles:
            h.remove()
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
