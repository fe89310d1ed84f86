"""Shared pieces of the benchmarks: the GPT-2-small-shaped model, prompts of a given length, and meters."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"

TEXT = (
    "The logit lens reads what a language model would predict if it stopped after each layer. "
    "It applies the final norm and the unembedding to the residual stream at every position, "
    "and shows how the guess for the next token forms from the bottom of the network to the top. "
)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) in MB.

    Read from /proc rather than getrusage: ru_maxrss survives exec, so a child started
    by a large parent would report the parent's peak.
    """
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """Resident memory of this process now (VmRSS) in MB."""
    return _status_mb("VmRSS")


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def gpt2_small_hf(attn_implementation: str = "eager"):
    """GPT-2 small's shape (124M parameters) as a plain Hugging Face model, with seeded random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(attn_implementation=attn_implementation)).eval()


def gpt2_small_random():
    """The same model wrapped for the lens, with the real tokenizer."""
    from transformers import GPT2TokenizerFast

    from lens import LensModel

    tokenizer_dir = SHARED_MODELS / "gpt2-tokenizer"
    if not tokenizer_dir.is_dir():
        sys.exit(f"The benchmark needs GPT-2's tokenizer at {tokenizer_dir}.")
    tokenizer = GPT2TokenizerFast.from_pretrained(str(tokenizer_dir))
    return LensModel.from_hf(gpt2_small_hf(), tokenizer, name="gpt2-small-random")


def prompt_of_length(model, n_tokens: int) -> str:
    """A prompt that tokenizes to exactly ``n_tokens`` tokens without BOS."""
    ids = model.tokenizer(TEXT * (n_tokens // 20 + 2), add_special_tokens=False)["input_ids"][:n_tokens]
    text = model.tokenizer.decode(ids)
    assert len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == n_tokens
    return text
