"""run_lens against the naive method and two floors, on a GPT-2-small-shaped model.

    python bench/bench_lens.py [--tokens 16 64 256 1024] [--repeats 5]

Methods (all read every block's output at every position):
- naive: the seed notebook's way: the model's forward pass, every row's full logits, a full softmax, then the max.
- run_lens: the engine, top-10 (entropy, KL to final, log-normaliser), without and with one target.
- floor (HF): Hugging Face's own forward pass with SDPA attention on the same weights, plus the bare
  chunked fp32 matmul of every cell with W_U (vocab-major, a reused output buffer): the true floor.
- floor (TL): the same with TransformerLens's forward pass (``run_with_cache``) instead.
- forward (HF) and forward (TL): the two forward passes alone.

Times: the methods take turns in one process, so drift in the machine's speed hits all
alike; each method's best of --repeats turns (and its median), wall and CPU time
(getrusage, every thread). Memory: each
(method, length) runs once in its own process: "peak" is the most it needed beyond loading
the model and one forward pass, "kept" what it still holds after the run beyond its level
after loading. Last, one fresh process runs --prompts different prompts of mixed lengths and
reports how far its RSS stays above its level after loading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import ROOT, cpu_seconds, gpt2_small_hf, gpt2_small_random, peak_rss_mb, prompt_of_length, rss_mb

METHODS = ("naive", "run_lens", "run_lens+target", "floor_hf", "floor_tl", "forward_hf", "forward_tl")
TARGET = " the"


def naive(model, prompt: str, hf=None) -> None:
    import torch

    from lens.backend import lens_rows

    hooks = [r.hook for r in lens_rows(model)]
    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=hooks)
        resid = torch.stack([cache[h][0] for h in hooks])
        probs = torch.softmax(model.bridge.unembed(model.bridge.ln_final(resid)), dim=-1)
        probs.max(dim=-1)


def lens(model, prompt: str, hf=None) -> None:
    from lens import run_lens

    run_lens(model, prompt, top_k=10, prepend_bos=False)


def lens_with_target(model, prompt: str, hf=None) -> None:
    from lens import run_lens

    run_lens(model, prompt, top_k=10, prepend_bos=False, targets=[TARGET])


def bare_unembed(model, normed) -> None:
    """The chunked vocab-major fp32 matmul of every cell with W_U, in run_lens's chunks: the fastest layout here."""
    import torch

    from lens.engine import _chunk_width, pad_positions, padded_width

    n_rows, n_pos, d_model = normed.shape
    block = _chunk_width(n_pos, n_rows, model.d_vocab)
    outputs = {}  # one reused output buffer per chunk width, as run_lens keeps
    for start in range(0, n_pos, block):
        chunk = normed[:, start : start + block]
        x = pad_positions(chunk, padded_width(chunk.shape[1], n_rows)).reshape(-1, d_model)
        if x.shape[0] not in outputs:
            outputs[x.shape[0]] = torch.zeros(model.d_vocab, x.shape[0])
        torch.mm(model.readout.unembed_rows, x.t(), out=outputs[x.shape[0]])


def hf_normed(model, prompt: str, hf):
    """Every block's output through the final norm, from Hugging Face's own SDPA forward pass."""
    import torch

    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = hf.transformer(tokens, output_hidden_states=True).hidden_states
        # The last hidden state already went through GPT-2's final norm.
        return torch.stack([hf.transformer.ln_f(h[0]) for h in hidden[1:-1]] + [hidden[-1][0]])


def floor_hf(model, prompt: str, hf) -> None:
    bare_unembed(model, hf_normed(model, prompt, hf))


def floor_tl(model, prompt: str, hf=None) -> None:
    from lens.backend import lens_rows
    from lens.engine import capture_normed

    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bare_unembed(model, capture_normed(model, ids, lens_rows(model)))


def forward_hf(model, prompt: str, hf) -> None:
    hf_normed(model, prompt, hf)


def forward_tl(model, prompt: str, hf=None) -> None:
    import torch

    from lens.backend import lens_rows

    hooks = [r.hook for r in lens_rows(model)]
    tokens = torch.tensor([model.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        model.capture(tokens, hooks)


FUNCTIONS = {
    "naive": naive,
    "run_lens": lens,
    "run_lens+target": lens_with_target,
    "floor_hf": floor_hf,
    "floor_tl": floor_tl,
    "forward_hf": forward_hf,
    "forward_tl": forward_tl,
}


def memory(method: str, n_tokens: int) -> dict[str, float]:
    """In this fresh process: MB one call needs beyond the model and a forward pass, and keeps after."""
    model = gpt2_small_random()
    hf = gpt2_small_hf("sdpa") if method.endswith("_hf") else None
    prompt = prompt_of_length(model, n_tokens)
    loaded = rss_mb()
    (forward_hf if hf is not None else forward_tl)(model, prompt, hf)
    baseline = peak_rss_mb()
    FUNCTIONS[method](model, prompt, hf)
    return {"peak": max(peak_rss_mb() - baseline, 0.0), "kept": rss_mb() - loaded}


def kept_after_many_prompts(n_prompts: int = 50) -> dict[str, float]:
    """In this fresh process: RSS beyond its level after loading, after many different prompts of mixed lengths."""
    from lens import run_lens

    model = gpt2_small_random()
    loaded = rss_mb()
    lengths = [64, 256, 1024, 256, 16]
    for i in range(n_prompts):
        prompt = prompt_of_length(model, lengths[i % len(lengths)] - 2)
        run_lens(model, f"{i}. {prompt}", top_k=10, targets=[TARGET], prepend_bos=False)
    return {"kept": rss_mb() - loaded, "peak": peak_rss_mb() - loaded}


def timings(n_tokens: int, repeats: int) -> dict[str, dict[str, float]]:
    """Best and median wall seconds and best CPU seconds per method, the methods taking turns.

    Ratios use each method's best turn: on this shared machine the neighbours' load only
    ever adds time (for minutes at a time it triples the cost of cache-bound passes), and
    a median of a few turns taken then is the neighbours' figure, not the method's.
    """
    model = gpt2_small_random()
    hf = gpt2_small_hf("sdpa")
    prompt = prompt_of_length(model, n_tokens)
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        FUNCTIONS[method](model, prompt, hf)  # warm-up
    for _ in range(repeats):
        for method in METHODS:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            FUNCTIONS[method](model, prompt, hf)
            wall[method].append(time.perf_counter() - start)
            cpu[method].append(cpu_seconds() - start_cpu)
    return {m: {"wall": min(wall[m]), "median": statistics.median(wall[m]), "cpu": min(cpu[m])} for m in METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=50, help="different prompts for the memory-kept check")
    parser.add_argument("--memory", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        method, n = args.memory
        print(json.dumps(kept_after_many_prompts(int(n)) if method == "many" else memory(method, int(n))))
        return

    print("GPT-2-small shape (12 layers, d_model 768, vocab 50257), fp32, CPU; best of", args.repeats, "turns")
    print(
        f"{'tokens':>6} {'method':>15} {'wall s':>8} {'median':>8} {'CPU s':>8} {'peak MB':>8} {'kept MB':>8} "
        f"{'/floor HF':>9} {'/floor TL':>9} {'naive/this':>10}"
    )
    for n in args.tokens:
        seconds = timings(n, args.repeats)
        for method in METHODS:
            mem = in_fresh_process(method, n)
            wall = seconds[method]["wall"]
            print(
                f"{n:>6} {method:>15} {wall:>8.3f} {seconds[method]['median']:>8.3f} {seconds[method]['cpu']:>8.3f} "
                f"{mem['peak']:>8.0f} "
                f"{mem['kept']:>8.0f} {wall / seconds['floor_hf']['wall']:>8.2f}x "
                f"{wall / seconds['floor_tl']['wall']:>8.2f}x {seconds['naive']['wall'] / wall:>9.2f}x",
                flush=True,
            )
        forward = seconds["forward_tl"]["wall"] / seconds["forward_hf"]["wall"]
        print(f"{n:>6} TransformerLens forward / Hugging Face SDPA forward: {forward:.2f}x", flush=True)
    many = in_fresh_process("many", args.prompts)
    print(
        f"run_lens on {args.prompts} different prompts (16 to 1024 tokens, one target): RSS {many['kept']:.0f} MB "
        f"above its level after loading (peak {many['peak']:.0f} MB above it)"
    )


def in_fresh_process(method: str, n: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory", method, str(n)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
