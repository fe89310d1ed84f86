"""Tuned lens: training lowers KL to the output, saving is lossless, mismatches are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lens import LensError, corpus_stats, run_lens
from lens.tuned import TunedLens, TunedLensConfig, train_tuned_lens

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Tim"]
THINGS = ["ball", "kite", "cake", "dog", "toy car", "red hat", "book", "flower"]
PLACES = ["park", "beach", "garden", "forest", "school", "store"]


def story_texts(seed: int, n: int) -> list[str]:
    """Simple TinyStories-like sentences, built here so training and held-out text differ."""
    rng = np.random.default_rng(seed)
    return [
        f"Once upon a time, there was a little girl named {rng.choice(NAMES)}. She had a {rng.choice(THINGS)}. "
        f"One day, she went to the {rng.choice(PLACES)} with her mom. They played and had a lot of fun."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def trained(stories):
    return train_tuned_lens(stories, stories_text_cache(), steps=300, lr=3e-3, window=64, seed=0)


def stories_text_cache() -> list[str]:
    return story_texts(seed=1, n=60)


def test_training_lowers_kl_on_held_out_text_for_every_row_but_the_last(stories, trained):
    held_out = story_texts(seed=2, n=10)
    logit = corpus_stats(stories, held_out)
    tuned = corpus_stats(stories, held_out, lens=trained)
    print("\nlayer        logit-lens KL  tuned-lens KL")
    for layer, a, b in zip(logit.layer, logit.kl_to_final, tuned.kl_to_final, strict=True):
        print(f"{layer:<12} {a:13.3f} {b:14.3f}")
    for a, b in zip(logit.kl_to_final.iloc[:-1], tuned.kl_to_final.iloc[:-1], strict=True):
        assert b < 0.8 * a  # at least a 20% cut on every row
    assert tuned.kl_to_final.iloc[-1] < 1e-5 and logit.kl_to_final.iloc[-1] < 1e-5
    assert trained.history[-1] < 0.5 * trained.history[0]


def test_last_row_is_the_model_output_unchanged(stories, trained):
    prompt = "Once upon a time, there was a little girl named"
    plain = run_lens(stories, prompt)
    tuned = run_lens(stories, prompt, lens=trained)
    assert tuned.lens_kind == "tuned"
    np.testing.assert_array_equal(tuned.top_ids[-1], plain.top_ids[-1])
    np.testing.assert_allclose(tuned.top_probs[-1], plain.top_probs[-1], atol=1e-6)
    assert not np.allclose(tuned.top_probs[0], plain.top_probs[0])


def test_training_is_reproducible(stories):
    texts = stories_text_cache()[:20]
    a = train_tuned_lens(stories, texts, steps=5, window=32, seed=3)
    b = train_tuned_lens(stories, texts, steps=5, window=32, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.history == b.history


def test_save_and_load_round_trip_gives_identical_results(stories, trained, tmp_path):
    trained.save(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["config.json", "history.json", "params.pt"]
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert set(config) == {
        "base_model_name_or_path",
        "d_model",
        "num_hidden_layers",
        "bias",
        "base_model_revision",
        "unembed_hash",
        "lens_type",
    }
    state = torch.load(tmp_path / "lens" / "params.pt", weights_only=True)
    assert set(state) == {f"{i}.{p}" for i in range(stories.n_layers) for p in ("weight", "bias")}
    loaded = TunedLens.load(tmp_path / "lens")
    prompt = "One day, Tom went to the park"
    assert run_lens(stories, prompt, lens=loaded).equals(run_lens(stories, prompt, lens=trained))
    assert loaded.history == trained.history


def test_mismatched_lens_is_refused(stories, neox_random):
    other, _ = neox_random
    with pytest.raises(LensError, match="made for"):
        run_lens(stories, "Once upon a time", lens=TunedLens.for_model(other))
    renamed = TunedLens(TunedLensConfig("someone/another-model", stories.d_model, stories.n_layers))
    with pytest.raises(LensError, match="not '"):
        run_lens(stories, "Once upon a time", lens=renamed)


def test_not_a_lens_folder_and_offline_hub(tmp_path):
    with pytest.raises(LensError, match="not a tuned lens folder"):
        (tmp_path / "config.json").write_text("{}")
        TunedLens.load(tmp_path)
    with pytest.raises(LensError, match="Could not fetch a published tuned lens"):
        TunedLens.load("openai-community/gpt2")
