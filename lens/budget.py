"""What this machine can afford: refuse a model too big for memory before downloading or allocating it.

A hosted server that downloads any model it is asked for, then builds it in fp32, is
killed by the first 70B request, and every session with it. So the size is read first:
exactly, by building the config's model on the meta device (shapes, no memory), and
again from the hub's metadata (parameter count, or file sizes), and compared with the
limit the caller passes (the app's ``LENS_MAX_MODEL_GB``; default: half of the memory
this process can still use, from the cgroup limit or the machine's RAM, less 1 GB of
working room). The same reading of the CPU quota sets torch's thread count, which
otherwise follows the host's cores.
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
# The default budget: memory kept for the server's own work, and the sessions the rest is shared by.
WORKING_BYTES = 1 * 2**30
SESSIONS = 2
# Deeper configs are counted from one- and two-layer builds: a meta build costs ~5 ms a layer.
DEEP_LAYERS = 64
# What each layer costs beyond its weights: its Python modules and TransformerLens's hook points,
# measured at ~120-140 kB a block (GPT-2, Llama at width 4), doubled for other families.
LAYER_BYTES = 256 * 2**10


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
    """Largest fp32 weights this server loads: the caller's limit, or a share of the memory still free.

    The default keeps :data:`WORKING_BYTES` for the server's own work (a lens run's
    activations and logits, its result caches) and halves the rest, so a second session
    can still load a model as big beside the first; all free memory let one tuned lens
    take everything.
    """
    if limit_bytes is not None and limit_bytes <= 0:
        raise LensError(f"The model size limit must be a positive number of bytes, not {limit_bytes!r}.")
    if limit_bytes is not None:
        return int(limit_bytes)
    return max(0, available_memory_bytes() - WORKING_BYTES) // SESSIONS


def check_fits(
    n_parameters: float,
    what: str,
    limit_bytes: int | None = None,
    limit_name: str = "LENS_MAX_MODEL_GB",
    layers: int = 0,
) -> None:
    """Refuse, in one line with the size and the limit, weights whose fp32 copy won't fit.

    ``layers`` adds each layer's modules (:data:`LAYER_BYTES`), which a thin, deep model is mostly made of.
    """
    need = n_parameters * FP32_BYTES + layers * LAYER_BYTES
    limit = model_budget_bytes(limit_bytes)
    if need > limit:
        in_layers = f" in {layers:,} layers" if layers else ""
        raise LensError(
            f"{what} has about {_count(n_parameters)} parameters{in_layers} ({need / GB:,.1f} GB in fp32); "
            f"this server loads at most {limit / GB:,.1f} GB ({limit_name})."
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


def _check_dimensions(config: Mapping, name: str) -> None:
    """Whole numbers where the common dimension keys stand, for a clearer line than the model class's own error."""
    for keys, what in (
        (_LAYER_KEYS, "the number of layers"),
        (_WIDTH_KEYS, "the width"),
        (("vocab_size",), "the vocabulary size"),
        (_FFN_KEYS, "the MLP width"),
        (_CONTEXT_KEYS, "the context length"),
    ):
        _dimension(config, keys, what, name)


def _meta_count(model_class: type, hf_config: object) -> int:
    """Parameters of the model built on the meta device: shapes only, no memory; tied weights count once."""
    import torch

    with torch.device("meta"):
        model = model_class(hf_config)
    return sum(p.numel() for p in model.parameters())


def _with_layers(hf_config: object, layers: int, n: int) -> object:
    """A copy of the config with ``n`` layers; per-layer lists and patterns (layer types) cut to match."""
    import copy

    short = copy.deepcopy(hf_config)
    for attribute, value in vars(short).items():
        if isinstance(value, (list, tuple, str)) and len(value) == layers:
            setattr(short, attribute, value[:n])
    short.num_hidden_layers = n
    return short


def count_parameters(config: Mapping | object, shown: str) -> tuple[int, int]:
    """The exact parameter count of the model a config describes, and its layers, without allocating it.

    The model is built on torch's meta device, so every dimension counts (experts, head
    size, vocabulary), not only the ones an estimate names. Deep configs are built with
    one and two layers and extrapolated per layer, exact where every layer after the
    first has one shape: building 200,000 meta layers would itself take minutes.
    The class is the one ``architectures.model_class`` proves; no remote code is read.
    """
    from lens.architectures import model_class

    if not isinstance(config, Mapping):  # a transformers config object (the nnsight loader holds one)
        config = config.to_dict()
    cls = model_class(config)
    _check_dimensions(config, shown)
    try:
        hf_config = cls.config_class.from_dict(dict(config))
        layers = getattr(hf_config, "num_hidden_layers", None)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise LensError(f"Model '{shown}' has {layers!r} layers in its config.json; the lens needs at least one.")
        if layers <= DEEP_LAYERS:
            return _meta_count(cls, hf_config), layers
        one, two = (_meta_count(cls, _with_layers(hf_config, layers, n)) for n in (1, 2))
        return one + (layers - 1) * (two - one), layers
    except LensError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile config makes the model class raise anything
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LensError(f"Model '{shown}''s config.json does not describe a model that can be built: {reason}") from exc


def check_config(
    config: Mapping | object, shown: str, limit_bytes: int | None = None, limit_name: str = "LENS_MAX_MODEL_GB"
) -> int:
    """Refuse a config whose model is too big, before anything is allocated or downloaded; return its count.

    The one size check both loaders call (TransformerLens and nnsight); ``limit_bytes``
    defaults to :func:`model_budget_bytes`'s share of free memory, and ``limit_name`` says
    in the message where another limit comes from.
    """
    n_parameters, layers = count_parameters(config, shown)
    check_fits(n_parameters, f"Model '{shown}'", limit_bytes, limit_name, layers)
    return n_parameters


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
