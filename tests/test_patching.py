"""Activation patching against plain PyTorch forward hooks on the Hugging Face model, and its exact properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lens import LensError, patch
from lens import patching as patching_module
from lens.model import DEMO_MODEL_DIR
from lens.tokens import tokenize_prompt
from tests.conftest import STORIES
from tests.reference import _blocks_and_norm

# (clean, corrupted, target): the corrupted prompt changes one word, in as many tokens.
STORY_PAIRS = [
    ("Once upon a time, there was a little girl named Lily. Lily", "Once upon a time, there was a little boy named Lily. Lily", " She"),
    ("Tom had a red ball. He gave the ball to", "Tom had a red hat. He gave the hat to", " his"),
]
DEMO_PAIRS = [
    ("And Moses said unto the children of Israel, Thus saith the LORD God of", "And Aaron said unto the children of Israel, Thus saith the LORD God of", " Israel"),
    ("In the beginning God created the heaven and the", "In the beginning God created the earth and the", " earth"),
]
GPT2_PAIR = ("The quick brown fox jumps over the lazy dog because", "The quick brown cat jumps over the lazy dog because", " it")
# Each point's Hugging Face module, relative to a block ("" is the block itself), and whether its input is patched.
HF_POINTS = {
    "gpt2": {"resid_pre": ("", True), "resid_post": ("", False), "attn_out": ("attn", False), "mlp_out": ("mlp", False)},
    "llama": {
        "resid_pre": ("", True),
        "resid_post": ("", False),
        "attn_out": ("self_attn", False),
        "mlp_out": ("mlp", False),
    },
}


@pytest.fixture(scope="module")
def demo():
    from lens import load_model

    hf = AutoModelForCausalLM.from_pretrained(str(DEMO_MODEL_DIR), dtype=torch.float32).eval()
    return load_model("demo", device="cpu"), hf


@pytest.fixture(scope="module")
def stories_pair(stories):
    return stories, AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value, new):
    return (new, *value[1:]) if isinstance(value, tuple) else new


def _hf_module(hf, family: str, point: str, layer: int):
    blocks, _ = _blocks_and_norm(hf)
    name, on_input = HF_POINTS[family][point]
    return (blocks[layer].get_submodule(name) if name else blocks[layer]), on_input


def _hf_clean(hf, family: str, point: str, ids: list[int]) -> list[torch.Tensor]:
    """The clean run's activation at ``point`` of every block, [positions, d_model], by forward hooks."""
    seen, handles = [], []
    for layer in range(len(_blocks_and_norm(hf)[0])):
        module, on_input = _hf_module(hf, family, point, layer)
        if on_input:
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
                    with_kwargs=True,
                )
            )
        else:
            handles.append(module.register_forward_hook(lambda _m, _i, out: seen.append(_first(out)[0].clone())))
    with torch.no_grad():
        hf(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return seen


def _hf_patched_logits(hf, family, point, layer, position, value, ids) -> torch.Tensor:
    """The corrupted run's own last-position logits with one block's activation at one position replaced."""
    module, on_input = _hf_module(hf, family, point, layer)

    def write(x):
        x = x.clone()
        x[0, position] = value
        return x

    if on_input:

        def pre(_m, args, kwargs):
            if args:
                return (write(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": write(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda _m, _i, out: _replace_first(out, write(_first(out))))
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        handle.remove()


def _reference_metrics(logits: torch.Tensor, target: int, contrast: int) -> tuple[float, float]:
    return float(logits[target] - logits[contrast]), float(torch.softmax(logits, -1)[target])


def _check_against_hugging_face(model, hf, family, clean, corrupted, target):
    diff = patch(model, clean, corrupted, target=target, metric="logit_diff", point="resid_pre")
    clean_ids, corrupted_ids = tokenize_prompt(model, clean), tokenize_prompt(model, corrupted)
    with torch.no_grad():
        corrupted_logits = hf(torch.tensor([corrupted_ids])).logits[0, -1].double()
        clean_logits = hf(torch.tensor([clean_ids])).logits[0, -1].double()
    ranked = torch.argsort(corrupted_logits, descending=True).tolist()
    contrast = next(t for t in ranked if t != diff.target_id)
    assert diff.contrast_id == contrast
    assert diff.clean_metric == pytest.approx(_reference_metrics(clean_logits, diff.target_id, contrast)[0], abs=1e-4)
    assert diff.corrupted_metric == pytest.approx(
        _reference_metrics(corrupted_logits, diff.target_id, contrast)[0], abs=1e-4
    )
    for point in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        by_diff = diff if point == "resid_pre" else patch(model, clean, corrupted, target=target, point=point)
        by_prob = patch(model, clean, corrupted, target=target, point=point, metric="prob")
        clean_acts = _hf_clean(hf, family, point, clean_ids)
        expected = np.empty((2, model.n_layers, len(clean_ids)))
        for layer in range(model.n_layers):
            for position in range(len(clean_ids)):
                logits = _hf_patched_logits(
                    hf, family, point, layer, position, clean_acts[layer][position], corrupted_ids
                )
                expected[:, layer, position] = _reference_metrics(logits, diff.target_id, contrast)
        np.testing.assert_allclose(by_diff.raw, expected[0], atol=1e-4, err_msg=f"{family} {point} logit_diff")
        np.testing.assert_allclose(by_prob.raw, expected[1], atol=1e-4, err_msg=f"{family} {point} prob")


@pytest.mark.parametrize("pair", range(2))
def test_every_cell_matches_hugging_face_hooks_demo(demo, pair):
    model, hf = demo
    _check_against_hugging_face(model, hf, "gpt2", *DEMO_PAIRS[pair])


@pytest.mark.parametrize("pair", range(2))
def test_every_cell_matches_hugging_face_hooks_stories260k(stories_pair, pair):
    model, hf = stories_pair
    _check_against_hugging_face(model, hf, "llama", *STORY_PAIRS[pair])
