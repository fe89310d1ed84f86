"""Running the lens on NDIF from the app: the hosted models offered, the key, and the wait.

An NDIF model is named ``ndif:<hub id>`` everywhere the app passes model names (the
picker, the URL, the caches), so it is cached, limited and linked like a local one.
Only the per-cell statistics come back from NDIF; the key never leaves the server
side (it is read here and handed to nnsight, which sends it as a request header).
"""

from __future__ import annotations

import os

import streamlit as st

import lens
from ui.escape import plain

PREFIX = "ndif:"
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
FIRST_RUN_NOTE = (
    "The first run on NDIF can take from seconds to several minutes: the request waits in NDIF's queue, and NDIF "
    "may first have to load the model onto its GPUs. The status below says where it is. Later runs of the same "
    "prompt come from this app's cache."
)
LOCAL_ONLY = "needs the model's weights on this machine; pick a local model in the sidebar for it."


def hosted_ids() -> list[str]:
    """Hub ids offered on NDIF: the server's LENS_NDIF_MODELS, else the curated list."""
    configured = [m.strip() for m in os.environ.get("LENS_NDIF_MODELS", "").split(",") if m.strip()]
    return configured or list(HOSTED_MODELS)


def choices(allowlist: tuple[str, ...]) -> list[str]:
    """Picker entries for the hosted models; with an allow-list, only those it names (as ``ndif:<id>``)."""
    names = [PREFIX + m for m in hosted_ids()]
    return [n for n in names if not allowlist or n in allowlist]


def is_remote(model_name: str) -> bool:
    return model_name.startswith(PREFIX)


def repo_id(model_name: str) -> str:
    return model_name.removeprefix(PREFIX)


def label(model_name: str) -> str:
    model = repo_id(model_name)
    return f"{HOSTED_MODELS.get(model, model)} (on NDIF)"


def api_key() -> str | None:
    """NDIF_API_KEY from the environment, else from Streamlit secrets; never shown."""
    key = os.environ.get("NDIF_API_KEY", "").strip()
    if key:
        return key
    try:
        return str(st.secrets.get("NDIF_API_KEY", "")).strip() or None
    except Exception:  # noqa: BLE001 - no secrets file at all is the same as no key there
        return None


def note() -> None:
    """Under the model picker, when an NDIF model is chosen."""
    st.caption(PRIVACY_NOTE)


def load(model_name: str, progress=None) -> lens.NnsightModel:
    """The model's structure (config and tokenizer, no weights) for runs on NDIF."""
    return lens.load_model(repo_id(model_name), backend="nnsight", remote=True, api_key=api_key(), progress=progress)


def run(query, targets: tuple[str | int, ...]) -> lens.LensResult:
    """The cached NDIF result for a query and targets, with the job's status shown while it runs."""
    from ui import cached, page

    explanation = st.empty()
    if not st.session_state.get("ndif_has_run"):
        explanation.info(FIRST_RUN_NOTE, icon=":material/hourglass_top:")
    try:
        result = page.with_progress(
            lambda report: cached.ndif_result(query, targets, _progress=report),
            f"Sending the prompt to NDIF for {label(query.model_name)}",
        )
    finally:
        explanation.empty()
    st.session_state["ndif_has_run"] = True
    return result


def refuse_local_only(model_name: str, what: str) -> None:
    """Stop a page whose work needs local weights, with one line, when the sidebar's model is on NDIF."""
    if is_remote(model_name):
        st.info(plain(f"{what} {LOCAL_ONLY}"), icon=":material/cloud_off:")
        st.stop()
