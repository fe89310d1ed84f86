"""What this machine can afford: refuse a model too big for memory before downloading or allocating it.

A hosted server that downloads any model it is asked for, then builds it in fp32, is
killed by the first 70B request, and every session with it. So the size is read first,
from the hub's metadata (parameter count, or file sizes) and from the config's
dimensions, and compared with the limit the caller passes (the app's ``LENS_MAX_MODEL_GB``;
default: the memory this process can still use, from the cgroup limit or the machine's RAM). The same reading of the CPU
quota sets torch's thread count, which otherwise follows the host's cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from lens.errors import LensError

FP32_BYTES = 4
GB = 1e9
CGROUP = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
# Bytes per parameter of the dtypes weights are stored in; fp32 needs 4 whatever they are stored as.
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1}
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int:
    """Memory this process may still use: the cgroup's limit less its usage, or the RAM available."""
    candidates = []
    for limit_file, usage_file in (
        (CGROUP / "memory.max", CGROUP / "memory.current"),
        (CGROUP / "memory" / "memory.limit_in_bytes", CGROUP / "memory" / "memory.usage_in_bytes"),
    ):
        limit = _read_number(limit_file)
        if limit is not None and limit < 2**60:  # cgroup v1 writes "no limit" as a huge number
            candidates.append(max(0, limit - (_read_number(usage_file) or 0)))
    try:
        meminfo = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines() if ":" in line)
        candidates.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    return min(candidates) if candidates else 8 * 2**30


def model_budget_bytes(limit_bytes: int | None = None) -> int:
    """Largest fp32 weights this server loads: the caller's limit, or the memory still free."""
    if limit_bytes is not None and limit_bytes <= 0:
        raise LensError(f"The model size limit must be a positive number of bytes, not {limit_bytes!r}.")
    return available_memory_bytes() if limit_bytes is None else int(limit_bytes)


def check_fits(n_parameters: float, what: str, limit_bytes: int | None = None) -> None:
    """Refuse, in one line with the size and the limit, weights whose fp32 copy won't fit."""
    need = n_parameters * FP32_BYTES
    limit = model_budget_bytes(limit_bytes)
    if need > limit:
        raise LensError(
            f"{what} has about {_count(n_parameters)} parameters ({need / GB:,.1f} GB in fp32); "
            f"this server loads at most {limit / GB:,.1f} GB (LENS_MAX_MODEL_GB)."
        )


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:,.1f}{unit}"
    return f"{n:,.0f}"


def _dimension(config: Mapping, keys: tuple[str, ...], what: str, name: str) -> int | None:
    for key in keys:
        if key in config and config[key] is not None:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LensError(f"{name}'s config.json gives {key} = {value!r}; {what} must be a whole number.")
            return value
    return None


def config_parameters(config: Mapping, name: str) -> int:
    """A generous estimate of a Hugging Face config's parameter count, from its dimensions.

    Embedding and unembedding (counted twice, as if untied), position table, and per
    layer 4·d² for attention and 3·d·ffn for a gated MLP: an upper bound for the
    architectures the lens reads, cheap enough to compute for a config of any size.
    """
    inner = config.get("text_config")
    if isinstance(inner, Mapping):
        return config_parameters(inner, name)
    layers = _dimension(config, _LAYER_KEYS, "the number of layers", name) or 0
    width = _dimension(config, _WIDTH_KEYS, "the width", name) or 0
    vocab = _dimension(config, ("vocab_size",), "the vocabulary size", name) or 0
    ffn = _dimension(config, _FFN_KEYS, "the MLP width", name) or 4 * width
    context = _dimension(config, _CONTEXT_KEYS, "the context length", name) or 0
    return 2 * vocab * width + context * width + layers * (4 * width * width + 3 * width * ffn)


def check_config(config: Mapping, name: str, limit_bytes: int | None = None) -> None:
    """Refuse a config that describes a model too big to build here, before anything is allocated."""
    check_fits(config_parameters(config, name), f"Model '{name}'", limit_bytes)


def hub_parameters(repo_id: str) -> float | None:
    """The hub's parameter count for a repo (safetensors metadata), else one from its weight files' sizes."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True)
    safetensors = getattr(info, "safetensors", None)
    if safetensors is not None and getattr(safetensors, "total", None):
        return float(safetensors.total)
    sizes = [
        s.size or 0
        for s in getattr(info, "siblings", None) or []
        if s.rfilename.endswith((".safetensors", ".bin", ".pt", ".pth"))
    ]
    # Stored size over bytes per stored parameter; without a dtype, 2 bytes (fp16) errs on the large side.
    return sum(sizes) / 2 if sizes else None


def check_hub_size(source: str, shown: str, limit_bytes: int | None = None) -> None:
    """For a hub id, the hub's own parameter count within budget, before anything is downloaded."""
    if Path(source).is_dir():
        return
    n_parameters = hub_parameters(source)
    if n_parameters is not None:
        check_fits(n_parameters, f"Model '{shown}'", limit_bytes)


def cpu_quota() -> int:
    """CPUs this process may really use: the cgroup's quota, else its affinity mask, else the host's cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        quota_us, period_us = (
            _read_number(CGROUP / "cpu" / "cpu.cfs_quota_us"),
            _read_number(CGROUP / "cpu" / "cpu.cfs_period_us"),
        )
        if quota_us and period_us:
            cpus = min(cpus, math.ceil(quota_us / period_us))
    return max(1, cpus)


def limit_torch_threads() -> int:
    """Give torch as many threads as the CPU quota allows: more only contend for a fraction of a core."""
    import torch

    threads = cpu_quota()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
