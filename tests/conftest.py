"""Shared fixtures: the offline models every test reads from ../shared."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
STORIES = SHARED_MODELS / "stories260K"
GPT2_TOKENIZER = SHARED_MODELS / "gpt2-tokenizer"


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real browser; runs after everything else")


def pytest_collection_modifyitems(items):
    """The slow browser test goes last, so a fast failure elsewhere shows first."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(autouse=True)
def fresh_server_settings():
    """Each test's environment is read afresh: the app keeps the last run's reading of it (ui.config)."""
    import sys

    if "ui.config" in sys.modules:
        sys.modules["ui.config"]._current = None
    yield


def require_shared() -> None:
    """Skip in a user's own clone without ../shared; in CI its absence is a failure."""
    if not STORIES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared models at {SHARED_MODELS}")
        pytest.skip(f"needs the shared offline models at {SHARED_MODELS}")


@pytest.fixture(scope="session")
def stories():
    require_shared()
    from lens import load_model

    return load_model(str(STORIES), device="cpu")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    require_shared()
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER))


def _wrap_random(hf_model, tokenizer, name):
    """A LensModel on a random HF model, plus an untouched copy for the reference."""
    from lens import LensModel

    hf_model.eval()
    reference = copy.deepcopy(hf_model)
    return LensModel.from_hf(hf_model, tokenizer, name=name), reference


@pytest.fixture(scope="session")
def gpt2_small_random(gpt2_tokenizer):
    """GPT-2-small's exact shape (124M parameters) with random weights and the real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return _wrap_random(GPT2LMHeadModel(GPT2Config(attn_implementation="eager")), gpt2_tokenizer, "gpt2-small-random")


@pytest.fixture(scope="session")
def neox_random(gpt2_tokenizer):
    """A small GPT-NeoX (Pythia's architecture: rotary, parallel attention and MLP)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=len(gpt2_tokenizer),
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    return _wrap_random(GPTNeoXForCausalLM(config), gpt2_tokenizer, "neox-random")


@pytest.fixture(scope="session")
def gemma2_random(gpt2_tokenizer):
    """A small Gemma-2: RMSNorm, and final-logit soft-capping the lens must apply too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(gpt2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        final_logit_softcapping=5.0,
        attn_implementation="eager",
    )
    return _wrap_random(Gemma2ForCausalLM(config), gpt2_tokenizer, "gemma2-random")


def unescaped(markdown: str) -> str:
    """The text a message's markdown shows: user text reaches it escaped (ui/escape.py), so unescape it.

    The word joiners that keep bare URLs from becoming links are invisible, so they go too.
    """
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def shown(markdown: str) -> str:
    """The text a reader sees in a message: its markdown rendered as CommonMark, tags dropped.

    Code spans lose the padding :func:`ui.escape.code` gives them, escapes are undone and
    :func:`ui.escape.plain`'s invisible word joiners go, as on screen.
    """
    import html
    import re

    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").renderInline(markdown)
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).replace("\u2060", "")
