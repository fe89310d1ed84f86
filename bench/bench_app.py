"""Dashboard speed on the server: a display-only rerun, and a new 64-token prompt.

    python bench/bench_app.py

Runs app.py under Streamlit's AppTest (the real script, without a browser) on
stories260K and on a GPT-2-small-shaped model saved to a temporary folder. Times are
wall-clock seconds for one script run, median of several.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_MODELS, TEXT
from streamlit.testing.v1 import AppTest

REPEATS = 5


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(model_dir: str, label: str) -> None:
    os.environ["LENS_DEFAULT_MODEL"] = model_dir
    os.environ["LENS_MAX_TOKENS"] = "1024"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["prompt"] = TEXT[:60]
    load = timed(at.run)
    assert not at.exception and not at.error, (at.exception, at.error)

    from ui import cached

    prompts = []
    for i in range(REPEATS):  # distinct 64-token prompts, so each is a real lens run
        ids = cached.model(model_dir).tokenizer((f"Run {i}. " + TEXT) * 3, add_special_tokens=False)["input_ids"]
        prompts.append(cached.model(model_dir).tokenizer.decode(ids[:64]))
    new_prompt = []
    for prompt in prompts:
        at.sidebar.text_area(key="prompt").set_value(prompt)
        new_prompt.append(timed(at.run))
    runs = cached.runs["lens"]
    display = []
    for metric in ["entropy", "kl_to_final", "top1_prob", "entropy", "kl_to_final"]:
        at.selectbox(key="metric").set_value(metric)
        display.append(timed(at.run))
    for window in [(0, 11), (20, 31), (52, 63)]:
        at.slider(key="window").set_value(window)
        display.append(timed(at.run))
    assert cached.runs["lens"] == runs, "a display change ran the model"
    print(
        f"{label:<28} first load {load:6.2f} s | new 64-token prompt {statistics.median(new_prompt):5.2f} s "
        f"(max {max(new_prompt):.2f}) | display-only rerun {statistics.median(display):5.3f} s "
        f"(max {max(display):.3f})"
    )


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    measure(str(SHARED_MODELS / "stories260K"), "stories260K (5 layers)")
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer")).save_pretrained(folder)
        measure(folder, "GPT-2-small shape (12 layers)")
    print(f"median of {REPEATS} prompts and 8 display changes; machine: {os.cpu_count()} cores;", Path(ROOT).name)


if __name__ == "__main__":
    main()
