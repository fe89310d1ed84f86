"""The engine against an independent computation on three architecture families."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lens import LensModel, load_model, run_lens
from tests.conftest import STORIES
from tests.reference import assert_top_ids_match, reference_lens

TOP_K = 10
PROMPTS = {
    "stories": "Once upon a time, there was a little girl named",
    "gpt2": "The Eiffel Tower is in the city of Paris, which is the capital of",
    "neox": "Pythia models share GPT-NeoX's rotary attention.",
}


def _check_parity(model, hf_reference, prompt, prepend_bos=None):
    result = run_lens(model, prompt, top_k=TOP_K, prepend_bos=prepend_bos)
    ref = reference_lens(hf_reference, result.token_ids, TOP_K)
    assert result.layers[-1].endswith("(output)")
    assert len(result.layers) == model.n_layers
    assert_top_ids_match(result.top_ids, ref)
    np.testing.assert_allclose(result.top_probs, ref["top_probs"], atol=1e-5)
    np.testing.assert_allclose(result.entropy, ref["entropy"], atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(result.kl_to_final, ref["kl_to_final"], atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(result.log_normalizer, np.log(np.exp(ref["logits"]).sum(-1)), atol=1e-4, rtol=1e-6)
    # Invariant: the last row is the model's own next-token distribution.
    output = ref["output_log_probs"]
    last = ref["log_probs"][-1]
    kl_last_vs_output = (np.exp(output) * (output - last)).sum(-1)
    assert kl_last_vs_output.max() < 1e-5
    assert result.kl_to_final[-1].max() < 1e-5
    return result


def test_parity_stories260k_real_llama(stories):
    reference = AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()
    _check_parity(stories, reference, PROMPTS["stories"])


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_parity_gpt2_small_shape(gpt2_small_random, prepend_bos):
    model, reference = gpt2_small_random
    result = _check_parity(model, reference, PROMPTS["gpt2"], prepend_bos=prepend_bos)
    assert (result.token_ids[0] == 50256) == prepend_bos


def test_parity_gpt_neox(neox_random):
    model, reference = neox_random
    _check_parity(model, reference, PROMPTS["neox"])


def test_stories260k_names_lily(stories):
    result = run_lens(stories, PROMPTS["stories"], top_k=5)
    assert result.top_tokens[-1, -1, 0] == "␣Lily"
    assert result.tokens[0] == "<s>" and result.tokens[1] == "␣Once"


def test_parity_gemma2_soft_capped_logits(gemma2_random):
    model, reference = gemma2_random
    assert model.softcap == 5.0
    result = _check_parity(model, reference, PROMPTS["neox"])
    assert result.top_probs.max() < 1  # a cap of 5 keeps every distribution soft


def _residuals_and_sdpa_calls(model, token_ids, monkeypatch, extra_hooks=()):
    """Every block's output from run_with_cache, and how many SDPA kernels the pass ran."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(torch.tensor([token_ids]), names_filter=hooks + list(extra_hooks))
    monkeypatch.undo()
    return cache, len(calls)


@pytest.mark.parametrize("family", ["stories", "neox", "gemma2"])
def test_fast_attention_gives_the_eager_residuals(family, request, monkeypatch, gpt2_tokenizer):
    """SDPA where nothing hooks attention; TransformerLens's eager path, and its pattern, where something does."""
    if family == "stories":
        fast, eager = request.getfixturevalue("stories"), load_model(str(STORIES), fast_attention=False)
    else:
        fast, reference = request.getfixturevalue(f"{family}_random")
        eager = LensModel.from_hf(copy.deepcopy(reference), gpt2_tokenizer, fast_attention=False)
    ids = fast.tokenizer(PROMPTS["neox"] * 3, add_special_tokens=False)["input_ids"]
    expected, eager_calls = _residuals_and_sdpa_calls(eager, ids, monkeypatch, ["blocks.0.attn.hook_pattern"])
    got, fast_calls = _residuals_and_sdpa_calls(fast, ids, monkeypatch)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    hooked, hooked_calls = _residuals_and_sdpa_calls(fast, ids, monkeypatch, ["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(hooked["blocks.0.attn.hook_pattern"], expected["blocks.0.attn.hook_pattern"])
    assert eager_calls == 0
    if family == "gemma2":  # attention soft-capping: SDPA can't, so the model stays eager
        assert fast_calls == hooked_calls == 0
    else:
        assert (fast_calls, hooked_calls) == (fast.n_layers, fast.n_layers - 1)
