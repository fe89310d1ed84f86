"""The server's settings for this run, and the app's fixed lists (models offered, example prompts).

app.py reads the environment once per script run (:func:`read`), shows every value it
couldn't use as one warning line, and logs each of those once per process. Everything
else asks :func:`server`.
"""

from __future__ import annotations

import logging
from functools import cache

import streamlit as st

from lens.settings import Settings

log = logging.getLogger("lens.settings")
DEMO_LABEL = "Demo (offline)"
# One small model per family the lens is proven exact on (lens/architectures.py), each
# under ~170M parameters: with the lens's buffers it stays well inside a 2.7 GB box in fp32.
CURATED_MODELS: dict[str, str] = {
    "demo": DEMO_LABEL,
    "openai-community/gpt2": "GPT-2 small (124M)",
    "EleutherAI/pythia-70m": "Pythia 70M (GPT-NeoX)",
    "roneneldan/TinyStories-33M": "TinyStories 33M (GPT-Neo)",
    "HuggingFaceTB/SmolLM2-135M": "SmolLM2 135M (Llama)",
    "facebook/opt-125m": "OPT 125M",
    "bigcode/tiny_starcoder_py": "TinyStarCoder 164M (GPTBigCode, code)",
    "state-spaces/mamba-130m-hf": "Mamba 130M (state-space)",
    "RWKV/rwkv-4-169m-pile": "RWKV-4 169M (recurrent)",
}
EXAMPLE_PROMPTS = (
    "The Eiffel Tower is in the city of",
    "Once upon a time, there was a little girl named",
    "The capital of Germany is Berlin. The capital of Italy is",
    "One, two, three, four, five,",
    "def add(a, b):\n    return",
)
DEFAULT_PROMPT = EXAMPLE_PROMPTS[0]

_current: tuple[Settings, tuple[str, ...]] | None = None


def read() -> Settings:
    """Read the environment (once per run, from app.py); each unreadable value is logged once."""
    global _current
    settings, problems = Settings.from_environment()
    _current = settings, tuple(problems)
    for problem in problems:
        _log_once(problem)
    return settings


def server() -> Settings:
    """This run's settings (read now if app.py hasn't, as when a test calls a page helper directly)."""
    return _current[0] if _current is not None else read()


def warn_about_settings() -> None:
    """Settings the server could not read: the operator sees them on the page (and once in the log)."""
    for problem in _current[1] if _current is not None else ():
        st.warning(f"Server setting ignored: {problem}", icon=":material/settings:")


@cache
def _log_once(problem: str) -> None:
    log.warning("Server setting ignored: %s", problem)
