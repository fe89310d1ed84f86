"""The engine against an independent computation on three architecture families."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from lens import run_lens
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
