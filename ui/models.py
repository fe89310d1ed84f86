"""The models a person can pick: their names, labels, limits, and how each one loads.

An NDIF model is named ``ndif:<hub id>`` everywhere the app passes model names (the
picker, the URL, the caches), so it is cached, limited and linked like a local one.
That name is the only place the app knows about NDIF: once loaded, a model says what
it can do (its ``capabilities``), and pages ask that, never where it runs.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import lens
from lens.settings import Settings
from ui import config

NDIF_PREFIX = "ndif:"
# A small curated set NDIF has hosted; LENS_NDIF_MODELS (comma-separated hub ids) replaces it.
HOSTED_MODELS: dict[str, str] = {
    "meta-llama/Llama-3.1-8B": "Llama 3.1 8B",
    "meta-llama/Llama-3.1-70B": "Llama 3.1 70B",
    "meta-llama/Llama-3.1-405B": "Llama 3.1 405B",
}
PRIVACY_NOTE = (
    ":material/cloud: **Runs on NDIF** (ndif.us), the National Deep Inference Facility: your prompt and the "
    "lens code are sent there; only the per-cell statistics come back. Needs an NDIF API key "
    "(`NDIF_API_KEY`)."
)
FIRST_REMOTE_RUN_NOTE = (
    "The first run on NDIF can take from seconds to several minutes: the request waits in NDIF's queue, and NDIF "
    "may first have to load the model onto its GPUs. The status below says where it is. Later runs of the same "
    "prompt come from this app's cache."
)
LOCAL_ONLY = "needs the model's weights on this machine; pick a local model in the sidebar for it."


def choices(server: Settings) -> list[str]:
    """Model ids for the picker: the server's default first, the curated list, then the NDIF models."""
    allow = server.model_allowlist
    curated = [m for m in config.CURATED_MODELS if m == "demo" or not allow or m in allow]
    remote = [NDIF_PREFIX + m for m in server.ndif_models or HOSTED_MODELS]
    return list(dict.fromkeys([server.default_model, *curated, *(m for m in remote if not allow or m in allow)]))


def local_choices(server: Settings) -> list[str]:
    """The picker's models that run here (a second model to compare or overlay)."""
    return [m for m in choices(server) if not m.startswith(NDIF_PREFIX)]


def label(model_id: str) -> str:
    if model_id.startswith(NDIF_PREFIX):
        hub_id = model_id.removeprefix(NDIF_PREFIX)
        return f"{HOSTED_MODELS.get(hub_id, hub_id)} (on NDIF)"
    if model_id in config.CURATED_MODELS:
        return config.CURATED_MODELS[model_id]
    if model_id.startswith((".", "/", "~")):
        return f"{Path(model_id).name} (local folder)"
    return model_id


def picker_note(model_id: str) -> None:
    """Under the model picker: where the chosen model runs, when prompts leave this server."""
    if model_id.startswith(NDIF_PREFIX):
        st.caption(PRIVACY_NOTE)


def check_allowed(model_id: str, server: Settings) -> str | None:
    """Why a typed model may not be used here, or None when it may."""
    if model_id in ("demo", server.default_model):
        return None
    looks_local = model_id.startswith((".", "/", "~")) or Path(model_id).expanduser().exists()
    if looks_local and not server.allow_local:
        return "Local folders are switched off on this server (its operator can set LENS_ALLOW_LOCAL=1)."
    if server.model_allowlist and model_id not in server.model_allowlist:
        return f"This server only offers these models: {', '.join(server.model_allowlist)}."
    return None


def ndif_api_key(server: Settings) -> str | None:
    """NDIF_API_KEY from the settings, else from Streamlit secrets; never shown."""
    if server.ndif_api_key:
        return server.ndif_api_key
    try:
        return str(st.secrets.get("NDIF_API_KEY", "")).strip() or None
    except Exception:  # noqa: BLE001 - no secrets file at all is the same as no key there
        return None


def load(model_id: str, server: Settings, progress=None) -> lens.LensModel | lens.NnsightModel:
    """Load a picked model: its weights here, or only its structure (config, tokenizer) for NDIF."""
    if model_id.startswith(NDIF_PREFIX):
        return lens.load_model(
            model_id.removeprefix(NDIF_PREFIX),
            backend="nnsight",
            remote=True,
            api_key=ndif_api_key(server),
            progress=progress,
        )
    return lens.load_model(model_id, progress=progress, max_model_bytes=server.max_model_bytes)


def has_local_weights(model: lens.LensModel | lens.NnsightModel) -> bool:
    """Whether the weights are in this process: attribution, statistics and training need them."""
    return model.capabilities.local_weights
