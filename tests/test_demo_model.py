"""The demo model shipped in models/demo: it loads offline, the lens reads it exactly, and it learned something.

Everything here reads only the files in models/demo (see scripts/train_demo_model.py and its model card).
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
PROMPT = "And Moses said unto the children of Israel, Thus saith the LORD God of Israel,"


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((DEMO / "metrics.json").read_text())


@pytest.fixture(scope="module")
def hf_model():
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(DEMO), torch_dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO))


@pytest.fixture(scope="module")
def lens_model():
    from lens import load_model

    return load_model("demo", device="cpu")


def test_files_are_small_and_fp16():
    from safetensors.torch import load_file

    size = sum(f.stat().st_size for f in DEMO.iterdir() if f.is_file())
    assert size <= 10 * 2**20, f"models/demo is {size / 2**20:.1f} MiB"
    assert (DEMO / "heldout_sample.txt").stat().st_size <= 100_000
    assert {t.dtype for t in load_file(str(DEMO / "model.safetensors")).values()} == {torch.float16}


def test_tokenizer_is_gpt2_style(tokenizer, hf_model):
    assert tokenizer.is_fast
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.bos_token_id == hf_model.config.bos_token_id == 0
    assert len(tokenizer) == hf_model.config.vocab_size
    text = "To be, or not to be: that is the question.\n  Whither?"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert hf_model.config.n_layer >= 4 and next(hf_model.parameters()).dtype == torch.float32


def test_lens_last_row_is_the_model_output(lens_model, hf_model):
    """load_model("demo") offline; the lens's final row equals the HF model's own next-token distribution."""
    from lens import run_lens

    assert lens_model.name == "demo"
    result = run_lens(lens_model, PROMPT, top_k=10, keep_unembed_input=True, prepend_bos=True)  # trained after BOS
    assert result.token_ids[0] == 0 and len(result.layers) == hf_model.config.n_layer
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([result.token_ids])).logits[0].float()
    reference = torch.log_softmax(logits, dim=-1)
    normed = torch.from_numpy(result.unembed_input[-1])
    lens_log_probs = torch.log_softmax(lens_model.readout.logits(normed), dim=-1)
    kl = (reference.exp() * (reference - lens_log_probs)).sum(-1)
    print(f"max KL(HF || lens final row) = {kl.max().item():.2e}")
    assert kl.max().item() < 1e-5

    top_probs, top_ids = reference.exp().topk(10, dim=-1)
    assert np.array_equal(result.top_ids[-1, :, 0], top_ids[:, 0].numpy())
    np.testing.assert_allclose(result.top_probs[-1, :, 0], top_probs[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        result.top_probs[-1], reference.exp().gather(-1, torch.from_numpy(result.top_ids[-1])).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(result.log_normalizer[-1], torch.logsumexp(logits, -1).numpy(), rtol=1e-5, atol=1e-4)
    assert np.all(np.abs(result.kl_to_final[-1]) < 1e-5)


def test_beats_the_unigram_baseline_on_heldout_text(hf_model, tokenizer, metrics):
    """Top-1 next-token accuracy on held-out text, against the best constant guess for that same text."""
    text = (DEMO / "heldout_sample.txt").read_text(encoding="utf-8")
    stream = np.array(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    width = hf_model.config.n_positions - 1
    n = len(stream) // width
    # Every third window of the sample (it runs through the Bible, then the plays, then the novels) keeps this fast.
    windows = torch.from_numpy(stream[: n * width].reshape(n, width))[::3]
    n = len(windows)
    inputs = torch.cat([torch.zeros((n, 1), dtype=torch.long), windows], dim=1)
    with torch.inference_mode():
        predicted = hf_model(input_ids=inputs).logits[:, :-1].argmax(-1)
    targets = windows.numpy().ravel()
    accuracy = float(np.mean(predicted.numpy().ravel() == targets))
    # The baseline gets the sample's own most frequent token: no constant guess does better on this text.
    best_constant = float(np.bincount(targets).max() / len(targets))
    training_unigram = float(np.mean(targets == metrics["unigram_baseline"]["token_id"]))
    print(
        f"held-out sample: {len(targets)} tokens, top-1 accuracy {accuracy:.3f}; "
        f"best constant guess {best_constant:.3f}, training unigram guess {training_unigram:.3f}"
    )
    assert len(targets) > 4000
    assert best_constant >= training_unigram
    assert accuracy > best_constant + 0.10


def test_predictable_heldout_phrase(lens_model, hf_model, tokenizer, metrics):
    """A formula the corpus repeats, taken from held-out text, is completed greedily."""
    from lens import run_lens

    phrase = metrics["predictable_phrase"]
    prompt, expected = phrase["prompt"], phrase["expected"]
    assert prompt + expected in (DEMO / "heldout_sample.txt").read_text(encoding="utf-8")
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        greedy = int(hf_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert tokenizer.decode([greedy]) == expected

    result = run_lens(lens_model, prompt, top_k=3, targets=[expected], prepend_bos=True)
    assert result.token_ids == ids
    assert result.top_ids[-1, -1, 0] == greedy
    assert result.target_ranks[0, -1, -1] == 1
