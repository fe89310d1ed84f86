"""Corpus statistics: parity with the model's own loss and a direct first-row computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lens import LensError, corpus, corpus_stats
from tests.conftest import STORIES

TEXTS = [
    "Once upon a time, there was a little girl named Lily. She liked to play in the park.",
    "Tom had a big red ball. He threw it to his dog, and the dog ran after it.",
    "The sun was hot, so Mia and her mom went to the beach to swim in the cool water.",
]


def _windows(tokenizer, texts, window):
    """The exact inputs corpus_stats feeds: BOS plus chunks of window - 1 tokens."""
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), window - 1):
            yield [tokenizer.bos_token_id, *ids[start : start + window - 1]]


@pytest.fixture(scope="module")
def hf_stories():
    return AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()


def test_last_row_cross_entropy_is_the_models_loss_and_first_row_matches(stories, hf_stories):
    window = 12  # several windows per text
    frame = corpus_stats(stories, TEXTS, window=window)
    losses, first_row_nll, n = [], [], 0
    block0 = hf_stories.model.layers[0]
    with torch.no_grad():
        for fed in _windows(stories.tokenizer, TEXTS, window):
            if len(fed) < 2:
                continue
            ids = torch.tensor([fed])
            captured = []
            handle = block0.register_forward_hook(lambda _m, _i, out, into=captured: into.append(out))
            out = hf_stories(ids, labels=ids)
            handle.remove()
            count = len(fed) - 1
            losses.append(out.loss.item() * count)
            hidden = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
            logits0 = hf_stories.lm_head(hf_stories.model.norm(hidden))[0, :-1].double()
            log_probs0 = torch.log_softmax(logits0, -1)
            first_row_nll.append(-log_probs0.gather(1, ids[0, 1:, None]).sum().item())
            n += count
    assert frame.n_tokens.iloc[0] == n
    print("model loss", sum(losses) / n, "lens last row", frame.cross_entropy.iloc[-1])
    assert math.isclose(frame.cross_entropy.iloc[-1], sum(losses) / n, abs_tol=1e-4)
    assert math.isclose(frame.cross_entropy.iloc[0], sum(first_row_nll) / n, abs_tol=1e-4)
    assert frame.top1_agreement.iloc[-1] == 1.0 and frame.kl_to_final.iloc[-1] < 1e-5
    # The last row predicts far better than the first on real text.
    assert frame.cross_entropy.iloc[-1] < frame.cross_entropy.iloc[0] - 2


def test_bits_per_byte_and_cap(stories):
    frame = corpus_stats(stories, TEXTS, max_tokens=20)
    assert frame.attrs["capped"] and frame.n_tokens.iloc[0] == 20
    # bits per byte = nats per token / ln 2 * tokens per byte, so the two rank rows alike.
    assert np.all(np.argsort(frame.bits_per_byte.to_numpy()) == np.argsort(frame.cross_entropy.to_numpy()))
    assert (frame.bits_per_byte > 0).all()


def test_progress_reports_an_estimate(stories, monkeypatch):
    monkeypatch.setattr(corpus, "BATCH_TOKENS", 40)  # one text per forward pass, so one report per text
    seen = []
    corpus_stats(stories, TEXTS, progress=lambda done, expected, left: seen.append((done, expected, left)))
    assert len(seen) == len(TEXTS) and seen[-1][0] == seen[-1][1]
    assert all(left is not None and left >= 0 for _, _, left in seen)


@pytest.mark.parametrize("texts", [[], ["", "   "], ["a"]])
def test_nothing_to_predict_is_a_clear_error(stories, texts):
    with pytest.raises(LensError, match="no tokens to predict"):
        corpus_stats(stories, texts, prepend_bos=False)
