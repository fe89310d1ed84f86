"""The sidebar every page shares. Its widgets live in the URL, so a link reproduces the view.

The URL's ``model`` is the model in force, by id: a picker entry, an NDIF model, or a
typed hub id or folder (older links' ``model=Other model id…&model_id=X`` still open).
"""

from __future__ import annotations

import streamlit as st

from lens.settings import Settings
from ui import cached, config, lenses, models, state
from ui.state import Choices

OTHER = "__other__"
BOS_OPTIONS = {"default": "Tokenizer's default", "on": "Always", "off": "Never"}
LENS_KINDS = {"logit": "Logit lens", "tuned": "Tuned lens"}
MODEL_NOTE = "model_note"
TOP_K_LEAST, TOP_K_MOST, TOP_K_DEFAULT = 1, 20, 5


def _use_example() -> None:
    example = st.session_state.get("example")
    if example:
        st.session_state["prompt"] = example
    st.session_state["example"] = None


def render(server: Settings) -> Choices:
    """Draw the sidebar and return what it says."""
    choices = models.choices(server)
    _accept_model_link(choices)
    _fall_back_to_demo(server)
    # Warnings about the link go above the page, not into the sidebar.
    state.choice("bos", list(BOS_OPTIONS), BOS_OPTIONS.get, "start-token setting")
    state.choice("lens_kind", list(LENS_KINDS), LENS_KINDS.get, "lens")
    state.warn_number_out_of_range("top_k", "top-k", TOP_K_LEAST, TOP_K_MOST, TOP_K_DEFAULT)
    with st.sidebar:
        st.header("Model and prompt")
        picked = st.selectbox(
            "Model",
            [*choices, OTHER],
            format_func=_model_label,
            key="model",
            help="Small models run quickly on a CPU. 'Demo (offline)' is bundled and needs no network.",
        )
        model_name = picked
        models.picker_note(picked)
        if picked == OTHER:
            hint = "a Hugging Face id" + (" or a local folder" if server.allow_local else "")
            model_name = st.text_input(
                "Model id",
                key="model_id",
                placeholder="EleutherAI/pythia-70m",
                help=f"Type {hint} of a causal language model that TransformerLens supports.",
            ).strip()
        state.keep_in_link("model", model_name)
        st.query_params.pop("model_id", None)
        prompt = st.text_area(
            "Prompt",
            value=config.DEFAULT_PROMPT,
            key="prompt",
            bind="query-params",
            height=100,
            help="The text the model reads. The lens shows its guess for the next token at every position.",
        )
        st.selectbox(
            "Or pick an example",
            [None, *config.EXAMPLE_PROMPTS],
            key="example",
            on_change=_use_example,
            format_func=lambda p: "—" if p is None else p.replace("\n", " ⏎ "),
        )
        target = st.text_input(
            "Target token",
            key="target",
            bind="query-params",
            placeholder="e.g. ' Paris' (with its space)",
            help="A token to follow through the layers: its probability and rank in every cell. "
            "Most tokens start with a space, so type ' Paris' rather than 'Paris'.",
        )
        st.session_state["target_caption"] = st.empty()
        lens_source = _lens_picker(model_name)
        with st.expander("More settings"):
            bos = state.linked_choice(
                st.radio,
                "Start-of-text token",
                list(BOS_OPTIONS),
                key="bos",
                what="start-token setting",
                name=BOS_OPTIONS.get,
                default="default",
                horizontal=True,
                help="Whether the model first reads its beginning-of-sequence token. The default does what the "
                "model's tokenizer does: none for GPT-2, one for Llama.",
            )
            embed = st.toggle(
                "Show the embedding row",
                key="embed_row",
                bind="query-params",
                help="The lens on the token embeddings, before any layer.",
            )
            attn = st.toggle(
                "Show after-attention rows",
                key="attn_rows",
                bind="query-params",
                help="A row after each layer's attention, before its MLP.",
            )
            top_k = st.slider(
                "Top-k tokens per cell",
                TOP_K_LEAST,
                TOP_K_MOST,
                TOP_K_DEFAULT,
                key="top_k",
                bind="query-params",
                help="How many of the most likely tokens the tooltips and bar chart list.",
            )
    points = ("resid_pre",) * embed + ("resid_mid",) * attn + ("resid_post",)
    return Choices(
        model_name=model_name,
        prompt=prompt,
        prepend_bos={"default": None, "on": True, "off": False}[bos],
        points=points,
        top_k=int(top_k),
        target=target,
        lens_source=lens_source,
    )


def _model_label(model_id: str) -> str:
    return "Other model id…" if model_id == OTHER else models.label(model_id)


def _accept_model_link(choices: list[str]) -> None:
    """``?model=`` may give an id or a label; any other value is read as a typed model id."""
    value = st.query_params.get("model")
    if value is None or "model" in st.session_state:
        return
    if value in (OTHER, _model_label(OTHER)):
        st.session_state["model"] = OTHER
        st.session_state.setdefault("model_id", st.query_params.get("model_id", ""))
    elif not state.accept_choice("model", choices, _model_label):
        st.session_state["model"] = OTHER
        st.session_state.setdefault("model_id", value)


def _fall_back_to_demo(server: Settings) -> None:
    """On first contact with no model in the link, open on the demo if the default can't be fetched."""
    if "model" in st.session_state or "model" in st.query_params or server.default_model == "demo":
        return
    if cached.unavailable(server.default_model):
        st.session_state["model"] = "demo"
        st.session_state[MODEL_NOTE] = (
            f"{models.label(server.default_model)} couldn't be downloaded (the Hugging Face hub can't be "
            "reached and it isn't cached here), so this is the bundled demo model. To use it, open the app once "
            "with network access, or set LENS_DEFAULT_MODEL to a folder holding the model."
        )


def _lens_picker(model_name: str) -> str | None:
    """Logit lens, or one of the tuned lenses found for this model on disk or the hub."""
    kind = state.linked_choice(
        st.segmented_control,
        "Lens",
        list(LENS_KINDS),
        key="lens_kind",
        what="lens",
        name=LENS_KINDS.get,
        default="logit",
        help="The logit lens reads each layer with the model's own output head. The tuned lens first passes each "
        "layer through a small learned translator, which reads early layers far better.",
    )
    if kind != "tuned":
        return None
    found = lenses.available(model_name)
    if not found:
        st.caption("No tuned lens for this model yet: train one on the **Tuned lens** page.")
        return None
    label = st.selectbox("Tuned lens", list(found), key="tuned_lens", bind="query-params")
    return found.get(label)
