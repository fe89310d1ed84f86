"""Server-side settings from the environment, read on every call so tests can change them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import lens
from lens.errors import LensError
from lens.model import check_model_name, path_exists
from ui import ndif

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
# Cached results (about 11 MB each for GPT-2 at 256 tokens): this much beside GPT-2 fits a 2.7 GB box.
DEFAULT_CACHE_MB = 300
# Loaded models kept at once, by their weights: GPT-2 small and Pythia-160m together in fp32.
DEFAULT_MODEL_CACHE_MB = 1200
CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class ServerLimits:
    """What the person running the server allows (hosted mode sets these)."""

    max_tokens: int
    max_corpus_tokens: int
    max_train_steps: int
    allowlist: tuple[str, ...]
    allow_local: bool
    default_model: str
    cache_mb: int = DEFAULT_CACHE_MB
    model_cache_mb: int = DEFAULT_MODEL_CACHE_MB
    problems: tuple[str, ...] = ()  # settings that could not be read, for the operator

    @property
    def max_prompt_chars(self) -> int:
        """Longer prompts are refused before tokenizing: no token is shorter than 1/32 of this, in practice."""
        return self.max_tokens * CHARS_PER_TOKEN


def limits() -> ServerLimits:
    problems: list[str] = []
    allow = tuple(m.strip() for m in os.environ.get("LENS_MODEL_ALLOWLIST", "").split(",") if m.strip())
    server = ServerLimits(
        max_tokens=_setting_int("LENS_MAX_TOKENS", 256, 2, problems),
        max_corpus_tokens=_setting_int("LENS_MAX_CORPUS_TOKENS", 20_000, 2, problems),
        max_train_steps=_setting_int("LENS_MAX_TRAIN_STEPS", 1000, 1, problems),
        allowlist=allow,
        allow_local=_setting_switch("LENS_ALLOW_LOCAL", problems),
        default_model=os.environ.get("LENS_DEFAULT_MODEL", "").strip() or lens.DEFAULT_MODEL,
        cache_mb=_setting_int("LENS_CACHE_MB", DEFAULT_CACHE_MB, 1, problems),
        model_cache_mb=_setting_int("LENS_MODEL_CACHE_MB", DEFAULT_MODEL_CACHE_MB, 1, problems),
        problems=tuple(problems),
    )
    for problem in problems:
        _log_once(problem)
    return server


def _setting_int(name: str, default: int, least: int, problems: list[str]) -> int:
    """A whole-number setting; one that can't be read falls back to its default, and says so."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name}={raw[:40]!r} is not a whole number; using the default, {default}.")
        return default
    if value < least:
        problems.append(f"{name}={value} is below {least}; using {least}.")
        return least
    return value


def _setting_switch(name: str, problems: list[str]) -> bool:
    """An on/off setting: 1 is on; anything but 1, 0 or nothing stays off, and says so."""
    raw = os.environ.get(name, "").strip()
    if raw not in ("", "0", "1"):
        problems.append(f"{name}={raw[:40]!r} is neither 1 nor 0; it stays off.")
    return raw == "1"


@cache
def _log_once(problem: str) -> None:
    logging.getLogger("lens.settings").warning("Server setting ignored: %s", problem)


def model_choices(server: ServerLimits) -> list[str]:
    """Model ids for the picker: the server's default first, then the curated list."""
    curated = [m for m in CURATED_MODELS if m == "demo" or not server.allowlist or m in server.allowlist]
    return list(dict.fromkeys([server.default_model, *curated]))


def model_label(model_id: str) -> str:
    if ndif.is_remote(model_id):
        return ndif.label(model_id)
    if model_id in CURATED_MODELS:
        return CURATED_MODELS[model_id]
    if model_id.startswith((".", "/", "~")):
        return f"{Path(model_id).name} (local folder)"
    return model_id


def check_model_allowed(model_id: str, server: ServerLimits) -> str | None:
    """Why a typed model may not be used here, or None when it may."""
    if model_id in ("demo", server.default_model):
        return None
    try:
        check_model_name(model_id)
    except LensError as exc:
        return str(exc)
    looks_local = model_id.startswith((".", "/", "~")) or path_exists(Path(model_id).expanduser())
    if looks_local and not server.allow_local:
        return "Local folders are switched off on this server (its operator can set LENS_ALLOW_LOCAL=1)."
    if server.allowlist and model_id not in server.allowlist:
        return f"This server only offers these models: {', '.join(server.allowlist)}."
    return None
