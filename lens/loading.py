"""Loading a model: the guards every backend shares, then that backend's own loader.

The checks that protect a server run here, once, before any backend downloads or
builds anything: the name (a hub id or, where allowed, a folder), the config read
first (a small file), the architecture proven, the size within the limit. A model
for NDIF gets the same checks plus its own: a hub id only (a path is refused with one
message, whether it exists or not), and, when the caller offers a list, one on it.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from lens import budget, sources
from lens.architectures import check_architecture
from lens.backend import Progress
from lens.checks import callback, flag, optional_text
from lens.errors import LensError
from lens.model import LensModel, load_transformer_lens
from lens.nnsight_backend import DEFAULT_TIMEOUT, NnsightModel, check_api_key, load_nnsight
from lens.settings import DEFAULT_MODEL

BACKENDS = ("transformer_lens", "nnsight")


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    progress: Progress | None = None,
    backend: str = "transformer_lens",
    remote: bool = False,
    api_key: str | None = None,
    fast_attention: bool = True,
    max_model_bytes: int | None = None,
    ndif_models: Collection[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LensModel | NnsightModel:
    """Boot a hub id or a local Hugging Face folder, with the tokenizer from the same place.

    Remote code is never trusted. ``device`` and ``device_map`` go to the backend
    (``device_map="auto"`` spreads a TransformerLens model over several GPUs).
    ``progress(message, fraction_or_None)`` hears what is happening, for a UI to show.
    ``backend="nnsight"`` wraps the model in nnsight instead; with ``remote=True`` it
    runs on NDIF with ``api_key`` (else the key ``nnsight login`` saved), only hub ids
    in ``ndif_models`` when that is given, each run waiting at most ``timeout`` seconds.
    ``max_model_bytes`` is the largest fp32 model built here (default: a share of the free memory).
    ``fast_attention`` runs TransformerLens's attention on SDPA while nothing hooks it.
    """
    optional_text(api_key, "api_key")
    optional_text(device, "device")
    flag(remote, "remote")
    flag(fast_attention, "fast_attention")
    callback(progress, "progress")
    if not isinstance(dtype, torch.dtype):
        raise LensError(f"dtype must be a torch dtype (torch.float32, torch.bfloat16), not {type(dtype).__name__}.")
    if ndif_models is not None and (isinstance(ndif_models, str) or not all(isinstance(m, str) for m in ndif_models)):
        raise LensError("ndif_models must be a collection of hub ids (strings), not a single string.")
    if backend not in BACKENDS:
        raise LensError(f"Unknown backend {backend!r}; choose 'transformer_lens' or 'nnsight'.")
    if remote and backend != "nnsight":
        raise LensError("Remote runs go through nnsight: pass backend='nnsight' with remote=True.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise LensError(f"timeout must be a positive number of seconds, not {timeout!r}.")
    budget.limit_torch_threads()
    if remote:
        return _load_for_ndif(name_or_path, api_key, ndif_models, float(timeout), max_model_bytes, progress)
    source, shown = sources.resolve_model_source(name_or_path)
    budget.check_hub_size(source, shown, max_model_bytes)
    budget.check_config(sources.read_config(source), shown, max_model_bytes)  # the architecture is proven there too
    if backend == "nnsight":
        return load_nnsight(source, shown, device=device, dtype=dtype, progress=progress)
    return load_transformer_lens(
        source,
        shown,
        device=device,
        dtype=dtype,
        device_map=device_map,
        progress=progress,
        fast_attention=fast_attention,
    )


def _load_for_ndif(
    name_or_path: str,
    api_key: str | None,
    ndif_models: Collection[str] | None,
    timeout: float,
    max_model_bytes: int | None,
    progress: Progress | None,
) -> NnsightModel:
    """A handle on a hub model NDIF runs: config and tokenizer here (never a local folder), weights there.

    The name is never looked up on this machine's file system, so the answer for
    ``/etc`` is the same as for ``/no/such/folder``. The structure is built on the
    meta device, layer by layer, so its depth is checked against the limit first.
    """
    key = check_api_key(api_key)
    name = sources.check_model_name(name_or_path)
    if sources.looks_like_path(name):
        raise LensError("NDIF runs models from the Hugging Face hub: name one by its hub id, not a folder.")
    sources.check_repo_id(name)
    if ndif_models is not None and name not in ndif_models:
        offered = ", ".join(sorted(ndif_models)) or "none"
        raise LensError(f"'{name}' is not among the NDIF models this server offers ({offered[:300]}).")
    try:
        source = sources.cached_snapshot(name)
        if source is None:
            if sources.hub_offline():
                raise LensError(
                    f"Could not read model '{name}': the hub can't be reached for its config and tokenizer."
                )
            source = sources.download_snapshot(name, progress, weights=False)
        config = sources.read_config(source)
    except LensError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; classified by type
        raise sources.load_failure(exc, name) from exc
    check_architecture(config)
    _, layers = budget.count_parameters(config, name)
    # The weights stay on NDIF; the structure built here on the meta device costs its modules, per layer.
    need = layers * budget.LAYER_BYTES
    limit = budget.model_budget_bytes() if max_model_bytes is None else max_model_bytes
    if need > limit:
        raise LensError(
            f"Model '{name}' has {layers:,} layers: their structure alone needs {need / budget.GB:,.1f} GB here, "
            f"and this server builds at most {limit / budget.GB:,.1f} GB (LENS_MAX_MODEL_GB)."
        )
    return load_nnsight(source, name, remote_id=name, api_key=key, timeout=timeout, progress=progress)
