"""An activation-patching sweep against as many separate forward passes, on the GPT-2-small shape.

    python -m bench.bench_patch [--tokens 13] [--repeats 5] [--skip-batch-1]

(a) lens.patch: resid_pre at every (layer, position), 12 x 13 = 156 patched runs, batched
    (plus the clean and corrupted runs it needs).
(b) the floor it replaces: 156 separate plain forward passes of the corrupted prompt
    (no hooks, stopped before the final norm, as a patched run is).
(c) lens.patch with batch_size=1: the same sweep one patched run per forward pass.

The methods take turns in one process (median of --repeats turns). Peak memory is the
rise of this process's peak RSS over its RSS before one sweep (the peak is reset first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.common import gpt2_small_random, peak_rss_mb, prompt_of_length, rss_mb


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux's clear_refs); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-batch-1", action="store_true", help="leave out (c), the slowest method")
    args = parser.parse_args()

    import torch

    from lens import patch
    from lens.engine import release_freed_memory

    model = gpt2_small_random()
    clean = prompt_of_length(model, args.tokens)
    ids = model.tokenizer(clean, add_special_tokens=False)["input_ids"]
    swapped = model.tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    corrupted_ids = [swapped, *ids[1:]]  # the first token: no cell is the corrupted run, all 156 run
    corrupted = model.tokenizer.decode(corrupted_ids)
    assert model.tokenizer(corrupted, add_special_tokens=False)["input_ids"] == corrupted_ids
    tokens = torch.tensor([corrupted_ids])
    final = f"blocks.{model.n_layers - 1}.hook_resid_post"
    n_runs = model.n_layers * args.tokens

    def sweep():
        return patch(model, clean, corrupted, target=" the", prepend_bos=False)

    def one_at_a_time():
        return patch(model, clean, corrupted, target=" the", prepend_bos=False, batch_size=1)

    def separate_passes():
        with model.lock, torch.no_grad():
            for _ in range(n_runs):
                model.capture(tokens, [final])

    methods = {"patch (batched)": sweep, f"{n_runs} forward passes": separate_passes}
    if not args.skip_batch_1:
        methods["patch (batch 1)"] = one_at_a_time
    patch(model, clean, corrupted, target=" the", prepend_bos=False, positions=[0])  # warm-up: every code path
    release_freed_memory()
    before = rss_mb()
    peak_known = reset_peak_rss()
    sweep()
    peak_rise = peak_rss_mb() - before
    print(f"  (peak memory of one batched sweep: {peak_rise:.0f} MB)", flush=True)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, work in methods.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
            print(f"  ({name}: {times[name][-1]:.2f} s)", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians[f"{n_runs} forward passes"]
    print(f"GPT-2-small shape, {model.n_layers} layers x {args.tokens} positions = {n_runs} patched runs (resid_pre)")
    for name, value in medians.items():
        print(f"  {name:24s} {value * 1000:8.1f} ms   {value / floor:5.2f}x the {n_runs} forward passes")
    shown = f"{peak_rise:.0f} MB" if peak_known else "unknown (clear_refs not allowed)"
    print(f"  peak memory of one batched sweep above the loaded model: {shown}")
    print(f"  goal: batched <= 0.3x -> {'met' if medians['patch (batched)'] <= 0.3 * floor else 'NOT met'}")


if __name__ == "__main__":
    main()
