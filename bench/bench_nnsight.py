"""The nnsight backend against the TransformerLens backend and the naive method, and its payload.

    python -m bench.bench_nnsight [--tokens 256] [--repeats 5]

On GPT-2-small's shape (random weights, the real tokenizer), run locally:
(a) naive: the seed notebook's way: every row's full logits, a full softmax, then the max.
(b) transformer_lens: ``run_lens`` on the default backend (top-10, entropy, KL, log-normaliser).
(c) nnsight: ``run_lens`` on the nnsight backend, the same statistics reduced inside the trace.

Times: the methods take turns in one process (median of --repeats turns). Memory: each
method runs once in its own process; the figure is the peak beyond loading the models and
one forward pass of each.

Payload: the bytes a run saves out of the trace (what NDIF would send back), measured on
the saved tensors of a model with Llama-3.1-70B's shape where it matters (80 layers, a
128,256-token vocabulary; the width, which does not change the payload, is shrunk to fit
here), for a 64-token prompt, against ``payload_bytes`` and against full logits.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import subprocess
import sys
import time

from bench import bench_lens
from bench.common import ROOT, SHARED_MODELS, peak_rss_mb, prompt_of_length

METHODS = ("naive", "transformer_lens", "nnsight")


def models():
    """The same seeded GPT-2-small-shaped model behind both backends (a copy each)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from lens import LensModel
    from lens.nnsight_backend import wrap_hf_model

    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer"))
    hf_model = GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).eval()
    return {
        "nnsight": wrap_hf_model(copy.deepcopy(hf_model), tokenizer, name="gpt2-small-random"),
        "transformer_lens": LensModel.from_hf(hf_model, tokenizer, name="gpt2-small-random"),
    }


def naive(handles, prompt: str) -> None:
    bench_lens.naive(handles["transformer_lens"], prompt)


def backend(name: str):
    def run(handles, prompt: str) -> None:
        from lens import run_lens

        run_lens(handles[name], prompt, top_k=10, prepend_bos=False)

    return run


FUNCTIONS = {"naive": naive, "transformer_lens": backend("transformer_lens"), "nnsight": backend("nnsight")}


def forward_passes(handles, prompt: str) -> None:
    import torch

    tokens = torch.tensor([handles["transformer_lens"].tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        handles["transformer_lens"].bridge(tokens)
        handles["nnsight"].wrapper._module(tokens)


def peak_memory(method: str, n_tokens: int) -> float:
    """In this fresh process: peak MB of one call beyond the loaded models and a forward pass of each."""
    handles = models()
    prompt = prompt_of_length(handles["transformer_lens"], n_tokens)
    forward_passes(handles, prompt)
    baseline = peak_rss_mb()
    FUNCTIONS[method](handles, prompt)
    return max(peak_rss_mb() - baseline, 0.0)


def timings(n_tokens: int, repeats: int) -> dict[str, float]:
    handles = models()
    prompt = prompt_of_length(handles["transformer_lens"], n_tokens)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        FUNCTIONS[method](handles, prompt)  # warm-up
    for _ in range(repeats):
        for method in METHODS:
            start = time.perf_counter()
            FUNCTIONS[method](handles, prompt)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def payload(n_tokens: int = 64, top_k: int = 10, n_targets: int = 1) -> dict[str, int]:
    """Bytes saved out of the trace on a 70B-shaped (80 layers, 128k vocab) narrow Llama."""
    import torch
    import zstandard
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    from lens.nnsight_backend import payload_bytes, traced_statistics, wrap_hf_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128_256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=80,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    # Token ids go in directly; the tokenizer is only there because nnsight's pipeline wants one.
    tokenizer = GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer"))
    model = wrap_hf_model(LlamaForCausalLM(config), tokenizer, name="llama-70b-shape")
    ids = torch.randint(0, config.vocab_size, (1, n_tokens))
    paths = (model.layers_path, model.norm_path, model.head_path)
    saved = traced_statistics(model.wrapper, ids, paths, False, top_k, list(range(n_targets)), model.output_transform)
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # what a server's torch.save of the saves holds, before compression
    return {
        "rows": config.num_hidden_layers,
        "positions": n_tokens,
        "top_k": top_k,
        "targets": n_targets,
        "array_bytes": sum(t.numel() * t.element_size() for t in saved.values()),
        "formula_bytes": payload_bytes(config.num_hidden_layers, n_tokens, top_k, n_targets),
        "torch_save_bytes": len(buffer.getvalue()),
        "zstd_bytes": len(zstandard.ZstdCompressor().compress(buffer.getvalue())),
        "full_logits_fp32_bytes": config.num_hidden_layers * n_tokens * config.vocab_size * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(peak_memory(args.memory[0], int(args.memory[1]))))
        return

    print("GPT-2-small shape (12 layers, d_model 768, vocab 50257), fp32, CPU; median of", args.repeats, "turns")
    print(f"{'tokens':>6} {'method':>16} {'time s':>8} {'extra MB':>9} {'vs TL':>7} {'naive/this':>10}")
    for n in args.tokens:
        seconds = timings(n, args.repeats)
        for method in METHODS:
            done = subprocess.run(
                [sys.executable, "-m", __spec__.name, "--memory", method, str(n)],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if done.returncode:
                sys.exit(done.stderr.strip().splitlines()[-1])
            extra = json.loads(done.stdout.strip().splitlines()[-1])
            vs_tl = seconds[method] / seconds["transformer_lens"]
            speedup = seconds["naive"] / seconds[method]
            print(
                f"{n:>6} {method:>16} {seconds[method]:>8.3f} {extra:>9.0f} {vs_tl:>6.2f}x {speedup:>9.2f}x",
                flush=True,
            )
    sizes = payload()
    assert sizes["array_bytes"] == sizes["formula_bytes"], sizes
    print(
        f"\nPayload, {sizes['rows']} layers x {sizes['positions']} tokens, 128,256-token vocabulary, "
        f"top-{sizes['top_k']}, {sizes['targets']} target: saved arrays {sizes['array_bytes']:,} B "
        f"(= payload_bytes), torch.save {sizes['torch_save_bytes']:,} B, zstd {sizes['zstd_bytes']:,} B; "
        f"full fp32 logits would be {sizes['full_logits_fp32_bytes']:,} B "
        f"({sizes['full_logits_fp32_bytes'] / sizes['torch_save_bytes']:,.0f}x)."
    )


if __name__ == "__main__":
    main()
