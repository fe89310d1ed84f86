"""Reading defaults people rely on: the start token the tokenizer uses, and a target typed without its space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lens import load_model, run_lens
from lens.sources import DEMO_MODEL_DIR

SEED_PROMPT = "Therefore thus saith the"


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


def test_demo_reads_no_start_token_like_its_tokenizer_and_the_seed(demo):
    """The default reading equals the HF model fed exactly what its tokenizer gives (no BOS for GPT-2)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))
    reference = GPT2LMHeadModel.from_pretrained(str(DEMO_MODEL_DIR), torch_dtype=torch.float32).eval()
    ids = tokenizer(SEED_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = torch.softmax(reference(ids).logits[0, -1].float(), -1)
    result = run_lens(demo, SEED_PROMPT, top_k=1)
    assert not demo.default_prepend_bos and not result.prepend_bos
    assert result.n_positions == ids.shape[1]
    assert result.top_tokens[-1, -1, 0] == "␣LORD"
    assert np.isclose(result.top_probs[-1, -1, 0], float(expected.max()), atol=1e-5)


def test_llama_reads_its_start_token(stories):
    result = run_lens(stories, "Once upon a time", top_k=1)
    assert stories.default_prepend_bos and result.prepend_bos
    assert result.token_ids[0] == stories.tokenizer.bos_token_id


@pytest.mark.parametrize(("model_name", "typed", "spaced"), [("stories", "Lily", "␣Lily"), ("demo", "LORD", "␣LORD")])
def test_target_without_its_space_uses_the_one_token_spaced_form(request, model_name, typed, spaced):
    model = request.getfixturevalue(model_name)
    result = run_lens(model, "Once upon a time, there was a little girl named", top_k=1, targets=[typed])
    assert result.targets == [spaced]
    assert result.target_ids == [int(model.tokenizer(" " + typed, add_special_tokens=False)["input_ids"][-1])]
    assert any("without a leading space" in w and spaced in w for w in result.warnings), result.warnings


def test_a_word_whose_spaced_form_also_splits_keeps_the_first_token_warning(stories):
    result = run_lens(stories, "Once upon a time", top_k=1, targets=["Paris"])
    assert any("first token" in w for w in result.warnings)
