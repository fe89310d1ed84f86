"""Make a tuned or Jacobian lens for the current model, or see which ones exist."""

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

import threading

import streamlit as st

from lens import FitCancelled, LensError, charts, fit_jacobian_lens, has_published_lens, train_tuned_lens, training_key
from ui import cached, config, corpus_input, lenses, running, state
from ui.escape import code, plain

st.title("Lenses")
with st.expander("What are these lenses, and when can I trust them?"):
    st.markdown(
        "The **logit lens** reads every layer with the model's own output head, but early layers don't yet speak "
        "its language, so their guesses look like noise. Two lenses translate first:\n\n"
        "- A **tuned lens** (Belrose et al., 2023) learns one small translator per layer that maps it into the "
        "output's language; it starts as 'do nothing' and is trained to make each layer's guess match the "
        "model's final answer. It agrees with the output by construction, so it can hide what a layer does "
        "that the output doesn't.\n"
        "- A **Jacobian lens** (Gurnee et al., 2026) isn't trained to match anything. For each layer it measures, "
        "averaged over some text, how a small change in that layer changes the last layer (the *Jacobian*), "
        "and reads the layer through that map: what the layer would *do* to the output, to first order, rather "
        "than what it already says. The logit lens is the case where that map is 'do nothing'.\n\n"
        "**When to trust them:** where their KL to the output is low on text like yours (Compare → lenses shows "
        "it per layer, on your prompt or the Dataset texts). A Jacobian lens fitted on a few prompts of other "
        "text is a rough estimate: read early layers as hints, and compare with the logit lens at the top. "
        "The Jacobian lens reads block outputs only (no embedding or after-attention rows). "
        "Choose a lens with **Lens** in the sidebar once one exists for your model."
    )

s = state.choices()
model = running.load_model(s.model_name)
if model is None:
    st.stop()
running.require_local_weights(model, "Making a lens")
KINDS = {"tuned": "Tuned lens", "jacobian": "Jacobian lens"}
kind = state.linked_choice(
    st.radio, "Lens to make", list(KINDS), key="lenses_kind", what="lens kind", name=KINDS.get, default="tuned",
    horizontal=True,
)  # fmt: skip
source = st.radio(
    "Text to learn from",
    ["sample", "paste"],
    key="train_source",
    horizontal=True,
    format_func={"sample": "Bundled sample", "paste": "Paste texts"}.get,
)
texts = (
    corpus_input.sample_texts()
    if source == "sample"
    else corpus_input.lines(st.text_area("Texts, one per line", key="train_text", height=140))
)
if kind == "jacobian":
    found = lenses.available_jacobian(s.model_name)
    listing = st.empty()
    listing.markdown(
        "**Jacobian lenses for this model:** " + ", ".join(code(label) for label in found)
        if found
        else "No Jacobian lens for this model yet: fit one below."
    )
    if not has_published_lens(s.model_name):
        st.caption(
            "No published Jacobian lens exists for this model (neuronpedia/jacobian-lens has GPT-2 small, Gemma, "
            "Llama, Qwen, Pythia-70m and others; the sidebar offers it when there is one)."
        )
    limit = config.server().max_jlens_prompts
    left, right = st.columns(2)
    prompts = (
        left.slider(
            "Prompts",
            1,
            limit,
            min(16, limit),
            key="jlens_prompts",
            help="Each prompt costs one backward pass per residual dimension; ~100 prompts of 128 tokens "
            "is a usable lens on a large model, a few already help on a small one. This server allows "
            f"{limit} (LENS_MAX_JLENS_PROMPTS).",
        )
        if limit > 1
        else 1
    )
    tokens = right.select_slider("Tokens per prompt", [32, 64, 128], 64, key="jlens_tokens")
    if not texts:
        st.info("Give some text to fit on.")
        st.stop()
    if model.d_model >= 512:
        st.warning(
            f"Fitting backpropagates once per residual dimension ({model.d_model} here) for every prompt: expect "
            "minutes per prompt on a CPU (see the README's measured figures)."
        )
    path = lenses.jacobian_file(s.model_name, texts, prompts, tokens)
    if path.is_file():
        st.success("A Jacobian lens with exactly these settings is already fitted (kept on disk for every session).")
        st.stop()
    fit, stop = st.columns([1, 4])
    if not fit.button("Fit", type="primary", key="fit_jlens"):
        if stop.button("Cancel", key="cancel_jlens"):
            st.warning("Fitting was cancelled; nothing was saved.", icon=":material/cancel:")
        st.stop()
    stop.button("Cancel", key="cancel_jlens", help="Stops after the prompt being fitted.")
    cancel = threading.Event()

    def work(report):
        def tell(done, total, seconds_left):
            report(f"Prompt {done} of {total}, about {seconds_left:.0f} s left", done / total)

        return fit_jacobian_lens(model, texts, max_prompts=prompts, max_tokens=tokens, progress=tell, cancel=cancel)

    try:
        fitted = running.with_progress(work, "Fitting the Jacobian lens", cancel=cancel)
    except FitCancelled as exc:
        st.warning(plain(f"{exc} Nothing was saved."), icon=":material/cancel:")
        st.stop()
    except LensError as exc:
        running.show_error(str(exc))
        st.stop()
    try:
        fitted.save(path)
    except OSError as exc:
        st.warning(
            plain(f"Fitted, but this server can't keep it ({exc.strerror or exc}: {path.parent}; see LENS_CACHE_DIR).")
        )
        st.stop()
    listing.markdown(
        "**Jacobian lenses for this model:** "
        + ", ".join(code(label) for label in lenses.available_jacobian(s.model_name))
    )
    st.success(
        plain(
            f"Fitted on {fitted.n_prompts} prompt{'s' * (fitted.n_prompts != 1)} and saved. Pick it in the sidebar: "
            f"Lens → Jacobian lens → 'Fitted here: {path.stem}'."
        )
    )
    st.stop()

# Filled at the end of the run, so a lens trained on this run is listed (not "no lens yet").
listing = st.empty()


def list_lenses() -> None:
    found = lenses.available(s.model_name)
    if found:
        listing.markdown("**Tuned lenses for this model:** " + ", ".join(code(label) for label in found))
    else:
        listing.info("No tuned lens for this model yet. Train one below.")


st.caption(
    "Published lenses, fetched from the hub when it can be reached, exist for: "
    + ", ".join(lenses.published_models())
    + "."
)

st.subheader("Train one")
limit = config.server().max_train_steps
left, middle, right = st.columns(3)
if limit > 1:
    fewest, step = (10, 10) if limit >= 20 else (1, 1)  # a small LENS_MAX_TRAIN_STEPS gets single steps
    steps = left.slider(
        "Steps",
        fewest,
        limit,
        min(300, limit),
        step=step,
        key="train_steps",
        help="Each step reads one window of text. More steps fit better and take longer.",
    )
else:
    steps = 1
    left.caption("Steps: 1 (this server's limit, LENS_MAX_TRAIN_STEPS).")
lr = middle.select_slider("Learning rate", [3e-4, 1e-3, 3e-3, 1e-2], 3e-3, key="train_lr")
window = right.select_slider("Tokens per step", [32, 64, 128, 256], 64, key="train_window")
if not texts:
    list_lenses()
    st.info("Give some text to train on.")
    st.stop()
if model.d_vocab * model.d_model > 60_000_000:
    st.warning("This model is large for training here: expect several seconds per step on a CPU.")

folder = lenses.trained_folder(s.model_name, training_key(model, texts, steps, lr, window, seed=0))
if (folder / "config.json").is_file():
    st.success("A lens with exactly these settings is already trained (it is kept on disk for every session).")
    try:
        lens = cached.tuned_lens(str(folder))
    except LensError as exc:
        running.show_error(str(exc))
        st.stop()
elif st.button("Train", type="primary", key="train"):

    def work(report):
        def tell(step, total, loss, seconds_left):
            report(f"Step {step} of {total}: KL {loss:.3f} nats, about {seconds_left:.0f} s left", step / total, loss)

        return train_tuned_lens(model, texts, steps=steps, lr=lr, window=window, seed=0, progress=tell)

    try:
        lens = running.with_progress(work, "Training the tuned lens", curve="KL to the output (nats)")
    except LensError as exc:  # with_progress turns every failure into one line
        list_lenses()
        running.show_error(str(exc))
        st.stop()
    try:
        lens.save(folder)
        st.success(
            plain(f"Trained and saved. Pick it in the sidebar: Lens → Tuned lens → 'Trained here: {folder.name}'.")
        )
    except OSError as exc:
        st.warning(
            plain(
                f"Trained, but this server can't keep it ({exc.strerror or exc}: {folder.parent}; see LENS_CACHE_DIR). "
                "Download it instead: unzip it and load the folder with lens.tuned.TunedLens.load."
            ),
            icon=":material/warning:",
        )
        st.download_button(
            "Download the tuned lens (zip)",
            lens.archive(),
            f"{folder.name}.zip",
            "application/zip",
            key="lens_zip",
            on_click="ignore",
        )
else:
    list_lenses()
    st.stop()
list_lenses()
if lens.history:
    st.altair_chart(charts.loss_chart(lens.history), width="content")
