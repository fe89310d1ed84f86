"""Train a tuned lens for the current model, or see which ones exist."""

import streamlit as st

from lens import LensError, charts, train_tuned_lens, training_key
from ui import cached, config, corpus_input, lenses, running, state

running.run_through_app()
st.title("Tuned lens")
with st.expander("What is a tuned lens?"):
    st.markdown(
        "The logit lens reads every layer with the model's own output head, but early layers don't yet speak its "
        "language, so their guesses look like noise. A **tuned lens** (Belrose et al., 2023) learns one small "
        "translator per layer that maps it into the output's language; it starts as 'do nothing' and is trained "
        "to make each layer's guess match the model's final answer. Choose it with **Lens → Tuned lens** in the "
        "sidebar once one exists for your model."
    )

s = state.choices()
model = running.load_model(s.model_name)
if model is None:
    st.stop()
running.require_local_weights(model, "Training a tuned lens")
# Filled at the end of the run, so a lens trained on this run is listed (not "no lens yet").
listing = st.empty()


def list_lenses() -> None:
    found = lenses.available(s.model_name)
    if found:
        listing.markdown("**Tuned lenses for this model:** " + ", ".join(f"`{label}`" for label in found))
    else:
        listing.info("No tuned lens for this model yet. Train one below.")


st.caption(
    "Published lenses, fetched from the hub when it can be reached, exist for: "
    + ", ".join(lenses.published_models())
    + "."
)

st.subheader("Train one")
source = st.radio(
    "Training text",
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
        st.success(f"Trained and saved. Pick it in the sidebar: Lens → Tuned lens → 'Trained here: {folder.name}'.")
    except OSError as exc:
        st.warning(
            f"Trained, but this server can't keep it ({exc.strerror or exc}: {folder.parent}; see LENS_CACHE_DIR). "
            "Download it instead: unzip it and load the folder with lens.tuned.TunedLens.load.",
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
