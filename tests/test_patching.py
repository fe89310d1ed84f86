"""Activation patching against plain PyTorch forward hooks on the Hugging Face model, and its exact properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lens import LensError, patch
from lens import patching as patching_module
from lens.sources import DEMO_MODEL_DIR
from lens.tokens import tokenize_prompt, tokenize_target
from tests.conftest import STORIES
from tests.reference import _blocks_and_norm

# (clean, corrupted, target): the corrupted prompt changes one word, in as many tokens.
STORY_PAIRS = [
    (
        "Once upon a time, there was a little girl named Lily. Lily",
        "Once upon a time, there was a little boy named Lily. Lily",
        " She",
    ),
    ("Tom had a red ball. He gave the ball to", "Tom had a red hat. He gave the hat to", " his"),
]
DEMO_PAIRS = [
    (
        "And Moses said unto the children of Israel, Thus saith the LORD God of",
        "And Aaron said unto the children of Israel, Thus saith the LORD God of",
        " Israel",
    ),
    ("In the beginning God created the heaven and the", "In the beginning God created the earth and the", " earth"),
]
# Each point's Hugging Face module, relative to a block ("" is the block itself), and whether its input is patched.
HF_POINTS = {
    "gpt2": {
        "resid_pre": ("", True),
        "resid_post": ("", False),
        "attn_out": ("attn", False),
        "mlp_out": ("mlp", False),
    },
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


ARCHITECTURES = ["GPT2LMHeadModel", "LlamaForCausalLM", "GPTNeoXForCausalLM"]


@pytest.fixture(scope="module")
def tiny_models():
    """Three families at two layers (learned positions + LayerNorm; rotary + RMSNorm; parallel attention and MLP)."""
    from transformers import AutoTokenizer

    from lens import LensModel
    from tests.test_architectures import build_tiny

    tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
    return {name: LensModel.from_hf(build_tiny(name)[0], tokenizer, name=name) for name in ARCHITECTURES}


TINY_PAIR = (
    "Once upon a time, there was a little girl named Lily.",
    "Once upon a time, there was a little boy named Lily.",
)


def _first_difference(result) -> int:
    return next(i for i, (a, b) in enumerate(zip(result.clean_tokens, result.corrupted_tokens, strict=True)) if a != b)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_patching_a_whole_layer_gives_the_clean_run(tiny_models, name):
    """resid_pre at every position of a layer is the clean run from there on: its metric is the clean one."""
    model = tiny_models[name]
    result = patch(model, *TINY_PAIR, target=" Lily", point="resid_pre")
    clean_ids, corrupted_ids = (tokenize_prompt(model, p) for p in TINY_PAIR)
    hooks = [patching_module.point_hook("resid_pre", layer) for layer in range(model.n_layers)]
    with torch.no_grad():
        cache = model.capture(torch.tensor([clean_ids]), hooks)
    clean = {h: cache[h][0] for h in hooks}
    runs = [[(hook, p) for p in range(len(clean_ids))] for hook in hooks]
    measure = patching_module.Metric(model, "logit_diff", result.target_id, result.contrast_id)
    whole = patching_module.patched_metrics(model, corrupted_ids, clean, runs, measure)
    np.testing.assert_allclose(whole, result.clean_metric, atol=1e-5, rtol=1e-5)
    assert abs(result.clean_metric - result.corrupted_metric) > 1e-3  # so the check above can fail


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("point", list(patching_module.PATCH_POINTS))
def test_positions_before_the_first_difference_change_nothing(tiny_models, name, point):
    """Patched runs there give the corrupted metric (so the sweep may skip them: they are the corrupted run)."""
    model = tiny_models[name]
    result = patch(model, *TINY_PAIR, target=" Lily", point=point)
    first = _first_difference(result)
    assert 0 < first < len(result.positions) - 1
    clean_ids, corrupted_ids = (tokenize_prompt(model, p) for p in TINY_PAIR)
    hooks = [patching_module.point_hook(point, layer) for layer in range(model.n_layers)]
    with torch.no_grad():
        cache = model.capture(torch.tensor([clean_ids]), hooks)
    runs = [[(hook, p)] for hook in hooks for p in range(first)]
    measure = patching_module.Metric(model, "logit_diff", result.target_id, result.contrast_id)
    patched = patching_module.patched_metrics(model, corrupted_ids, {h: cache[h][0] for h in hooks}, runs, measure)
    np.testing.assert_allclose(patched, result.corrupted_metric, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(result.raw[:, :first], result.corrupted_metric)
    assert np.abs(result.effect[:, first:]).max() > 1e-3  # the differing positions do move the metric


@pytest.mark.parametrize("metric", patching_module.METRICS)
def test_batched_equals_one_at_a_time(tiny_models, metric):
    model = tiny_models["LlamaForCausalLM"]
    batched = patch(model, *TINY_PAIR, target=" Lily", metric=metric, point="attn_out")
    single = patch(model, *TINY_PAIR, target=" Lily", metric=metric, point="attn_out", batch_size=1)
    assert patching_module.batch_runs(model, len(batched.positions)) >= batched.raw.size  # one forward pass
    np.testing.assert_allclose(batched.raw, single.raw, atol=1e-5, rtol=1e-5)


def test_result_frame_json_and_progress(tiny_models):
    heard = []
    result = patch(
        tiny_models["GPT2LMHeadModel"],
        *TINY_PAIR,
        target=" Lily",
        contrast=" the",
        positions=[-1, 0, 9],
        progress=lambda message, fraction: heard.append(fraction),
    )
    assert result.positions.tolist() == [0, 9, len(result.clean_tokens) - 1]
    assert result.contrast == "␣the" and heard[-1] == 1.0
    frame = result.to_frame()
    assert len(frame) == result.raw.size
    np.testing.assert_array_equal(frame.effect.to_numpy().reshape(result.raw.shape), result.effect)
    assert frame.clean_token.iloc[1] == result.clean_tokens[9]
    payload = json.loads(result.to_json())
    assert payload["raw"] == result.raw.tolist() and payload["positions"] == [0, 9, len(result.clean_tokens) - 1]
    expected = (result.raw - result.corrupted_metric) / (result.clean_metric - result.corrupted_metric)
    np.testing.assert_allclose(result.effect, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(corrupted=TINY_PAIR[0]), "the same tokens"),
        (dict(corrupted="Once upon a time, there was a big dog."), "clean is 16 (<s>|␣Once"),
        (dict(point="resid_mid"), "Unknown patch point"),
        (dict(metric="kl"), "Unknown metric"),
        (dict(max_cells=10), "the limit here is 10 (LENS_MAX_PATCH_CELLS)"),
        (dict(contrast=" Lily"), "the target itself"),
        (dict(positions=[99]), "Position 99 is out of range"),
        (dict(target=3.5), "must be a token"),
    ],
)
def test_bad_input_is_one_line(tiny_models, kwargs, message):
    args = dict(clean=TINY_PAIR[0], corrupted=TINY_PAIR[1], target=" Lily") | kwargs
    with pytest.raises(LensError, match=None) as caught:
        patch(tiny_models["GPT2LMHeadModel"], **args)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_several_token_target_follows_its_first_token_with_a_note(tiny_models):
    model = tiny_models["GPT2LMHeadModel"]
    result = patch(model, *TINY_PAIR, target=" Lilypad", positions=[-1])
    assert result.target_id == tokenize_target(model, " Lilypad")[0] and len(tokenize_target(model, " Lilypad")) > 1
    assert any("first token" in note for note in result.notes)


def test_a_backend_that_cannot_patch_refuses_in_one_line(tiny_models):
    from lens.nnsight_backend import wrap_hf_model
    from tests.test_architectures import build_tiny

    hf, _ = build_tiny("LlamaForCausalLM")
    model = wrap_hf_model(hf, tiny_models["GPT2LMHeadModel"].tokenizer, name="tiny-nnsight")
    with pytest.raises(LensError, match="can't provide activation patching"):
        patch(model, *TINY_PAIR, target=" Lily")


def test_the_lens_view_of_a_patched_run_is_the_run_the_sweep_measured(tiny_models):
    model = tiny_models["GPT2LMHeadModel"]
    result = patch(model, *TINY_PAIR, target=" Lily", metric="prob", point="mlp_out")
    layer, position = np.unravel_index(np.argmax(np.abs(result.effect)), result.raw.shape)
    view = patching_module.patched_lens(model, result, int(layer), int(position))
    assert view.prompt == TINY_PAIR[1] and view.target_ids[0] == result.target_id
    assert view.target_probs[0, -1, -1] == pytest.approx(result.raw[layer, position], rel=1e-5)
    unpatched = patching_module.patched_lens(model, result, int(layer), 0)  # before the difference: corrupted
    assert unpatched.target_probs[0, -1, -1] == pytest.approx(result.corrupted_metric, rel=1e-5)
    assert abs(result.raw[layer, position] - result.corrupted_metric) > 1e-3 * result.corrupted_metric
