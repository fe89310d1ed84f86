"""Dashboard speed on the server, on the GPT-2-small shape (12 layers, 50,257 tokens).

    python -m bench.bench_app

Runs app.py under Streamlit's AppTest (the real script, without a browser) on a
GPT-2-small-shaped model with random weights saved to a temporary folder. Times are
wall-clock seconds for one script run; medians of several, with the largest shown.
Targets (issue 9): a display-only change (metric, window, selected cell) under 0.3 s;
a new 13-token prompt under 1.5 s; a two-prompt Compare under 2.5 s.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from streamlit.testing.v1 import AppTest

from bench.common import ROOT, SHARED_MODELS, TEXT

REPEATS = 5


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def prompts_of(model_dir: str, n_tokens: int, count: int) -> list[str]:
    """Distinct prompts of exactly ``n_tokens`` tokens, so each one is a real lens run."""
    from ui import cached

    tokenizer = cached.model(model_dir).tokenizer
    texts = []
    for i in range(count):
        ids = tokenizer(f"Run {i}: " + TEXT, add_special_tokens=False)["input_ids"][:n_tokens]
        texts.append(tokenizer.decode(ids))
    return texts


def report(label: str, times: list[float], target: float) -> None:
    median = statistics.median(times)
    verdict = "ok" if median < target else "OVER"
    print(f"{label:<44} {median:6.3f} s median (max {max(times):.3f}; target < {target} s: {verdict})")


def measure(model_dir: str) -> None:
    os.environ["LENS_DEFAULT_MODEL"] = model_dir
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["prompt"] = TEXT[:60]
    first = timed(at.run)
    assert not at.exception and not at.error, (at.exception, at.error)
    print(f"{'first load (model boot included)':<44} {first:6.2f} s")

    import lens
    from ui import cached

    model = cached.model(model_dir)
    prompts = prompts_of(model_dir, 13, 2 * REPEATS)
    new_prompt, engine = [], []
    for prompt, other in zip(prompts[:REPEATS], prompts[REPEATS:], strict=True):
        at.sidebar.text_area(key="prompt").set_value(prompt)
        new_prompt.append(timed(at.run))
        # The engine alone on a prompt of the same length, in turn with the app: the floor
        # the page's own overhead is measured against on this (shared, noisy) machine.
        engine.append(timed(lambda p=other: lens.run_lens(model, p, top_k=20, keep_unembed_input=True)))
    report("new 13-token prompt, Lens page", new_prompt, 1.5)
    print(f"{'  the engine alone on 13 tokens':<44} {statistics.median(engine):6.3f} s median")

    at.sidebar.text_area(key="prompt").set_value(TEXT).run()  # long enough for the window slider
    runs = cached.runs["lens"]
    display = []
    for metric in ["entropy", "kl_to_final", "top1_prob", "entropy", "kl_to_final"]:
        at.selectbox(key="metric").set_value(metric)
        display.append(timed(at.run))
    for window in [(0, 15), (20, 35), (5, 20)]:
        at.slider(key="window").set_value(window)
        display.append(timed(at.run))
    for row, position in [(3, 10), (7, 12), (11, 19)]:
        at.selectbox(key="pick_row").set_value(row)
        at.selectbox(key="pick_position").set_value(position)
        display.append(timed(at.run))
    assert not at.exception and not at.error, (at.exception, at.error)
    assert cached.runs["lens"] == runs, "a display change ran the model"
    report("display-only change (metric, window, cell)", display, 0.3)

    at.switch_page("pages/compare.py")
    at.run()
    compare = []
    pairs = prompts_of(model_dir, 14, 2 * REPEATS)
    for i in range(REPEATS):
        at.text_area(key="prompts").set_value("\n".join(pairs[2 * i : 2 * i + 2]))
        compare.append(timed(at.run))
        assert not at.exception and not at.error, (at.exception, at.error)
    report("two-prompt Compare (2 new prompts)", compare, 2.5)


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer")).save_pretrained(folder)
        print(f"GPT-2-small shape (12 layers), AppTest, {os.cpu_count()} cores, medians of {REPEATS}")
        measure(folder)


if __name__ == "__main__":
    main()
