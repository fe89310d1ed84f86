"""Every public lens function on every backend: the same answer, or one line saying why not.

The backend matrix runs each function through TransformerLens and through nnsight run
here, on the same weights: the demo GPT-2, stories260K (Llama), and tiny random models
of the families whose readout is unusual (Cohere's logit scale, Granite's logits
scaling, Gemma-2's soft-cap and attention soft-cap, which keeps it on eager attention).
Results must agree: top-k ids equal, probabilities, entropy and KL within 1e-5 absolute
or 5e-6 relative. What a backend can't do is one LensError line, never an AttributeError.
Then nnsight's output row is checked against the model's own logits on every family the
README lists as exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lens
from lens import LensError, LensModel, corpus_stats, load_model, retarget, run_lens, train_tuned_lens
from lens.architectures import EXACT
from lens.attribution import cell_writes, head_attention
from lens.backend import prefer_sdpa
from lens.compare import js_divergence, last_position_log_probs, same_vocabulary
from lens.nnsight_backend import traced_statistics, wrap_hf_model
from tests.conftest import STORIES, require_shared
from tests.test_architectures import build_tiny

PROMPTS = {"demo": "The Eiffel Tower is in the city of", "stories": "Once upon a time, there was a little girl named"}
TINY = {"cohere": "CohereForCausalLM", "granite": "GraniteForCausalLM", "gemma2": "Gemma2ForCausalLM"}
MODELS = ["demo", "stories", *TINY]
TEXTS = [
    "Once upon a time, there was a little girl named Lily. She liked to play outside.",
    "The dog ran to the park. It was a sunny day and everyone was happy.",
    "Tom had a big red ball.",
]
TARGETS = [" the", "."]
_pairs: dict[str, tuple] = {}


def _pair(name: str) -> tuple[LensModel, lens.NnsightModel]:
    """The model on both backends, from the same weights; built once per session."""
    if name not in _pairs:
        require_shared()
        if name in TINY:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
            hf_model, twin = build_tiny(TINY[name])
            _pairs[name] = (
                LensModel.from_hf(hf_model, tokenizer, name=name),
                wrap_hf_model(twin, tokenizer, name=name),
            )
        else:
            source = "demo" if name == "demo" else str(STORIES)
            _pairs[name] = (load_model(source), load_model(source, backend="nnsight"))
    return _pairs[name]


def _prompt(name: str) -> str:
    return PROMPTS.get(name, PROMPTS["stories"])


def assert_same_result(got: lens.LensResult, expected: lens.LensResult) -> None:
    assert got.token_ids == expected.token_ids and got.layers == expected.layers and got.targets == expected.targets
    np.testing.assert_array_equal(got.top_ids, expected.top_ids)
    np.testing.assert_array_equal(got.target_ranks, expected.target_ranks)
    for field in ("top_probs", "entropy", "kl_to_final", "target_probs", "target_logits", "log_normalizer"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), atol=1e-5, rtol=5e-6, err_msg=field)


def assert_one_line_refusal(call, *needs: str) -> None:
    with pytest.raises(LensError) as refused:
        call()
    message = str(refused.value)
    assert "\n" not in message and all(word in message for word in needs), message


@pytest.mark.parametrize("name", MODELS)
def test_run_lens_agrees(name):
    reference, model = _pair(name)
    kwargs = {"top_k": 10, "targets": TARGETS, "points": ("resid_pre", "resid_post")}
    assert_same_result(run_lens(model, _prompt(name), **kwargs), run_lens(reference, _prompt(name), **kwargs))


@pytest.mark.parametrize("name", MODELS)
def test_the_ndif_reduction_agrees(name):
    """The statistics NDIF computes in the trace (float64, run here with nnsight's local backend) are the engine's."""
    reference, model = _pair(name)
    expected = run_lens(reference, _prompt(name), top_k=10, targets=TARGETS, points=("resid_pre", "resid_post"))
    paths = (model.layers_path, model.norm_path, model.head_path)
    ids = torch.tensor([expected.token_ids])
    got = traced_statistics(model.wrapper, ids, paths, True, 10, expected.target_ids, model.output_transform)
    np.testing.assert_array_equal(got["top_ids"].numpy(), expected.top_ids)
    np.testing.assert_array_equal(got["target_ranks"].numpy(), expected.target_ranks)
    for field in ("top_probs", "entropy", "kl_to_final", "target_probs", "target_logits", "log_normalizer"):
        np.testing.assert_allclose(got[field].numpy(), getattr(expected, field), atol=1e-5, rtol=5e-6, err_msg=field)


@pytest.mark.parametrize("name", MODELS)
def test_retarget_and_full_distributions_agree(name):
    reference, model = _pair(name)
    results = [run_lens(m, _prompt(name), keep_unembed_input=True) for m in (reference, model)]
    assert_same_result(retarget(model, results[1], TARGETS), retarget(reference, results[0], TARGETS))
    log_probs = [last_position_log_probs(m, r) for m, r in zip((reference, model), results, strict=True)]
    np.testing.assert_allclose(np.exp(log_probs[1]), np.exp(log_probs[0]), atol=1e-5, rtol=5e-6)
    assert same_vocabulary(reference, model)
    assert js_divergence(log_probs[0], log_probs[1]).max() < 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_corpus_stats_agree(name):
    reference, model = _pair(name)
    frames = [corpus_stats(m, TEXTS, max_tokens=200) for m in (reference, model)]
    assert frames[0].attrs["n_tokens"] == frames[1].attrs["n_tokens"] > 20
    assert list(frames[0].layer) == list(frames[1].layer)
    for column in ("cross_entropy", "entropy", "kl_to_final", "top1_agreement", "top1_accuracy"):
        np.testing.assert_allclose(frames[1][column], frames[0][column], atol=1e-5, rtol=5e-6, err_msg=column)


@pytest.mark.parametrize("name", ["stories", "gemma2"])
def test_tuned_lens_trains_and_reads_alike(name):
    """Training runs on both (the first step's loss agrees); one trained lens reads the same on both."""
    reference, model = _pair(name)
    lenses = [train_tuned_lens(m, TEXTS, steps=2, window=16, seed=0) for m in (reference, model)]
    np.testing.assert_allclose(lenses[1].history[0], lenses[0].history[0], atol=1e-5, rtol=5e-6)
    kwargs = {"top_k": 5, "targets": TARGETS, "points": ("resid_pre", "resid_post"), "lens": lenses[0]}
    assert_same_result(run_lens(model, _prompt(name), **kwargs), run_lens(reference, _prompt(name), **kwargs))


@pytest.mark.parametrize("name", ["stories", "demo"])
def test_what_nnsight_cannot_do_is_one_line(name):
    """TransformerLens answers; nnsight refuses in one line naming what it lacks."""
    reference, model = _pair(name)
    prompt = _prompt(name)
    assert run_lens(reference, prompt, points=("resid_mid",)).layers[0] == "L0 attn"
    assert_one_line_refusal(lambda: run_lens(model, prompt, points=("resid_mid",)), "resid_mid", "can't provide")
    assert cell_writes(reference, prompt, position=-1, row="L0 attn").row == "L0 attn"
    assert_one_line_refusal(
        lambda: cell_writes(model, prompt, position=-1, row="L0 attn"), "after-attention row 'L0 attn'", "can't provide"
    )


@pytest.fixture
def remote_stories(tmp_path, monkeypatch):
    """stories260K as an NDIF handle (hub id from a local cache; NDIF's host refuses connections)."""
    require_shared()
    from huggingface_hub import constants
    from nnsight import CONFIG

    repo = tmp_path / "models--lens-test--stories260K"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in STORIES.iterdir():
        (snapshot / path.name).symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:1")
    return load_model("lens-test/stories260K", backend="nnsight", remote=True, api_key="test-key")


def test_every_function_on_an_ndif_handle_answers_in_one_line(remote_stories):
    """No AttributeError: what needs the weights here says so; a run says NDIF can't be reached."""
    model, prompt = remote_stories, PROMPTS["stories"]
    local_result = run_lens(_pair("stories")[0], prompt, keep_unembed_input=True)
    for call in (
        lambda: corpus_stats(model, TEXTS),
        lambda: train_tuned_lens(model, TEXTS, steps=1),
        lambda: retarget(model, local_result, TARGETS),
        lambda: last_position_log_probs(model, local_result),
        lambda: cell_writes(model, prompt, position=-1),
        lambda: lens.attribute(model, prompt, position=-1, target=" the"),
        lambda: head_attention(model, prompt, layer=0, head=0, position=-1),
        lambda: run_lens(model, prompt, points=("resid_mid",)),
        lambda: run_lens(model, prompt, keep_unembed_input=True),
    ):
        assert_one_line_refusal(call, "'lens-test/stories260K'")
    assert_one_line_refusal(lambda: run_lens(model, prompt), "NDIF cannot be reached")
    assert same_vocabulary(model, _pair("stories")[0])


@pytest.mark.parametrize("name", sorted(EXACT))
def test_nnsight_output_row_is_the_models_own(name, stories_tokenizer):
    """On every family the README lists as exact, nnsight's output row is the model's own distribution."""
    hf_model, reference = build_tiny(name)
    result = run_lens(wrap_hf_model(hf_model, stories_tokenizer, name=name), PROMPTS["stories"], top_k=5)
    prefer_sdpa(reference)  # the attention the backend chose
    with torch.no_grad():
        logits = reference(torch.tensor([result.token_ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, -1).numpy()
    np.testing.assert_array_equal(result.top_ids[-1, :, 0], log_probs.argmax(-1))
    model_probs = np.exp(np.take_along_axis(log_probs, result.top_ids[-1], -1))
    np.testing.assert_allclose(result.top_probs[-1], model_probs, atol=1e-5, rtol=5e-6)
    np.testing.assert_allclose(result.log_normalizer[-1], torch.logsumexp(logits, -1).numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def stories_tokenizer():
    require_shared()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES))
