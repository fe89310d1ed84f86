"""Server memory under a long session: 200 different prompts through a real Streamlit server and Chromium.

    python -m bench.bench_soak [--prompts 200] [--model gpt2-random|demo] [--app-root DIR]

Starts ``streamlit run app.py`` on a GPT-2-small-shaped model (random weights, saved to
a temporary folder) or the bundled demo model, types a new prompt into the sidebar of
one browser tab, waits for the run to finish, and reads the server's resident memory
(VmRSS) after every 10 prompts. Prints the curve and the growth over the level after the
model loaded; the targets are at most +300 MB after 50 prompts (issue 10) and +400 MB
after 200 (issue 14). ``--app-root`` runs another checkout's app.py (for a before/after
comparison on the same machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.browser import CHROMIUM, FLAGS
from bench.common import ROOT, SHARED_MODELS, TEXT

TARGET_MB = 400  # issue 14: after 200 prompts
TARGET_50_MB = 300  # issue 10: after 50 prompts


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def prompt(i: int, longest: int) -> str:
    """Distinct prompts of 100 to ``longest`` characters (1000 characters: about 200 GPT-2 tokens)."""
    length = 100 + (i * 379) % (longest - 100)
    return (f"Prompt number {i}. " + TEXT * 6)[:length]


def start_server(app_root: Path, model_dir: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LENS_DEFAULT_MODEL": model_dir, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    process = subprocess.Popen(command, cwd=app_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    sys.exit("streamlit did not start within 120 s")


WATCH = """() => {
    window.__lensRan = false;
    const app = document.querySelector('[data-testid=stApp]');
    // A fast run can flip running -> notRunning before the observer is called: read old values too.
    new MutationObserver((records) => {
        for (const r of records) {
            if (r.oldValue === 'running' || app.getAttribute('data-test-script-state') === 'running') {
                window.__lensRan = true;
            }
        }
    }).observe(app, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
}"""
FINISHED = """() => window.__lensRan
    && document.querySelector('[data-testid=stApp]').getAttribute('data-test-script-state') === 'notRunning'"""


def submit(tab, box, text: str) -> None:
    """Type a prompt and wait until the run it starts has finished (the page saw it start, then stop)."""
    tab.evaluate(WATCH)
    box.fill(text)
    box.press("Control+Enter")
    tab.wait_for_function(FINISHED, polling=100)
    errors = tab.locator("[data-testid=stAlertContentError]")
    if errors.count():
        sys.exit(f"the app refused a prompt: {errors.first.inner_text()}")
    tab.locator("[data-testid=stVegaLiteChart]").first.wait_for()


def soak(app_root: Path, model_dir: str, n_prompts: int, longest: int) -> list[tuple[int, float]]:
    from playwright.sync_api import sync_playwright

    process, url = start_server(app_root, model_dir)
    curve: list[tuple[int, float]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            tab = browser.new_page(viewport={"width": 1500, "height": 1200})
            tab.set_default_timeout(600_000)
            tab.goto(f"{url}/?prompt={urllib.parse.quote(prompt(0, longest))}")
            tab.locator("[data-testid=stVegaLiteChart]").first.wait_for()
            tab.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]")
            curve.append((0, rss_mb(process.pid)))
            print(f"  after loading and one prompt: {curve[-1][1]:7.0f} MB", flush=True)
            box = tab.locator("[data-testid=stSidebar] textarea").first
            for i in range(1, n_prompts + 1):
                submit(tab, box, prompt(i, longest))
                if i % 10 == 0:
                    curve.append((i, rss_mb(process.pid)))
                    print(f"  after {i:4d} prompts: {curve[-1][1]:7.0f} MB", flush=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--model", choices=("gpt2-random", "demo"), default="gpt2-random")
    parser.add_argument("--app-root", type=Path, default=ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "demo":
            model_dir = "demo"
        else:
            import torch
            from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

            torch.manual_seed(0)
            GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
            GPT2TokenizerFast.from_pretrained(str(SHARED_MODELS / "gpt2-tokenizer")).save_pretrained(folder)
            model_dir = folder
        started = time.monotonic()
        # The demo's tokenizer makes more tokens of the same text, and it reads at most 256.
        curve = soak(args.app_root.resolve(), model_dir, args.prompts, 600 if args.model == "demo" else 1000)
    base = curve[0][1]
    print(
        f"app: {args.app_root.resolve()} | model: {args.model} | {args.prompts} prompts in "
        f"{time.monotonic() - started:.0f} s"
    )
    print("prompts:  " + " ".join(f"{n:6d}" for n, _ in curve))
    print("RSS (MB): " + " ".join(f"{mb:6.0f}" for _, mb in curve))
    growth = curve[-1][1] - base
    peak = max(mb for _, mb in curve) - base
    verdict = "within" if growth <= TARGET_MB else "OVER"
    at_50 = dict(curve).get(50)
    if at_50 is not None:
        verdict_50 = "within" if at_50 - base <= TARGET_50_MB else "OVER"
        print(f"after 50 prompts: {at_50:.0f} MB (+{at_50 - base:.0f} MB): {verdict_50} the +{TARGET_50_MB} MB target")
    print(
        f"after loading: {base:.0f} MB; after {curve[-1][0]} prompts: {curve[-1][1]:.0f} MB "
        f"(+{growth:.0f} MB, peak +{peak:.0f} MB): {verdict} the +{TARGET_MB} MB target"
    )


if __name__ == "__main__":
    main()
