"""run_lens against the naive method and the floor, on a GPT-2-small-shaped model.

    python bench/bench_lens.py [--tokens 16 256 1024] [--repeats 3]

(a) naive: the seed notebook's way: every row's full logits, a full softmax, then the max.
(b) run_lens: the engine (top-10, entropy, KL to final, log-normaliser).
(c) floor: the forward pass plus the bare chunked fp32 matmul of every row with W_U, in
    the fastest layout measured on this machine (vocab-major, a reused output buffer).

Times: the three methods take turns in one process (median of --repeats turns), so drift
in the machine's speed hits all alike. Memory: each (method, length) runs once in its own
process, and the figure is the peak beyond what loading the model and one forward pass
already needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import ROOT, gpt2_small_random, peak_rss_mb, prompt_of_length

METHODS = ("naive", "run_lens", "floor")


def naive(model, prompt: str) -> None:
    import torch

    from lens.engine import lens_rows

    hooks = [r.hook for r in lens_rows(model)]
    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=hooks)
        resid = torch.stack([cache[h][0] for h in hooks])
        probs = torch.softmax(model.bridge.unembed(model.bridge.ln_final(resid)), dim=-1)
        probs.max(dim=-1)


def lens(model, prompt: str) -> None:
    from lens import run_lens

    run_lens(model, prompt, top_k=10, prepend_bos=False)


def floor(model, prompt: str) -> None:
    import torch

    from lens.engine import _chunk_cells, capture_normed, lens_rows

    rows = lens_rows(model)
    normed = capture_normed(model, model.tokenizer(prompt, add_special_tokens=False)["input_ids"], rows)
    n_rows, n_pos, d_model = normed.shape
    block = max(1, _chunk_cells(model.d_vocab) // n_rows)
    outputs = {}  # one reused output buffer per chunk width, as run_lens keeps
    for start in range(0, n_pos, block):
        x = normed[:, start : start + block].reshape(-1, d_model)
        if x.shape[0] not in outputs:
            outputs[x.shape[0]] = torch.zeros(model.d_vocab, x.shape[0])
        # The same chunks and vocab-major layout as run_lens: the fastest measured here.
        torch.mm(model.unembed_rows, x.t(), out=outputs[x.shape[0]])


def forward_only(model, prompt: str) -> None:
    import torch

    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))


FUNCTIONS = {"naive": naive, "run_lens": lens, "floor": floor}


def peak_memory(method: str, n_tokens: int) -> float:
    """In this fresh process: peak MB of one call beyond the loaded model and a forward pass."""
    model = gpt2_small_random()
    prompt = prompt_of_length(model, n_tokens)
    forward_only(model, prompt)
    baseline = peak_rss_mb()
    FUNCTIONS[method](model, prompt)
    return max(peak_rss_mb() - baseline, 0.0)


def timings(n_tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds per method, the methods taking turns so drift in machine speed hits all alike."""
    model = gpt2_small_random()
    prompt = prompt_of_length(model, n_tokens)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        FUNCTIONS[method](model, prompt)  # warm-up
    for _ in range(repeats):
        for method in METHODS:
            start = time.perf_counter()
            FUNCTIONS[method](model, prompt)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(peak_memory(args.memory[0], int(args.memory[1]))))
        return

    print("GPT-2-small shape (12 layers, d_model 768, vocab 50257), fp32, CPU; median of", args.repeats, "turns")
    print(f"{'tokens':>6} {'method':>9} {'time s':>8} {'extra MB':>9} {'vs floor':>9} {'naive/this':>10}")
    for n in args.tokens:
        seconds = timings(n, args.repeats)
        for method in METHODS:
            done = subprocess.run(
                [sys.executable, __file__, "--memory", method, str(n)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            extra = json.loads(done.stdout.strip().splitlines()[-1])
            vs_floor = seconds[method] / seconds["floor"]
            speedup = seconds["naive"] / seconds[method]
            print(
                f"{n:>6} {method:>9} {seconds[method]:>8.3f} {extra:>9.0f} {vs_floor:>8.2f}x {speedup:>9.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
