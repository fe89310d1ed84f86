"""A prompt set read in batches against one run_lens per prompt, side by side, and each one's peak memory.

    python -m bench.bench_prompt_set [n_prompts] [turns]

On the GPT-2-small shape (random weights, GPT-2's tokenizer): ``n_prompts`` (default 200)
prompts of 8 to 12 tokens (about 10), each with a target and a contrast. "one per prompt"
is what a script without prompt_set does: ``run_lens`` on every prompt with its two
targets, reading the last position of the result. The two take turns (default 3); the
figure is the median of the turns. Peak memory (VmHWM beyond the loaded model) is measured in a fresh
process for each, so neither inherits the other's high-water mark. Goal: batched >= 2x faster.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, TEXT, gpt2_small_random, peak_rss_mb


def prompt_rows(model, n_prompts: int) -> list[dict]:
    """Prompts of 8-12 tokens cut from the benchmark text; the target is the text's next token."""
    ids = model.tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"]
    rows = []
    for i in range(n_prompts):
        start, length = (7 * i) % (len(ids) - 20), 8 + i % 5
        piece = ids[start : start + length]
        rows.append(
            {
                "prompt": model.tokenizer.decode(piece),
                "target": model.tokenizer.decode(ids[start + length]),
                "contrast": model.tokenizer.decode(ids[start + length + 1]),
                "group": f"length {length}",
            }
        )
    return rows


def batched(model, rows: list[dict]) -> None:
    from lens import prompt_set

    prompt_set(model, rows, top_k=1)


def one_per_prompt(model, rows: list[dict]) -> None:
    from lens import run_lens

    for row in rows:
        result = run_lens(model, row["prompt"], targets=[row["target"], row["contrast"]], top_k=1)
        result.target_probs[:, :, -1], result.target_logits[:, :, -1], result.target_ranks[:, :, -1]


METHODS = {"batched": batched, "one_per_prompt": one_per_prompt}


def peak(method: str, n_prompts: int) -> float:
    """MB of peak resident memory beyond the loaded model and a one-prompt warm-up, for one method."""
    model = gpt2_small_random()
    rows = prompt_rows(model, n_prompts)
    METHODS[method](model, rows[:1])
    before = peak_rss_mb()
    METHODS[method](model, rows)
    return peak_rss_mb() - before


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "peak":
        print(json.dumps(peak(sys.argv[2], int(sys.argv[3]))))
        return
    n_prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    turns = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    model = gpt2_small_random()
    rows = prompt_rows(model, n_prompts)
    lengths = [len(model.tokenizer(r["prompt"])["input_ids"]) for r in rows]
    for method in METHODS.values():
        method(model, rows[:4])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(turns):
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(model, rows)
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    print(
        f"{n_prompts} prompts of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.1f}), "
        f"GPT-2-small shape: prompt_set {median['batched']:.2f} s, one run_lens per prompt "
        f"{median['one_per_prompt']:.2f} s: {median['one_per_prompt'] / median['batched']:.1f}x faster "
        f"(median of {turns} turns, taking turns; goal >= 2x)"
    )
    for name in METHODS:
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_prompt_set", "peak", name, str(n_prompts)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        extra = json.loads(done.stdout.splitlines()[-1])
        print(f"peak memory beyond the loaded model and one warm-up prompt, {name}: {extra:.0f} MB")


if __name__ == "__main__":
    main()
