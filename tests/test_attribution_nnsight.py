"""Direct logit attribution through nnsight run here, against the TransformerLens backend on the same weights.

The two backends read the per-head writes independently: TransformerLens from its
``hook_z`` and ``W_O``; nnsight from the attention output projection's input inside its
trace, each head's slice times its slice of the projection's own weight (GPT-2's Conv1D
stores it [in, out], nn.Linear [out, in]). Every part must agree within 1e-4, with the
same labels, and the parts must add up to the logit the lens shows. A block whose writes
don't add up that way, or that nnsight can't read, is refused in one line.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from lens import LensModel, NnsightModel, attribute, cell_writes, head_attention, run_lens
from lens.nnsight_backend import wrap_hf_model
from tests.conftest import GPT2_TOKENIZER, STORIES, require_shared
from tests.test_architectures import build_tiny
from tests.test_backends import PROMPTS, _pair, assert_one_line_refusal

# The demo GPT-2 and a random one (learned positions, LayerNorm, biases), stories260K (Llama:
# RMSNorm, grouped key/value heads), Gemma-2 (a norm after attention and after the MLP,
# soft-caps) and Cohere (attention and MLP in parallel, a logit scale).
FAMILIES = ["demo", "gpt2-random", "stories", "gemma2", "cohere"]
ROWS = ("embed", 1, None)  # the embeddings alone, a middle block, the output row
POSITIONS = (2, -1)
TOLERANCE = 1e-4
_random_gpt2: list[tuple[LensModel, NnsightModel]] = []


def _models(name: str) -> tuple[LensModel, NnsightModel]:
    """The model on both backends, from the same weights."""
    if name != "gpt2-random":
        return _pair(name)
    if not _random_gpt2:
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

        require_shared()
        torch.manual_seed(1)
        hf_model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=64, n_head=4)).eval()
        with torch.no_grad():  # non-zero biases, so their parts are compared too
            for block in hf_model.transformer.h:
                block.attn.c_proj.bias.normal_(0, 0.05)
            hf_model.transformer.ln_f.bias.normal_(0, 0.05)
        tokenizer = GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER))
        twin = copy.deepcopy(hf_model)
        _random_gpt2.append(
            (LensModel.from_hf(hf_model, tokenizer, name=name), wrap_hf_model(twin, tokenizer, name=name))
        )
    return _random_gpt2[0]


def _prompt(name: str) -> str:
    return PROMPTS["demo"] if "gpt2" in name else PROMPTS.get(name, PROMPTS["stories"])


@pytest.mark.parametrize("name", FAMILIES)
def test_every_part_is_the_transformer_lens_one(name, capsys):
    reference, model = _models(name)
    assert model.capabilities.per_head and not model.capabilities.after_attention
    prompt = _prompt(name)
    result = run_lens(model, prompt, top_k=1, points=("resid_pre", "resid_post"))
    worst, parts = 0.0, 0
    for row in ROWS:
        for position in POSITIONS:
            writes = cell_writes(model, prompt, position=position, row=row)
            index = result.layers.index(writes.row)
            target = int(result.top_ids[index, position, 0])
            got = writes.attribute(model, target)
            expected = attribute(reference, prompt, position=position, target=target, row=row)
            assert writes.per_head and expected.writes.per_head
            assert writes.part_labels() == expected.writes.part_labels(), (row, position)
            assert writes.components == expected.writes.components
            difference = float(np.abs(got.contributions - expected.contributions).max())
            assert difference <= TOLERANCE, (row, position, difference)
            worst, parts = max(worst, difference), parts + len(got.contributions)
            # The parts add up to the lens's own logit of its top token there (log p + log-normaliser).
            shown = float(np.log(result.top_probs[index, position, 0]) + result.log_normalizer[index, position])
            logit = got.logit if got.softcapped_logit is None else got.softcapped_logit
            assert logit == pytest.approx(shown, rel=1e-4, abs=1e-4), (row, position)
    with capsys.disabled():
        print(f"\n{name}: nnsight vs TransformerLens attribution, max |Δ part| {worst:.1e} over {parts} parts")


@pytest.mark.parametrize("name", ["demo", "stories", "gemma2"])
def test_attention_patterns_agree_and_the_attention_kernel_comes_back(name):
    reference, model = _models(name)
    kernel = model.wrapper._module.config._attn_implementation
    for layer, head, position in ((0, 0, -1), (1, 1, 4)):
        got = head_attention(model, _prompt(name), layer=layer, head=head, position=position)
        expected = head_attention(reference, _prompt(name), layer=layer, head=head, position=position)
        assert list(got.token) == list(expected.token)
        np.testing.assert_allclose(got.weight, expected.weight, atol=1e-5)
    assert model.wrapper._module.config._attn_implementation == kernel


def test_writes_that_do_not_add_up_are_refused_in_one_line():
    """Granite scales each sub-layer's output before adding it: the writes nnsight reads don't sum to the residual."""
    _, model = _pair("granite")
    assert model.capabilities.per_head  # its blocks look like Llama's; the sum check catches the scaling
    assert_one_line_refusal(lambda: attribute(model, _prompt("granite"), position=-1, target=" the"), "not the sum")


def test_blocks_nnsight_cannot_read_are_refused_in_one_line():
    """OPT's blocks have no ``mlp`` module: no per-head writes, one line, before any run."""
    require_shared()
    hf_model, _ = build_tiny("OPTForCausalLM")
    model = wrap_hf_model(hf_model, AutoTokenizer.from_pretrained(str(STORIES)), name="opt-tiny")
    assert not model.capabilities.per_head
    assert_one_line_refusal(lambda: attribute(model, PROMPTS["stories"], position=-1, target=" the"), "per-head")
    assert_one_line_refusal(lambda: head_attention(model, PROMPTS["stories"], layer=0, head=0, position=-1), "patterns")
