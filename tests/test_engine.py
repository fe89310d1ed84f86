"""Engine behaviour beyond parity: results, targets, exports, bad input, concurrency, CLI."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from lens import LensError, LensResult, engine, load_model, retarget, run_lens
from lens.cli import main as cli_main
from lens.tokens import readable
from tests.conftest import ROOT, STORIES

STORY = "Once upon a time, there was a little girl named"


def test_target_probability_logit_and_rank_are_exact(stories):
    result = run_lens(stories, STORY, targets=[" Lily", 42], points=("resid_pre", "resid_mid", "resid_post"))
    assert result.targets[0] == "␣Lily" and result.target_ids[1] == 42
    # Independent check from the kept-free path: full logits of every cell, computed directly.
    with torch.no_grad():
        _, cache = stories.bridge.run_with_cache(torch.tensor([result.token_ids]), names_filter=result.points)
        logits = torch.stack(
            [stories.bridge.unembed(stories.bridge.ln_final(cache[p][0])) for p in result.points]
        ).double()
    log_probs = torch.log_softmax(logits, -1)
    for t, token_id in enumerate(result.target_ids):
        np.testing.assert_allclose(result.target_logits[t], logits[..., token_id].numpy(), atol=1e-5)
        np.testing.assert_allclose(result.target_probs[t], log_probs[..., token_id].exp().numpy(), atol=1e-6)
        expected_rank = 1 + (logits > logits[..., token_id : token_id + 1]).sum(-1).numpy()
        np.testing.assert_array_equal(result.target_ranks[t], expected_rank)
    assert result.target_ranks[0, -1, -1] == 1  # the output names Lily


def test_ranks_of_several_targets_equal_a_brute_force_count_across_chunks(gpt2_small_random):
    """A 50,257-token vocabulary in two chunks of many slabs: each rank is 1 + #(fp32 logits above the target's)."""
    model, _ = gpt2_small_random
    prompt = "The Eiffel Tower is in the city of Paris, which is the capital of France. " * 6
    result = run_lens(model, prompt, targets=[" the", " Paris", 50256, 0], keep_unembed_input=True)
    assert result.n_positions * result.n_rows > engine._chunk_cells(model.d_vocab)  # more than one chunk
    for r in range(result.n_rows):
        logits = torch.from_numpy(result.unembed_input[r]) @ model.readout.unembed_weight  # [positions, vocab], fp32
        np.testing.assert_allclose(result.log_normalizer[r], torch.logsumexp(logits.double(), -1), atol=1e-4)
        for t, token_id in enumerate(result.target_ids):
            target = logits[:, token_id : token_id + 1]
            np.testing.assert_array_equal(result.target_ranks[t, r], 1 + (logits > target).sum(-1).numpy())
            np.testing.assert_array_equal(result.target_logits[t, r], target[:, 0].numpy())
    moved = retarget(model, result, [0, " Paris"])
    np.testing.assert_array_equal(moved.target_ranks, result.target_ranks[[3, 1]])


@pytest.mark.parametrize("n_positions", [1, 7, 37])
def test_single_pass_statistics_equal_a_float64_computation_in_small_chunks_and_slabs(
    stories, monkeypatch, n_positions
):
    """Chunks padded to the GEMM step, many slabs, running maxima that rise slab after slab, targets in late slabs.

    The vocabulary is reversed so each cell's largest logits tend to come late, and the
    sizes are shrunk so a chunk holds a few positions and a slab a few 64-row blocks.
    """
    vocab = stories.d_vocab
    monkeypatch.setattr(engine, "CHUNK_BYTES", 4 * vocab * 5 * 3)  # 3 positions of 5 rows
    monkeypatch.setattr(engine, "SLAB_BYTES", 4 * 64 * 40 * 2)  # two blocks a slab, at 40 cells
    monkeypatch.setattr(engine, "REDUCE_BYTES", 4 * 64 * 40)
    flipped = torch.flip(stories.readout.unembed_rows, [0])
    monkeypatch.setattr(stories.readout, "unembed_rows", flipped)
    torch.manual_seed(n_positions)
    normed = torch.randn(5, n_positions, stories.d_model) * 2
    targets, next_ids = [vocab - 1, 3, 300], torch.randint(0, vocab, (n_positions,)).tolist()
    stats = engine.cell_statistics(stories.readout, normed, 5, targets, next_ids=next_ids)

    logits = (normed @ flipped.t()).double()  # [rows, positions, vocab]
    log_probs = torch.log_softmax(logits, -1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    kl = (probs[-1] * (log_probs[-1] - log_probs)).sum(-1)
    np.testing.assert_allclose(stats["log_normalizer"], torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(stats["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(stats["kl_to_final"], kl, atol=1e-5)
    top = torch.topk(logits, 5, dim=-1)
    np.testing.assert_array_equal(stats["top_ids"], top.indices)
    np.testing.assert_allclose(stats["top_probs"], top.values.sub(torch.logsumexp(logits, -1, True)).exp(), atol=1e-6)
    fp32 = normed @ flipped.t()
    for t, token_id in enumerate(targets):
        target = fp32[..., token_id : token_id + 1]
        np.testing.assert_array_equal(stats["target_ranks"][t], 1 + (fp32 > target).sum(-1).numpy())
        np.testing.assert_allclose(stats["target_probs"][t], probs[..., token_id], atol=1e-6)
    np.testing.assert_allclose(stats["next_logits"], logits[:, torch.arange(n_positions), next_ids], atol=1e-5)


def test_the_lens_forward_stops_before_the_models_own_logits(gpt2_small_random):
    """run_lens never runs the model's unembedding (a third of a long forward pass), and leaves no hook behind."""
    model, _ = gpt2_small_random
    calls = []
    handle = model.bridge.unembed.register_forward_hook(lambda *args: calls.append(1))
    try:
        result = run_lens(model, "The Eiffel Tower is in the city of")
        assert calls == []
        with torch.no_grad():
            logits = model.bridge(torch.tensor([result.token_ids]))
        assert calls == [1]
    finally:
        handle.remove()
    assert not any(h._forward_hooks for h in model.bridge.hook_dict.values())
    np.testing.assert_allclose(result.log_normalizer[-1], torch.logsumexp(logits[0].double(), -1), atol=1e-4)


def test_retarget_matches_a_fresh_run_without_forward_pass(stories, monkeypatch):
    base = run_lens(stories, STORY, keep_unembed_input=True)
    fresh = run_lens(stories, STORY, targets=[" Lily", " Tim"])

    def no_forward(*args, **kwargs):
        raise AssertionError("retarget ran the model")

    monkeypatch.setattr(stories.bridge, "run_with_cache", no_forward)
    moved = retarget(stories, base, [" Lily", " Tim"])
    assert moved.target_ids == fresh.target_ids
    np.testing.assert_allclose(moved.target_probs, fresh.target_probs, atol=1e-6)
    np.testing.assert_array_equal(moved.target_ranks, fresh.target_ranks)


def test_json_round_trip_is_lossless(stories):
    result = run_lens(stories, STORY, targets=[" Lily"], keep_unembed_input=True)
    back = LensResult.from_json(result.to_json())
    assert back.equals(result)
    assert back.top_probs.dtype == np.float32 and back.unembed_input.dtype == np.float32
    slim = LensResult.from_json(result.to_json(include_unembed_input=False))
    assert slim.unembed_input is None and np.array_equal(slim.entropy, result.entropy)


def test_frame_has_one_row_per_cell(stories):
    result = run_lens(stories, STORY, top_k=3, targets=[" Lily"])
    frame = result.to_frame()
    assert len(frame) == result.n_rows * result.n_positions
    last = frame[(frame.row == result.n_rows - 1) & (frame.position == result.n_positions - 1)].iloc[0]
    assert last.top1_token == "␣Lily" and last["rank[␣Lily]"] == 1
    assert np.isclose(last.top1_prob, result.top_probs[-1, -1, 0])


def test_bos_follows_model_default_unless_overridden(stories):
    assert run_lens(stories, STORY).token_ids[0] == 1
    assert run_lens(stories, STORY, prepend_bos=False).token_ids[0] != 1
    assert run_lens(stories, STORY, prepend_bos=False).prepend_bos is False


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b" Paris", "␣Paris"),
        (b"\n", "↵"),
        (b"\xe6\x97", "\\xe6\\x97"),
        (b"\x00", "\\x00"),
        (b"", "∅"),
        ("é".encode(), "é"),
    ],
)
def test_readable_tokens(raw, shown):
    assert readable(raw) == shown


def test_gpt2_and_sentencepiece_spaces_look_the_same(stories, gpt2_tokenizer):
    from lens.tokens import TokenNamer

    gpt2 = TokenNamer(gpt2_tokenizer)
    assert gpt2(gpt2_tokenizer.convert_tokens_to_ids("ĠParis")) == "␣Paris"
    assert stories.token_name(stories.tokenizer.convert_tokens_to_ids("▁Lily")) == "␣Lily"
    assert stories.token_name(stories.tokenizer.convert_tokens_to_ids("<0xE6>")) == "\\xe6"
    # A GPT-2 token that is half of a UTF-8 character is shown by its byte, not as "�".
    half = gpt2_tokenizer.encode("日本")[0]
    assert "�" not in gpt2(half) and gpt2(half)


@pytest.mark.parametrize(
    ("prompt", "kwargs", "message"),
    [
        ("", {}, "prompt is empty"),
        ("   \n", {}, "prompt is empty"),
        ("word " * 600, {}, "reads at most 512"),
        (STORY, {"top_k": 0}, "top_k"),
        (STORY, {"points": ("resid_middle",)}, "Unknown residual point"),
        (STORY, {"targets": [""]}, "target token is empty"),
    ],
)
def test_bad_input_raises_one_clear_line(stories, prompt, kwargs, message):
    with pytest.raises(LensError, match=message) as info:
        run_lens(stories, prompt, **kwargs)
    assert "\n" not in str(info.value)
    assert run_lens(stories, STORY).top_tokens[-1, -1, 0] == "␣Lily"  # still works


def test_several_token_target_uses_first_token_and_warns(stories):
    result = run_lens(stories, STORY, targets=["Lilyanna"])
    assert len(result.target_ids) == 1
    assert result.warnings and "first token" in result.warnings[0]


def test_unknown_model_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(LensError, match="Could not download model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name", ["/definitely/not/here", "not a model id!"])
def test_missing_or_malformed_model_names(name):
    with pytest.raises(LensError):
        load_model(name)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LensError, match="not a model folder"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LensError, match="Could not load model"):
        load_model(str(tmp_path))


def test_concurrent_runs_on_one_model_equal_single_threaded(stories):
    prompts = [f"{STORY[: 10 + 4 * i]}" for i in range(8)]
    expected = [run_lens(stories, p, targets=[" Lily"]) for p in prompts]
    failures: list[str] = []

    def worker(i: int) -> None:
        for _ in range(50):
            got = run_lens(stories, prompts[i], targets=[" Lily"])
            if not got.equals(expected[i]):
                failures.append(f"thread {i}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lens", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_json_and_table(stories, tmp_path):
    out = tmp_path / "lens.json"
    done = _cli(STORY, "--model", str(STORIES), "--target", " Lily", "--format", "json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = LensResult.from_json(out.read_text())
    assert np.array_equal(result.top_ids, run_lens(stories, STORY, top_k=5, targets=[" Lily"]).top_ids)
    table = _cli(STORY, "--model", str(STORIES), "--no-bos", "--top-k", "2")
    assert table.returncode == 0 and "␣Lily" in table.stdout.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "--model", str(STORIES)), "prompt is empty"),
        (("word " * 600, "--model", str(STORIES)), "at most 512"),
        ((STORY, "--model", "nobody/no-such-model"), "Could not download"),
        ((STORY, "--model", str(ROOT / "tests")), "not a model folder"),
        ((STORY, "--top-k", "many"), "invalid int value"),
        ((STORY, "--model", str(STORIES), "--out", "/nonexistent/dir/x.csv"), "error:"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, message, capsys):
    assert cli_main(list(args)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_cli_error_in_a_real_process_has_no_traceback():
    done = _cli("", "--model", str(STORIES))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: The prompt is empty: type some text to look at."


def test_cli_warns_about_several_token_target(capsys):
    assert cli_main([STORY, "--model", str(STORIES), "--target", "Lilyanna"]) == 0
    assert "first token" in capsys.readouterr().err
