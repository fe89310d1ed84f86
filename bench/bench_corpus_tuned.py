"""corpus_stats throughput against its floor, its memory as the corpus doubles, and tuned-lens training.

    python -m bench.bench_corpus_tuned

On the GPT-2-small shape: tokens per second of corpus_stats and of the floors (Hugging Face's
SDPA forward pass, or TransformerLens's, plus the bare vocab-major unembedding matmul of every
row) over the same windows, taking turns; many short lines, batched against one forward
pass per line; peak
memory (VmHWM, each in a fresh process) for a corpus and for one twice its size. Tuned-lens
training: time and peak memory beyond the loaded model for a stated number of steps.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench.bench_lens import floor_hf, floor_tl
from bench.common import ROOT, SHARED_MODELS, TEXT, gpt2_small_hf, gpt2_small_random, peak_rss_mb

WINDOW = 256


def corpus_texts(model, n_windows: int) -> list[str]:
    ids = model.tokenizer(TEXT * (n_windows * WINDOW // 20 + 5), add_special_tokens=False)["input_ids"]
    return [model.tokenizer.decode(ids[i * (WINDOW - 1) : (i + 1) * (WINDOW - 1)]) for i in range(n_windows)]


def throughput(n_windows: int = 6, repeats: int = 3) -> None:
    from lens import corpus_stats

    model = gpt2_small_random()
    hf = gpt2_small_hf("sdpa")
    texts = corpus_texts(model, n_windows)
    tokens = int(corpus_stats(model, texts, window=WINDOW, max_tokens=10**9).n_tokens.iloc[0])  # and warm-up
    methods = {
        "corpus_stats": lambda: corpus_stats(model, texts, window=WINDOW, max_tokens=10**9),
        "floor_hf": lambda: [floor_hf(model, text, hf) for text in texts],
        "floor_tl": lambda: [floor_tl(model, text) for text in texts],
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    rate = {name: tokens / s for name, s in median.items()}
    print(
        f"corpus_stats: {rate['corpus_stats']:.0f} tokens/s over {tokens} tokens in {WINDOW}-token windows; "
        f"floor (HF SDPA forward + matmul) {rate['floor_hf']:.0f} tokens/s, floor (TL forward + matmul) "
        f"{rate['floor_tl']:.0f} tokens/s; corpus_stats runs at {rate['corpus_stats'] / rate['floor_hf']:.2f}x "
        f"the true floor's rate (median of {repeats} turns)"
    )


def short_lines(n_lines: int = 100, repeats: int = 3) -> None:
    """The Dataset page's common case, many short lines: batched forward passes against one per line."""
    from lens import corpus, corpus_stats

    model = gpt2_small_random()
    words = TEXT.split()
    lines = [" ".join(words[i % 40 : i % 40 + 8 + i % 7]) for i in range(n_lines)]
    one_per_pass = corpus.BATCH_TOKENS

    def alone() -> None:
        corpus.BATCH_TOKENS = 1  # every line fills a batch of its own
        try:
            corpus_stats(model, lines, window=WINDOW, max_tokens=10**9)
        finally:
            corpus.BATCH_TOKENS = one_per_pass

    def batched() -> None:
        corpus_stats(model, lines, window=WINDOW, max_tokens=10**9)

    tokens = int(corpus_stats(model, lines, window=WINDOW, max_tokens=10**9).n_tokens.iloc[0])  # and warm-up
    seconds: dict[str, list[float]] = {"alone": [], "batched": []}
    for _ in range(repeats):
        for name, method in (("alone", alone), ("batched", batched)):
            start = time.perf_counter()
            method()
            seconds[name].append(time.perf_counter() - start)
    alone_s, batched_s = statistics.median(seconds["alone"]), statistics.median(seconds["batched"])
    print(
        f"{n_lines} short lines ({tokens} predicted tokens): one forward pass per line {alone_s:.2f} s, "
        f"batched {batched_s:.2f} s: {alone_s / batched_s:.1f}x faster (median of {repeats} turns)"
    )


def corpus_peak(n_windows: int) -> float:
    from lens import corpus_stats

    model = gpt2_small_random()
    texts = corpus_texts(model, n_windows)
    corpus_stats(model, texts[:1], window=WINDOW)
    before = peak_rss_mb()
    corpus_stats(model, texts, window=WINDOW, max_tokens=10**9)
    return peak_rss_mb() - before


def training(model_name: str, steps: int, window: int) -> dict:
    from lens import load_model
    from lens.tuned import train_tuned_lens
    from ui.corpus_input import sample_texts

    model = gpt2_small_random() if model_name == "gpt2" else load_model(str(SHARED_MODELS / "stories260K"))
    before = peak_rss_mb()
    start = time.perf_counter()
    lens = train_tuned_lens(model, sample_texts(), steps=steps, window=window)
    return {
        "seconds": time.perf_counter() - start,
        "extra_mb": peak_rss_mb() - before,
        "kl_first": lens.history[0],
        "kl_last": lens.history[-1],
    }


def in_fresh_process(*args: str):
    done = subprocess.run(
        [sys.executable, "-m", __spec__.name, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1:
        what = sys.argv[1]
        result = corpus_peak(int(sys.argv[2])) if what == "peak" else training(what, int(sys.argv[2]), int(sys.argv[3]))
        print(json.dumps(result))
        return
    throughput()
    short_lines()
    small, large = in_fresh_process("peak", "4"), in_fresh_process("peak", "8")
    print(
        f"corpus_stats peak memory beyond the model: {small:.0f} MB for 4 windows, {large:.0f} MB for 8 "
        f"(+{large - small:.0f} MB; one {WINDOW}-token window's chunk buffers are ~300 MB)"
    )
    for name, steps, window in (("stories260K", 300, 64), ("gpt2", 10, 64)):
        r = in_fresh_process(name, str(steps), str(window))
        print(
            f"tuned lens on {name}: {steps} steps of {window} tokens in {r['seconds']:.1f} s "
            f"({r['seconds'] / steps:.2f} s/step), peak +{r['extra_mb']:.0f} MB over the model; "
            f"mean KL {r['kl_first']:.2f} -> {r['kl_last']:.2f} nats"
        )


if __name__ == "__main__":
    main()
