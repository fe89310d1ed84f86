"""Attribution of one cell against a plain lens run, on the GPT-2-small shape.

    python -m bench.bench_attribution [--tokens 64] [--repeats 5]

(a) run_lens: the plain lens (top-10, entropy, KL, one target) over every cell.
(b) attribute: one cell's direct logit attribution (every head, MLP and bias) for one target.
(c) retarget: the same cell for another target and a contrast, from the kept writes.

The methods take turns in one process (median of --repeats turns). Forward passes are
counted with a hook on the embedding, which runs once per pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import gpt2_small_random, prompt_of_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from lens import attribute, run_lens

    model = gpt2_small_random()
    prompt = prompt_of_length(model, args.tokens)
    passes = []
    model.bridge.embed.original_component.register_forward_hook(lambda *_: passes.append(1))

    def lens_run():
        run_lens(model, prompt, top_k=10, targets=[" the"], prepend_bos=False)

    def attribution_run():
        return attribute(model, prompt, position=-1, target=" the", prepend_bos=False)

    lens_run(), attribution_run()  # warm-up
    times: dict[str, list[float]] = {"run_lens": [], "attribute": [], "retarget": []}
    retarget_passes = 0
    for _ in range(args.repeats):
        for name, work in (("run_lens", lens_run), ("attribute", attribution_run)):
            started = time.perf_counter()
            result = work()
            times[name].append(time.perf_counter() - started)
        before = len(passes)
        started = time.perf_counter()
        result.retarget(model, " a", contrast=" the")
        result.retarget(model, " of")
        times["retarget"].append((time.perf_counter() - started) / 2)
        retarget_passes += len(passes) - before

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"GPT-2-small shape, {args.tokens}-token prompt, median of {args.repeats} turns")
    for name, value in median.items():
        print(f"  {name:10s} {value * 1000:8.1f} ms")
    print(f"  attribute / run_lens = {median['attribute'] / median['run_lens']:.2f}x (target: under 2x)")
    print(f"  forward passes for {2 * args.repeats} retargets (new target or contrast): {retarget_passes}")
    parts = len(result.to_frame())
    print(f"  parts per cell: {parts} (12 layers x (12 heads + attention bias + MLP) + embeddings and biases)")


if __name__ == "__main__":
    main()
