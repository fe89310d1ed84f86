"""Corpus statistics: how well each layer predicts, averaged over many texts."""

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

import pandas as pd
import streamlit as st

import lens
from lens import charts, provenance, safe_csv
from ui import config, corpus_input, lenses, models, reproduce, running, state
from ui.escape import plain

URL_TEXT_LIMIT = 2000  # characters of pasted text kept in the page's link

st.title("Dataset statistics")
with st.expander("What am I looking at?"):
    st.markdown(
        "One prompt is an anecdote. Here the lens reads many texts and averages, layer by layer: how surprised "
        "each layer is by the real next token (**cross-entropy**, lower is better; **bits per byte** is the same "
        "measured per character byte), how often its favourite is right (**top-1 accuracy**), how often it "
        "already agrees with the output (**top-1 agreement**), and how far it is from the output (**KL**)."
    )

s = state.choices()
SOURCES = {"sample": "Bundled sample", "paste": "Paste texts", "upload": "Upload a file"}
source = state.linked_choice(
    st.radio, "Texts", list(SOURCES), key="corpus_source", what="texts", name=SOURCES.get, default="sample",
    horizontal=True,
)  # fmt: skip
try:
    if source == "sample":
        texts = corpus_input.sample_texts()
        st.caption(f"{len(texts)} public-domain lines: King James Bible, Shakespeare, Jane Austen.")
    elif source == "paste":
        # Pasted text lives in the URL up to a bound, so a link reproduces the view.
        if "corpus_text" not in st.session_state:
            st.session_state["corpus_text"] = st.query_params.get("corpus_text", "")
        pasted = st.text_area("Texts, one per line", key="corpus_text", height=160)
        st.query_params["corpus_text"] = pasted[:URL_TEXT_LIMIT]
        if len(pasted) > URL_TEXT_LIMIT:
            st.caption(f"The page's link holds only the first {URL_TEXT_LIMIT:,} characters of the pasted text.")
        texts = corpus_input.lines(pasted)
    else:
        upload = st.file_uploader(
            "A .txt (one text per line), .csv or .jsonl file", type=["txt", "csv", "jsonl"], key="corpus_file"
        )
        texts = []
        if upload is not None:
            data, column = upload.getvalue(), None
            if not upload.name.lower().endswith(".txt"):
                columns = corpus_input.table_columns(upload.name, data)
                column = st.selectbox(
                    "Column holding the text",
                    columns,
                    key="corpus_column",
                    index=columns.index("text") if "text" in columns else None,
                )
            texts = corpus_input.texts_from_file(upload.name, data, column)
except Exception as exc:  # noqa: BLE001 - bad files are shown as one line
    running.show_error(running.one_line(exc, "Reading the texts"))
    st.stop()
if not texts:
    st.info("Give some texts to read: paste them, upload a file, or use the bundled sample.")
    st.stop()

second = state.second_model(s.model_name, "corpus_model_b")
limit = config.server().max_corpus_tokens

# The sidebar's model with the logit lens, with the tuned or Jacobian lens if one is picked, and a second model.
readings = [
    (s.model_name, None),
    *([(s.model_name, s.lens_source)] if s.lens_source else []),
    *([(second, None)] if second else []),
]
frames, read = [], []
for index, (model_name, lens_source) in enumerate(readings):
    if running.load_model(model_name) is None:
        continue
    label = models.label(model_name) + (f" · {lenses.KIND_LABELS[lenses.kind(lens_source)]}" if lens_source else "")
    try:
        frame = running.corpus_with_progress(model_name, texts, s.points, limit, lens_source, len(readings) - index - 1)
    except lens.LensError as exc:  # shown as one line; the rest of the page stays
        running.show_error(f"{label}: {exc}")
        continue
    if frame.attrs.get("capped"):
        st.warning(
            plain(f"{label}: only the first {limit:,} tokens were read (this server's cap, LENS_MAX_CORPUS_TOKENS).")
        )
    frames.append(frame.assign(source=label))
    read.append(provenance.Run(model_name, (), "", lens_source, label=label))
if not frames:
    st.stop()

table = pd.concat(frames, ignore_index=True)
st.caption(
    f"{int(frames[0].n_tokens.iloc[0]):,} predicted tokens from {frames[0].attrs.get('n_texts', len(texts))} texts."
)
metrics = list(charts.CORPUS_METRICS)
with st.container(key="corpus_charts"):
    for left, right in zip(metrics[0::2], metrics[1::2], strict=True):
        a, b = st.columns(2, gap="medium")
        a.altair_chart(charts.stretched(charts.corpus_chart(table, left)), width="stretch")
        b.altair_chart(charts.stretched(charts.corpus_chart(table, right)), width="stretch")
st.dataframe(table.set_index(["source", "layer"]), width="stretch")
st.download_button(
    "Download the table (CSV)",
    safe_csv(table),
    "lens-dataset.csv",
    "text/csv",
    key="corpus_csv",
    on_click="ignore",
)
reproduce.offer(provenance.View("dataset", tuple(read), points=tuple(s.points), texts=tuple(texts), max_tokens=limit))
