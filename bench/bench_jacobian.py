"""Jacobian lens: fit time per prompt and peak memory, readout time against the logit lens, KL by layer.

    python -m bench.bench_jacobian

Fit: ``fit_jacobian_lens`` (TransformerLens's estimator) on prompts of 128 tokens, on the
bundled demo model and the GPT-2-small shape, each in a fresh process so its peak memory
(VmHWM) beyond the loaded model is its own. Readout: ``run_lens`` with a Jacobian lens
against the logit lens on the same 128-token prompt, taking turns (goal: at most 1.1x).
KL: mean KL to the output by layer for the logit, tuned and Jacobian lens on stories260K,
fitted on the bundled corpus and read on its held-out last lines.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, SHARED_MODELS, TEXT, cpu_seconds, gpt2_small_random, peak_rss_mb, prompt_of_length

TOKENS = 128


def _model(name: str):
    from lens import load_model

    return gpt2_small_random() if name == "gpt2" else load_model(name, device="cpu")


def fit(name: str, n_prompts: int) -> dict:
    from lens.jacobian import fit_dim_batch, fit_jacobian_lens

    model = _model(name)
    texts = [TEXT * 40]
    before = peak_rss_mb()
    start = time.perf_counter()
    lens = fit_jacobian_lens(model, texts, max_prompts=n_prompts, max_tokens=TOKENS)
    seconds = time.perf_counter() - start
    return {
        "per_prompt": seconds / lens.n_prompts,
        "n_prompts": lens.n_prompts,
        "extra_mb": peak_rss_mb() - before,
        "dim_batch": fit_dim_batch(model, model.bridge.cfg, TOKENS),
        "d_model": model.d_model,
    }


def readout(name: str, repeats: int = 7) -> None:
    import torch
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    from lens import run_lens
    from lens.jacobian import JacobianLens

    model = _model(name)
    prompt = prompt_of_length(model, TOKENS)
    # Fitted values don't change the cost of reading; a seeded random J per layer stands in for a fit.
    generator = torch.Generator().manual_seed(0)
    jacobians = {i: torch.randn(model.d_model, model.d_model, generator=generator) for i in range(model.n_layers - 1)}
    lens = JacobianLens(TLJacobianLens(jacobians, n_prompts=1, d_model=model.d_model))
    methods = {"logit": lambda: run_lens(model, prompt), "jacobian": lambda: run_lens(model, prompt, lens=lens)}
    for method in methods.values():
        method()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for key, method in methods.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            method()
            seconds[key].append(time.perf_counter() - start)
            cpu[key].append(cpu_seconds() - start_cpu)
    median = {key: statistics.median(times) for key, times in seconds.items()}
    best = {key: min(times) for key, times in seconds.items()}
    median_cpu = {key: statistics.median(times) for key, times in cpu.items()}
    print(
        f"readout on {name} ({TOKENS} tokens): Jacobian lens {median['jacobian'] * 1e3:.0f} ms, logit lens "
        f"{median['logit'] * 1e3:.0f} ms: {median['jacobian'] / median['logit']:.2f}x (median of {repeats} turns; "
        f"best {best['jacobian'] / best['logit']:.2f}x; CPU time {median_cpu['jacobian'] / median_cpu['logit']:.2f}x)"
    )


def kl_by_layer() -> None:
    from lens import corpus_stats, load_model
    from lens.jacobian import fit_jacobian_lens
    from lens.tuned import train_tuned_lens

    lines = (ROOT / "data" / "sample_corpus.txt").read_text(encoding="utf-8").splitlines()
    train, held_out = lines[:20], lines[20:]
    model = load_model(str(SHARED_MODELS / "stories260K"), device="cpu")
    frames = {
        "logit": corpus_stats(model, held_out),
        "tuned": corpus_stats(model, held_out, lens=train_tuned_lens(model, train, steps=60, lr=3e-3, window=64)),
        "Jacobian": corpus_stats(model, held_out, lens=fit_jacobian_lens(model, train, max_prompts=4, max_tokens=64)),
    }
    print("stories260K, mean KL to the output (nats) on held-out lines; tuned: 60 steps, Jacobian: 4 prompts x 64")
    print("| layer | logit | tuned | Jacobian |\n|---|---|---|---|")
    for i, layer in enumerate(frames["logit"].layer):
        print(f"| {layer} | " + " | ".join(f"{f.kl_to_final.iloc[i]:.2f}" for f in frames.values()) + " |")
    means = {k: f.kl_to_final.iloc[:-1].mean() for k, f in frames.items()}
    print("| mean below the last | " + " | ".join(f"{v:.2f}" for v in means.values()) + " |")


def in_fresh_process(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_jacobian", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "fit":
        print(json.dumps(fit(sys.argv[2], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "readout":  # one part alone: python -m bench.bench_jacobian readout gpt2
        readout(sys.argv[2])
        return
    for name, n_prompts in (("demo", 4), ("gpt2", 1)):
        r = in_fresh_process("fit", name, str(n_prompts))
        print(
            f"fit on {name} (d_model {r['d_model']}): {r['per_prompt']:.1f} s per {TOKENS}-token prompt "
            f"over {r['n_prompts']} prompts, {r['dim_batch']} dimensions per backward pass; "
            f"peak +{r['extra_mb']:.0f} MB over the loaded model"
        )
    for name in ("demo", "gpt2"):
        readout(name)
    kl_by_layer()


if __name__ == "__main__":
    main()
