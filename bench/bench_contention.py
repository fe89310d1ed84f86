"""The engine when other work competes for the cores: each method's slowdown under load against the floor's.

    python -m bench.bench_contention [--tokens 256 1024] [--repeats 3] [--competitors 6] [--quick]

On the GPT-2-small shape (random weights, the real tokenizer), torch on its usual threads.
Every round runs each method once on a quiet machine, then starts --competitors busy-loop
processes (plain Python spinning, never more than 8, each stopping itself after --bound
seconds and killed when the round's loaded turns end or this script exits), lets them
settle, and runs each method once more. Methods take turns, so drift in the machine's
speed (its other users) falls on all alike; each figure is the best of --repeats rounds.

Methods: the floor (Hugging Face's SDPA forward plus the bare chunked vocab-major fp32
matmul of every cell with W_U), run_lens (top-10 and one target), naive (the model's
forward, every row's full logits, a full softmax, the max), corpus_stats (the prompt as
one window) and attribute (one target at the last position). The goal: each method's
slowdown (loaded / quiet) at most 1.25x the floor's.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time

from bench.bench_lens import floor_hf, lens_with_target, naive
from bench.common import gpt2_small_hf, gpt2_small_random, prompt_of_length

MOST_COMPETITORS = 8
METHODS = ("floor", "run_lens", "naive", "corpus_stats", "attribute")
TARGET = " the"
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def _die_with_parent() -> None:
    """Ask Linux to kill a competitor when this script dies, however it dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the competitor's own time bound stops it
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class Competitors:
    """Busy-loop processes, each stopping itself after ``bound`` seconds, killed on stop() and at exit."""

    def __init__(self, count: int, bound: float) -> None:
        if not 0 <= count <= MOST_COMPETITORS:
            sys.exit(f"--competitors must be 0 to {MOST_COMPETITORS}.")
        self.count, self.bound = count, bound
        self.processes: list[subprocess.Popen] = []
        atexit.register(self.stop)

    def start(self) -> None:
        command = [sys.executable, "-S", "-c", BUSY_LOOP, str(self.bound)]
        self.processes = [subprocess.Popen(command, preexec_fn=_die_with_parent) for _ in range(self.count)]
        time.sleep(0.5)  # let them start spinning before anything is timed

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []


def methods_for(n_tokens: int) -> dict:
    from lens import attribute, corpus_stats

    model = gpt2_small_random()
    hf = gpt2_small_hf("sdpa")
    prompt = prompt_of_length(model, n_tokens)
    return {
        "floor": lambda: floor_hf(model, prompt, hf),
        "run_lens": lambda: lens_with_target(model, prompt),
        "naive": lambda: naive(model, prompt),
        "corpus_stats": lambda: corpus_stats(model, [prompt], window=n_tokens, max_tokens=10**9, prepend_bos=False),
        "attribute": lambda: attribute(model, prompt, position=-1, target=TARGET, prepend_bos=False),
    }


def measure(n_tokens: int, names: list[str], repeats: int, competitors: Competitors) -> dict[str, dict[str, float]]:
    """Best quiet and loaded wall seconds per method, quiet and loaded turns alternating round by round."""
    methods = {name: work for name, work in methods_for(n_tokens).items() if name in names}
    for work in methods.values():
        work()  # warm-up
    seconds: dict[str, dict[str, list[float]]] = {name: {"quiet": [], "loaded": []} for name in methods}
    for round_ in range(repeats):
        for phase in ("quiet", "loaded"):
            if phase == "loaded":
                competitors.start()
            try:
                for name, work in methods.items():
                    started = time.perf_counter()
                    work()
                    seconds[name][phase].append(time.perf_counter() - started)
            finally:
                competitors.stop()
        done = ", ".join(f"{n} {s['quiet'][-1]:.2f}/{s['loaded'][-1]:.2f} s" for n, s in seconds.items())
        print(f"  {n_tokens} tokens, round {round_ + 1}: {done}", file=sys.stderr, flush=True)
    return {name: {phase: min(times) for phase, times in s.items()} for name, s in seconds.items()}


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best of them")
    parser.add_argument("--competitors", type=int, default=6, help=f"busy-loop processes (at most {MOST_COMPETITORS})")
    parser.add_argument("--bound", type=float, default=900.0, help="seconds after which a competitor stops itself")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="256 tokens only, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats = [256], 2
    names = ["floor", *(m for m in args.methods if m != "floor")]
    competitors = Competitors(args.competitors, args.bound)

    import torch

    print(
        f"GPT-2-small shape, fp32, torch on {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{args.competitors} busy competitors in the loaded turns; best of {args.repeats} rounds; "
        f"load average at start {load_average()}"
    )
    print(
        f"{'tokens':>6} {'method':>13} {'quiet s':>8} {'loaded s':>9} {'slowdown':>9} {'/ floor':>8} "
        f"{'quiet/floor':>11}"
    )
    for n in args.tokens:
        best = measure(n, names, args.repeats, competitors)
        floor = best["floor"]
        floor_slowdown = floor["loaded"] / floor["quiet"]
        for name in names:
            quiet, loaded = best[name]["quiet"], best[name]["loaded"]
            slowdown = loaded / quiet
            print(
                f"{n:>6} {name:>13} {quiet:>8.2f} {loaded:>9.2f} {slowdown:>8.2f}x {slowdown / floor_slowdown:>7.2f}x "
                f"{quiet / floor['quiet']:>10.2f}x",
                flush=True,
            )
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
