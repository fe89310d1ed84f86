"""The sidebar every page shares. Its widgets live in the URL, so a link reproduces the view.

The URL's ``model`` is the model in force, by id: a picker entry, an NDIF model, or a
typed hub id or folder (older links' ``model=Other model id…&model_id=X`` still open).
"""

from __future__ import annotations

import streamlit as st

from lens.settings import Settings
from lens.tokens import chat_prompt
from ui import cached, config, lenses, models, state
from ui.state import Choices

OTHER = "__other__"
BOS_OPTIONS = {"default": "Tokenizer's default", "on": "Always", "off": "Never"}
LENS_KINDS = {"logit": "Logit lens", "tuned": "Tuned lens", "jacobian": "Jacobian lens"}
PICKERS = {
    "tuned": ("Tuned lens", "tuned_lens", lenses.available),
    "jacobian": ("Jacobian lens", "jacobian_lens", lenses.available_jacobian),
}
MODEL_NOTE = "model_note"
TOP_K_LEAST, TOP_K_MOST, TOP_K_DEFAULT = 1, 20, 5


def _warn_about_whitespace(prompt: str) -> None:
    """One line, and a one-click trim, when the prompt starts or ends with whitespace.

    Most tokenizers attach a space to the word after it (" Paris"), so a trailing space
    leaves the model to predict a word without one: on Llama-3.1-8B it drops " Paris"
    after "…the city of" from 89.5% to 2.5%.
    """
    ends = [where for where, edge in (("starts", prompt[:1]), ("ends", prompt[-1:])) if edge.isspace()]
    if not ends or not prompt.strip():
        return
    st.warning(
        f"The prompt {' and '.join(ends)} with whitespace. Tokens usually carry their leading space, so a "
        "trailing space can change the next-token guesses a lot.",
        icon=":material/space_bar:",
    )
    st.button("Trim the whitespace", key="trim_prompt", on_click=_trim_prompt)


def _trim_prompt() -> None:
    st.session_state["prompt"] = st.session_state["prompt"].strip()


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
        _warn_about_whitespace(prompt)
        st.session_state[state.PROMPT_TOKENS] = st.empty()  # the prompt's tokens, drawn once the model is loaded
        st.selectbox(
            "Or pick an example",
            [None, *config.EXAMPLE_PROMPTS],
            key="example",
            on_change=_use_example,
            format_func=lambda p: "—" if p is None else p.replace("\n", " ⏎ "),
            placeholder="—",  # after a pick the box is empty again: "—", not Streamlit's "Choose an option"
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
        chat_template = False
        if model_name and cached.chat_tokenizer(model_name) is not None:
            chat_template = st.toggle(
                "Apply chat template",
                key="chat_template",
                bind="query-params",
                help="Wrap the prompt as a user message in this model's chat format, as an instruction-tuned "
                "model expects; the tokens above then show exactly what it reads.",
            )
        lens_source = _lens_picker(model_name)
        # A constant button (ui/static/copy_link.js copies the address); the status line is read out.
        st.html(
            '<div class="lens-copy"><button type="button" class="lens-copy-link">Copy link to this view</button>'
            '<span class="lens-copy-status" role="status"></span></div>'
        )
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
    if lenses.kind(lens_source) == "jacobian" and points != ("resid_post",):
        st.sidebar.caption(
            "The Jacobian lens reads block outputs only: the embedding and after-attention rows are off."
        )
        points = ("resid_post",)
    prepend_bos = {"default": None, "on": True, "off": False}[bos]
    chat = chat_template and prompt.strip() and cached.chat_tokenizer(model_name)
    if chat:
        prompt = chat_prompt(chat, prompt)
        if chat.bos_token and prompt.startswith(chat.bos_token):
            prepend_bos = False  # the format already starts with it
    return Choices(
        model_name=model_name,
        prompt=prompt,
        prepend_bos=prepend_bos,
        chat_template=bool(chat),
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
    """Logit lens, or one of the tuned or Jacobian lenses found for this model on disk or the hub."""
    kind = state.linked_choice(
        st.segmented_control,
        "Lens",
        list(LENS_KINDS),
        key="lens_kind",
        what="lens",
        name=LENS_KINDS.get,
        default="logit",
        help="The logit lens reads each layer with the model's own output head. The tuned lens first passes each "
        "layer through a small learned translator, which reads early layers far better. The Jacobian lens first "
        "carries each layer through the network's average first-order effect on the output (see the Lenses page).",
    )
    if kind not in PICKERS:
        return None
    title, key, find = PICKERS[kind]
    found = find(model_name)
    if not found:
        st.caption(f"No {title.lower()} for this model yet: make one on the **Lenses** page.")
        return None
    label = st.selectbox(title, list(found), key=key, bind="query-params")
    return found.get(label)
