"""Every server setting in one typed object, read from the environment in one place.

The library takes its limits as arguments; only the app and the CLI call
:meth:`Settings.from_environment`. One policy for every variable: a value that can't be
read falls back to its default and comes back as one warning line (the app shows it on
the page and logs it), so ``LENS_MAX_MODEL_GB=abc`` can't make every model fail.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "openai-community/gpt2"
CHARS_PER_TOKEN = 32  # longer prompts are refused before tokenizing: no token is that short, in practice
GB = 1e9


@dataclass(frozen=True)
class Settings:
    """What the person running the server allows (hosted mode sets these); the defaults suit one laptop."""

    default_model: str = DEFAULT_MODEL
    max_tokens: int = 256
    max_corpus_tokens: int = 20_000
    max_train_steps: int = 1000
    model_allowlist: tuple[str, ...] = ()
    allow_local: bool = False
    cache_dir: Path = Path.home() / ".cache" / "logit-lens"
    max_model_gb: float | None = None  # None: the memory still free when a model loads
    # Cached results (about 11 MB each for GPT-2 at 256 tokens): this much beside GPT-2 fits a 2.7 GB box.
    cache_mb: int = 300
    # Loaded models kept at once, by their weights: GPT-2 small and Pythia-160m together in fp32.
    model_cache_mb: int = 1200
    ndif_models: tuple[str, ...] = ()  # empty: the app's curated list
    ndif_api_key: str | None = field(default=None, repr=False)  # never shown, logged or exported
    ndif_timeout_s: float = 300.0
    max_jlens_prompts: int = 64
    max_patch_cells: int = 2000
    max_prompts: int = 500

    @property
    def max_prompt_chars(self) -> int:
        return self.max_tokens * CHARS_PER_TOKEN

    @property
    def max_model_bytes(self) -> int | None:
        return None if self.max_model_gb is None else int(self.max_model_gb * GB)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
        """The settings in ``environ`` (default: os.environ), and one line per value that couldn't be read."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        default = cls()
        settings = cls(
            default_model=reader.text("LENS_DEFAULT_MODEL") or default.default_model,
            max_tokens=reader.whole("LENS_MAX_TOKENS", default.max_tokens, least=2),
            max_corpus_tokens=reader.whole("LENS_MAX_CORPUS_TOKENS", default.max_corpus_tokens, least=2),
            max_train_steps=reader.whole("LENS_MAX_TRAIN_STEPS", default.max_train_steps, least=1),
            model_allowlist=reader.names("LENS_MODEL_ALLOWLIST"),
            allow_local=reader.switch("LENS_ALLOW_LOCAL"),
            cache_dir=Path(reader.text("LENS_CACHE_DIR") or default.cache_dir),
            max_model_gb=reader.positive("LENS_MAX_MODEL_GB", "gigabytes", "the memory still free"),
            cache_mb=reader.whole("LENS_CACHE_MB", default.cache_mb, least=1),
            model_cache_mb=reader.whole("LENS_MODEL_CACHE_MB", default.model_cache_mb, least=1),
            ndif_models=reader.names("LENS_NDIF_MODELS"),
            ndif_api_key=reader.text("NDIF_API_KEY") or None,
            ndif_timeout_s=reader.positive("LENS_NDIF_TIMEOUT", "seconds", default.ndif_timeout_s)
            or default.ndif_timeout_s,
            max_jlens_prompts=reader.whole("LENS_MAX_JLENS_PROMPTS", default.max_jlens_prompts, least=1),
            max_patch_cells=reader.whole("LENS_MAX_PATCH_CELLS", default.max_patch_cells, least=1),
            max_prompts=reader.whole("LENS_MAX_PROMPTS", default.max_prompts, least=1),
        )
        return settings, reader.problems


class _Reader:
    """Reads variables under the one policy, collecting a line for each that falls back."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def names(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.text(name).split(",") if part.strip())

    def whole(self, name: str, default: int, least: int) -> int:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw[:40]!r} is not a whole number; using the default, {default}.")
            return default
        if value < least:
            self.problems.append(f"{name}={value} is below {least}; using {least}.")
            return least
        return value

    def positive(self, name: str, unit: str, default: float | str) -> float | None:
        """A positive number, or None (the caller's default) when unset or unreadable."""
        raw = self.text(name)
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
        self.problems.append(f"{name}={raw[:40]!r} is not a positive number of {unit}; using {default}.")
        return None

    def switch(self, name: str) -> bool:
        """1 is on; anything but 1, 0 or nothing stays off, and says so."""
        raw = self.text(name)
        if raw not in ("", "0", "1"):
            self.problems.append(f"{name}={raw[:40]!r} is neither 1 nor 0; it stays off.")
        return raw == "1"
