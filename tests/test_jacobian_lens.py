"""Jacobian lens: read through the engine it agrees with TransformerLens's own readout on the
same file, J = I is the logit lens, files round-trip both ways, a fit lowers KL on held-out
text, and bad models, files and arguments get one line."""

from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest
import torch
from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

from lens import LensError, corpus_stats, load_model, run_lens
from lens.jacobian import (
    DASHBOARD_KEY,
    FitCancelled,
    JacobianLens,
    fit_jacobian_lens,
    published_jacobian_lens,
    unembed_probe,
)
from lens.tokens import tokenize_prompt
from lens.tuned import train_tuned_lens
from tests.conftest import ROOT, STORIES
from tests.test_tuned_lens import story_texts

PROMPTS = {
    "stories": "Once upon a time, there was a little girl named Lily. She liked to play in the park with her ball.",
    "demo": "The quick brown fox jumps over the lazy dog, and then the dog runs after the fox into the forest.",
}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


CORPUS = (ROOT / "data" / "sample_corpus.txt").read_text(encoding="utf-8").splitlines()
TRAIN, HELD_OUT = CORPUS[:20], CORPUS[20:]


@pytest.fixture(scope="module")
def stories_lens(stories):
    """A small fit on the bundled corpus; its last lines are held out."""
    return fit_jacobian_lens(stories, TRAIN, max_prompts=4, max_tokens=64)


@pytest.fixture(scope="module")
def demo_lens(demo):
    return fit_jacobian_lens(demo, [PROMPTS["demo"] * 3], max_prompts=1, max_tokens=48)


def _models(request, name):
    return request.getfixturevalue(name), request.getfixturevalue(f"{name}_lens")


def identity(model) -> JacobianLens:
    eye = torch.eye(model.d_model)
    return JacobianLens(TLJacobianLens({i: eye for i in range(model.n_layers - 1)}, n_prompts=1, d_model=model.d_model))


@pytest.mark.parametrize("name", ["stories", "demo"])
def test_run_lens_matches_transformer_lens_readout_on_the_same_file(request, tmp_path, name):
    model, fitted = _models(request, name)
    path = fitted.save(tmp_path / "lens.pt")
    ours = JacobianLens.load(path)
    theirs = TLJacobianLens.load(str(path))
    prompt = PROMPTS[name]
    token_ids = tokenize_prompt(model, prompt, None)
    result = run_lens(model, prompt, lens=ours, top_k=5)
    reference = theirs.readout(model.bridge, torch.tensor([token_ids]), top_k=5, return_full_logits=True)
    assert result.lens_kind == "jacobian"
    for row, layer in enumerate(range(model.n_layers)):
        probs = torch.softmax(reference.lens_logits[layer].double(), -1)
        top = probs.topk(5, dim=-1)
        np.testing.assert_array_equal(result.top_ids[row], top.indices.numpy())
        np.testing.assert_allclose(result.top_probs[row], top.values.numpy(), atol=1e-5)
    # The lens moved the early rows: this is not the logit lens by accident.
    plain = run_lens(model, prompt, top_k=5)
    assert not np.allclose(plain.top_probs[0], result.top_probs[0], atol=1e-3)


def test_final_row_is_the_model_output(stories, stories_lens):
    prompt = PROMPTS["stories"]
    token_ids = tokenize_prompt(stories, prompt, None)
    result = run_lens(stories, prompt, lens=stories_lens, top_k=5)
    with torch.no_grad():
        logits = stories.bridge(torch.tensor([token_ids]))[0]
    top = torch.softmax(logits.double(), -1).topk(5, dim=-1)
    np.testing.assert_array_equal(result.top_ids[-1], top.indices.numpy())
    np.testing.assert_allclose(result.top_probs[-1], top.values.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["stories", "demo"])
def test_identity_jacobians_reproduce_the_logit_lens_exactly(request, name):
    model = request.getfixturevalue(name)
    plain = run_lens(model, PROMPTS[name], top_k=5, targets=[" the"])
    through = run_lens(model, PROMPTS[name], top_k=5, targets=[" the"], lens=identity(model))
    for field in ("top_ids", "top_probs", "entropy", "kl_to_final", "target_probs", "target_ranks"):
        np.testing.assert_array_equal(getattr(through, field), getattr(plain, field), err_msg=field)


def test_saved_here_loads_in_transformer_lens_and_back(stories, stories_lens, tmp_path):
    first = stories_lens.save(tmp_path / "here.pt")
    theirs = TLJacobianLens.load(str(first))
    theirs.validate_model(stories.bridge)  # TransformerLens accepts it for this model
    theirs.save(str(tmp_path / "theirs.pt"))
    back = JacobianLens.load(tmp_path / "theirs.pt")
    assert back.source_layers == stories_lens.source_layers == list(range(stories.n_layers - 1))
    assert back.n_prompts == stories_lens.n_prompts == 4
    for layer in back.source_layers:
        # TransformerLens saves in fp16 by default: equal to fp16 precision.
        torch.testing.assert_close(
            back.fitted.jacobians[layer], stories_lens.fitted.jacobians[layer], atol=2e-3, rtol=1e-3
        )
    assert back.metadata[DASHBOARD_KEY] == stories_lens.metadata[DASHBOARD_KEY]
    back.check_compatible(stories)


def test_a_file_written_by_transformer_lens_fit_and_save_reads_here(stories, tmp_path):
    fitted = TLJacobianLens.fit(
        stories.bridge, story_texts(seed=3, n=2), corpus="tl", max_seq_len=40, show_progress=False
    )
    fitted.save(str(tmp_path / "tl.pt"))  # the published format: fp16, no dashboard metadata
    ours = JacobianLens.load(tmp_path / "tl.pt")
    prompt = PROMPTS["stories"]
    result = run_lens(stories, prompt, lens=ours, top_k=3)
    reference = TLJacobianLens.load(str(tmp_path / "tl.pt")).readout(
        stories.bridge, torch.tensor([tokenize_prompt(stories, prompt, None)]), top_k=3
    )
    for layer in range(stories.n_layers):
        np.testing.assert_array_equal(result.top_ids[layer], reference.lens_topk_indices[layer].numpy())


def test_fit_lowers_mean_kl_below_the_logit_lens_on_held_out_text(stories, stories_lens):
    logit = corpus_stats(stories, HELD_OUT)
    jacobian = corpus_stats(stories, HELD_OUT, lens=stories_lens)
    tuned = corpus_stats(stories, HELD_OUT, lens=train_tuned_lens(stories, TRAIN, steps=60, lr=3e-3, window=64))
    print("\nlayer        logit   tuned  Jacobian   (mean KL to the output, nats, held-out text)")
    for layer, a, b, c in zip(logit.layer, logit.kl_to_final, tuned.kl_to_final, jacobian.kl_to_final, strict=True):
        print(f"{layer:<12} {a:6.3f} {b:7.3f} {c:9.3f}")
    below = slice(None, -1)
    assert jacobian.kl_to_final.iloc[below].mean() < 0.9 * logit.kl_to_final.iloc[below].mean()
    assert jacobian.kl_to_final.iloc[-1] < 1e-5


def test_progress_reports_time_left_and_cancel_stops_between_prompts(stories):
    heard = []
    fitted = fit_jacobian_lens(
        stories, story_texts(seed=4, n=12), max_prompts=2, max_tokens=32, progress=lambda *a: heard.append(a)
    )
    assert [(d, n) for d, n, _ in heard] == [(1, 2), (2, 2)] and heard[-1][2] == 0.0 and heard[0][2] > 0
    assert fitted.n_prompts == 2
    stop = threading.Event()
    with pytest.raises(FitCancelled, match="cancelled after 1 of 3 prompts"):
        fit_jacobian_lens(
            stories,
            story_texts(seed=4, n=12),
            max_prompts=3,
            max_tokens=32,
            progress=lambda *a: stop.set(),
            cancel=stop,
        )
    with pytest.raises(FitCancelled, match="after 0 of"):
        fit_jacobian_lens(stories, story_texts(seed=4, n=12), max_prompts=3, max_tokens=32, cancel=lambda: True)


def test_budget_caps_the_prompts(stories):
    fitted = fit_jacobian_lens(stories, story_texts(seed=5, n=40), max_prompts=1, max_tokens=32)
    assert fitted.n_prompts == 1


def test_lens_for_another_model_is_refused_by_shape_and_by_unembedding(stories, stories_lens, demo, gpt2_tokenizer):
    with pytest.raises(LensError, match="d_model 64.*d_model 128"):
        run_lens(demo, "Hello there", lens=stories_lens)
    from transformers import GPT2Config, GPT2LMHeadModel

    from lens import LensModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=gpt2_tokenizer.vocab_size)
    one, other = (LensModel.from_hf(GPT2LMHeadModel(config).eval(), gpt2_tokenizer, name="same-name") for _ in range(2))
    eye = torch.eye(32)
    made_for_one = JacobianLens(
        TLJacobianLens(
            {0: eye},
            n_prompts=1,
            d_model=32,
            metadata={DASHBOARD_KEY: {"d_vocab": one.d_vocab, "unembed_probe": unembed_probe(one)}},
        )
    )
    made_for_one.check_compatible(one)
    with pytest.raises(LensError, match="another unembedding"):
        run_lens(other, "Hello there", lens=made_for_one)


def test_rows_without_a_jacobian_are_refused(stories, stories_lens):
    for points in (("resid_pre", "resid_post"), ("resid_mid", "resid_post")):
        with pytest.raises(LensError, match="block outputs only"):
            run_lens(stories, "Once upon a time", lens=stories_lens, points=points)


def _write(path, payload):
    torch.save(payload, path)
    return path


def test_bad_files_get_one_line(tmp_path, stories_lens, monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a lens at all" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(stories_lens.save(tmp_path / "whole.pt").read_bytes()[:3000])
    wrong = _write(tmp_path / "wrong.pt", {"weights": torch.zeros(3)})
    bad_shape = _write(tmp_path / "shape.pt", {"J": {0: torch.zeros(4, 5)}, "n_prompts": 1, "d_model": 4})
    nan = stories_lens.fitted.jacobians[2].clone()
    nan[1, 1] = float("nan")
    with_nan = _write(tmp_path / "nan.pt", {"J": {2: nan}, "n_prompts": 1, "d_model": 64})
    inf = _write(tmp_path / "inf.pt", {"J": {0: torch.full((4, 4), float("inf"))}, "n_prompts": 1, "d_model": 4})
    code = _write(tmp_path / "code.pt", {"J": zipfile.ZipInfo("x")})  # an object weights_only won't build
    cases = {
        junk: "not a torch.save archive",
        truncated: "not a torch.save archive|not a Jacobian lens file",
        wrong: "not a Jacobian lens file",
        bad_shape: "not a Jacobian lens file: jacobians\\[0\\] has shape",
        with_nan: "J\\[2\\] holds NaN",
        inf: "J\\[0\\] holds NaN or infinite",
        code: "not a Jacobian lens file",
        tmp_path / "missing.pt": "no Jacobian lens file",
    }
    for path, message in cases.items():
        with pytest.raises(LensError, match=message) as info:
            JacobianLens.load(path)
        assert "\n" not in str(info.value)


def test_oversized_file_is_refused_from_its_header_before_loading(tmp_path, stories_lens, monkeypatch):
    path = stories_lens.save(tmp_path / "lens.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load ran before the size check")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(LensError, match="Jacobian lens 'lens.pt' has about .* parameters"):
        JacobianLens.load(path, max_bytes=10_000)  # the 4 x 64 x 64 fp32 matrices are 64 kB


def test_models_the_fit_cannot_run_on_get_one_line(stories):
    texts = story_texts(seed=6, n=4)
    nnsight = load_model(str(STORIES), backend="nnsight")
    with pytest.raises(LensError, match="TransformerLens backend"):
        fit_jacobian_lens(nnsight, texts, max_prompts=1, max_tokens=32)
    for bad, message in (
        ({"max_prompts": 0}, "max_prompts must be a whole number"),
        ({"max_tokens": 8}, "max_tokens must be a whole number of at least 18"),
        ({"cancel": "stop"}, "cancel must be"),
    ):
        with pytest.raises(LensError, match=message):
            fit_jacobian_lens(stories, texts, **{"max_prompts": 1, "max_tokens": 32, **bad})
    with pytest.raises(LensError, match="fewer than 18 tokens"):
        fit_jacobian_lens(stories, ["Hi."], max_prompts=1, max_tokens=32)
    with pytest.raises(LensError, match="Give some text"):
        fit_jacobian_lens(stories, ["  "], max_prompts=1)
    with pytest.raises(LensError, match="loaded model"):
        fit_jacobian_lens("stories", texts)


def test_published_lens_offline_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(LensError, match="not cached here and the Hugging Face hub can't be reached.*fit one"):
        published_jacobian_lens("openai-community/gpt2")
    with pytest.raises(LensError, match="No Jacobian lens is published for 'demo' and none is fitted here.*fit one"):
        published_jacobian_lens("demo")


def test_published_lens_is_read_from_the_cache_offline(tmp_path, monkeypatch):
    """A lens downloaded once sits in the hub cache at the registry's pinned commit; offline, it is read there."""
    from huggingface_hub import constants
    from transformer_lens.tools.analysis import jacobian_lens as tl_jacobian

    repo_id, filename = tl_jacobian._resolve_registry_entry("gpt2")
    snapshot = (
        tmp_path / f"models--{repo_id.replace('/', '--')}" / "snapshots" / tl_jacobian._registry_revision() / filename
    )
    snapshot.parent.mkdir(parents=True)
    eye = torch.eye(8)
    TLJacobianLens({0: eye, 1: 2 * eye}, n_prompts=3, d_model=8).save(str(snapshot))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    lens = published_jacobian_lens("openai-community/gpt2")
    assert lens.n_prompts == 3 and lens.source_layers == [0, 1]
    torch.testing.assert_close(lens.fitted.jacobians[1], 2 * eye)
