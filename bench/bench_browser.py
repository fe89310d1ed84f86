"""Dashboard speed in a real browser (headless Chromium), on the GPT-2-small shape.

    python -m bench.bench_browser

Starts ``streamlit run app.py`` on a GPT-2-small-shaped model with random weights and
the real tokenizer, drives the page as a person would, and times each action until its
result is drawn: the heatmap holding the new prompt's tokens, the legend naming the new
metric, both Compare heatmaps holding their prompts. Targets (issue 22): a new 13-token
prompt in 1.0 s, a metric switch in 0.5 s, a two-prompt Compare in 2.0 s.

The floor printed beside each figure is the engine alone (``lens.run_lens`` on prompts of
the same length, in this process, in turn with the browser's runs): what no page can beat.
The machine's load average is printed too: on a shared machine every figure moves with it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import urllib.parse

from bench.browser import chromium, streamlit_server, wait_idle
from bench.common import ROOT, SHARED_MODELS

REPEATS = 5
SCRIPT_IDLE = "document.querySelector('[data-testid=stApp]').dataset.testScriptState === 'notRunning'"


def prompts(tokenizer, n_tokens: int, start: int, count: int) -> list[str]:
    """Distinct prompts of exactly ``n_tokens`` tokens; the last token (" 12") tells them apart."""
    words = "The lens reads each layer of the model and shows how the next token forms"
    base = tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][: n_tokens - 1])
    out = [f"{base} {i}" for i in range(start, start + count)]
    assert all(len(tokenizer(p)["input_ids"]) == n_tokens for p in out)
    return out


def drawn(tab, check: str, since: float, timeout_s: float = 120) -> float:
    """Seconds from ``since`` until the script is idle and ``check`` (a JS expression) holds."""
    tab.wait_for_function(f"() => ({SCRIPT_IDLE}) && ({check})", timeout=timeout_s * 1000, polling=20)
    return time.perf_counter() - since


def has_text(text: str, scope: str = "[data-testid=stVegaLiteChart]") -> str:
    """A JS check: some chart text (in ``scope``) reads exactly ``text``."""
    return f"[...document.querySelectorAll('{scope} text')].some(t => t.textContent === {text!r})"


def report(label: str, times: list[float], target: float, floor: list[float] | None = None) -> None:
    median = statistics.median(times)
    verdict = "ok" if median <= target else "OVER"
    line = f"{label:<36} {median:6.3f} s median (max {max(times):.3f}; target <= {target} s: {verdict})"
    if floor:
        line += f"; engine alone {statistics.median(floor):.3f} s, ratio {median / statistics.median(floor):.1f}x"
    print(line)


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    import lens

    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as cache:
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        tokenizer = GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer"))
        tokenizer.save_pretrained(folder)
        model = lens.load_model(folder)
        print(f"GPT-2-small shape (12 layers), Chromium, {os.cpu_count()} cores, medians of {REPEATS}")
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        env = {"LENS_DEFAULT_MODEL": folder, "LENS_CACHE_DIR": cache}
        with streamlit_server(env) as url, chromium() as browser:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            first = prompts(tokenizer, 13, 10, 1)[0]
            tab.goto(f"{url}/?prompt={urllib.parse.quote(first)}")
            wait_idle(tab)
            box = tab.locator("[data-testid=stSidebar] textarea").first

            new_prompt, engine = [], []
            for i, (prompt, other) in enumerate(
                zip(prompts(tokenizer, 13, 20, REPEATS), prompts(tokenizer, 13, 40, REPEATS), strict=True)
            ):
                box.fill(prompt)
                since = time.perf_counter()
                box.press("Control+Enter")
                new_prompt.append(drawn(tab, has_text(f"12 ␣{20 + i}"), since))
                engine.append(_timed(lambda p=other: lens.run_lens(model, p, top_k=20, keep_unembed_input=True)))
            report("new 13-token prompt, Lens page", new_prompt, 1.0, engine)

            switch = []
            for title in ["Entropy (nats)", "KL to final output (nats)", "Top-1 probability"] * 2:
                tab.get_by_role("combobox", name="Colour by").click()
                option = tab.get_by_role("option", name=title, exact=True)
                since = time.perf_counter()
                option.click()
                switch.append(drawn(tab, has_text(title, ".st-key-lens_legend [data-testid=stVegaLiteChart]"), since))
            report("metric switch", switch, 0.5)

            tab.goto(f"{url}/compare?prompt={urllib.parse.quote(first)}")
            wait_idle(tab)
            area = tab.get_by_role("textbox", name="Prompts, one per line")
            compare, pair_floor = [], []
            pairs = prompts(tokenizer, 13, 60, 2 * REPEATS)
            others = prompts(tokenizer, 13, 80, 2 * REPEATS)
            for i in range(REPEATS):
                a, b = pairs[2 * i : 2 * i + 2]
                area.fill(f"{a}\n{b}")
                since = time.perf_counter()
                area.press("Control+Enter")
                check = f"{has_text(f'12 ␣{60 + 2 * i}')} && {has_text(f'12 ␣{61 + 2 * i}')}"
                compare.append(drawn(tab, check, since))
                pair_floor.append(
                    _timed(
                        lambda p=others[2 * i : 2 * i + 2]: [
                            lens.run_lens(model, q, top_k=20, keep_unembed_input=True) for q in p
                        ]
                    )
                )
            report("two-prompt Compare (2 new prompts)", compare, 2.0, pair_floor)
        print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
