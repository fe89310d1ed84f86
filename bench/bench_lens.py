"""run_lens against the naive method and the floor, on a GPT-2-small-shaped model.

    python bench/bench_lens.py [--tokens 16 256 1024] [--repeats 3]

(a) naive: the seed notebook's way: every row's full logits, a full softmax, then the max.
(b) run_lens: the engine (top-10, entropy, KL to final, log-normaliser).
(c) floor: the forward pass plus the bare chunked fp32 matmul of every row with W_U, in
    the fastest layout measured on this machine (vocab-major, a reused output buffer).

Each (method, length) runs in its own process, so its peak memory is its own: the figure
is the peak beyond what loading the model and one forward pass already needed.
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
    flat = normed.reshape(-1, normed.shape[-1])
    chunk = _chunk_cells(model.d_vocab)
    out = torch.empty(model.d_vocab, min(chunk, flat.shape[0]))
    for start in range(0, flat.shape[0], chunk):
        part = flat[start : start + chunk]
        # The fastest layout measured here, vocab-major (as run_lens uses), into a reused buffer.
        torch.mm(model.unembed_rows, part.t(), out=out[:, : part.shape[0]] if part.shape[0] == out.shape[1] else None)


def forward_only(model, prompt: str) -> None:
    import torch

    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))


def measure(method: str, n_tokens: int, repeats: int) -> dict:
    """In this process: peak memory of one call beyond the model and a forward pass, then timings."""
    model = gpt2_small_random()
    prompt = prompt_of_length(model, n_tokens)
    fn = {"naive": naive, "run_lens": lens, "floor": floor}[method]
    forward_only(model, prompt)
    baseline = peak_rss_mb()
    fn(model, prompt)
    extra = peak_rss_mb() - baseline
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(model, prompt)
        times.append(time.perf_counter() - start)
    return {"method": method, "tokens": n_tokens, "seconds": statistics.median(times), "extra_mb": max(extra, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return

    results = {}
    for n in args.tokens:
        for method in METHODS:
            done = subprocess.run(
                [sys.executable, __file__, "--one", method, str(n), "--repeats", str(args.repeats)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            results[method, n] = json.loads(done.stdout.strip().splitlines()[-1])
    print("GPT-2-small shape (12 layers, d_model 768, vocab 50257), fp32, CPU, median of", args.repeats)
    print(f"{'tokens':>6} {'method':>9} {'time s':>8} {'extra MB':>9} {'vs floor':>9} {'naive/this':>10}")
    for n in args.tokens:
        for method in METHODS:
            r = results[method, n]
            vs_floor = r["seconds"] / results["floor", n]["seconds"]
            speedup = results["naive", n]["seconds"] / r["seconds"]
            print(f"{n:>6} {method:>9} {r['seconds']:>8.3f} {r['extra_mb']:>9.0f} {vs_floor:>8.2f}x {speedup:>9.2f}x")


if __name__ == "__main__":
    main()
