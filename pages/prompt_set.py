"""Prompt sets: per-layer curves averaged over many prompts, per group, with 95% confidence bands."""

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

from pathlib import Path

import pandas as pd
import streamlit as st

import lens
from lens import charts, provenance
from ui import config, exports, lenses, models, reproduce, running, state
from ui.escape import plain

DATA = Path(__file__).resolve().parent.parent / "data"
EXAMPLES = {"demo": "prompt_set_demo.csv", "stories260K": "prompt_set_stories260K.jsonl"}
SOURCES = {"example": "Bundled example", "paste": "Paste CSV or JSONL", "upload": "Upload a file"}
SCALES = {"probability": "Probabilities (target, concepts)", "logit": "Logits (target, difference)", "rank": "Rank"}
FORMAT_HELP = (
    "Columns: prompt, target, and optionally contrast, group, and one concept:NAME column per concept "
    "whose cells list its words separated by | (CSV). JSONL lines are objects with those keys, or "
    '"concepts": {"flower": ["flower", "blossom"]}.'
)

st.title("Prompt sets")
with st.expander("What am I looking at?"):
    st.markdown(
        "One prompt is an anecdote. Here the lens reads every prompt of a set at its **last position** and "
        "averages layer by layer, per group: the **target's probability**, logit and rank, the **logit "
        "difference** to a contrast token, and each **concept's probability** (the summed probability of its "
        "words' first tokens, spaced and capitalised, as in *Do Llamas Work in English?*). Bands are 95% "
        "t-intervals of the mean: narrow bands need many prompts."
    )

s = state.choices()
server = config.server()
source = state.linked_choice(
    st.radio, "Prompts", list(SOURCES), key="set_source", what="prompt source", name=SOURCES.get, default="example",
    horizontal=True,
)  # fmt: skip
kind, text = "csv", ""
if source == "example":
    default = "stories260K" if "stories" in s.model_name.lower() else "demo"
    example = state.linked_choice(
        st.selectbox,
        "Example set",
        list(EXAMPLES),
        key="set_example",
        what="example set",
        name=lambda name: f"For the {name} model ({EXAMPLES[name]})",
        default=default,
    )
    path = DATA / EXAMPLES[example]
    kind, text = path.suffix.lstrip("."), path.read_text()
elif source == "paste":
    text = st.text_area("Prompt set (CSV with a header line, or JSONL)", key="set_text", height=180, help=FORMAT_HELP)
    kind = "jsonl" if text.lstrip().startswith("{") else "csv"
else:
    upload = st.file_uploader("A .csv or .jsonl file", type=["csv", "jsonl"], key="set_file", help=FORMAT_HELP)
    if upload is not None:
        kind = "jsonl" if upload.name.lower().endswith(".jsonl") else "csv"
        try:
            text = upload.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            running.show_error("The file is not UTF-8 text.")
            st.stop()
if not text.strip():
    st.info("Give a prompt set: paste it, upload a CSV or JSONL file, or use a bundled example.")
    st.caption(FORMAT_HELP)
    st.stop()
# Refused before parsing: LENS_MAX_PROMPTS rows of prompts within the prompt limit, plus room for the rest.
most_chars = server.max_prompts * (server.max_prompt_chars + 1024)
if len(text) > most_chars:
    running.show_error(
        f"The prompt set is {len(text):,} characters; this server reads at most {most_chars:,} "
        f"({server.max_prompts:,} prompts, LENS_MAX_PROMPTS)."
    )
    st.stop()

second = state.second_model(s.model_name, "set_model_b")
readings = [(s.model_name, s.lens_source), *([(second, None)] if second else [])]
results: dict[str, lens.PromptSetResult] = {}
read: list[provenance.Run] = []
for model_name, lens_source in readings:
    model = running.load_model(model_name)
    if model is None:
        continue
    running.require_local_weights(model, "Prompt sets")
    label = models.label(model_name) + (f" · {lenses.KIND_LABELS[lenses.kind(lens_source)]}" if lens_source else "")
    try:
        results[label] = running.prompt_set_with_progress(model_name, kind, text, server.max_prompts, lens_source)
        read.append(provenance.Run(model_name, (), "", lens_source, label=label))
    except lens.LensError as exc:  # one line; the other model's reading stays
        running.show_error(f"{label}: {exc}", demo_key=None)
if not results:
    st.stop()

for index, (label, result) in enumerate(results.items()):
    st.caption(
        plain(
            f"{label}: {len(result.prompts)} prompts in {len(result.groups)} groups, read at their last position "
            f"(at most {server.max_prompts:,} per set, LENS_MAX_PROMPTS)."
        )
    )
    if result.errors or result.warnings:
        # A table, not markdown: the lines quote the file's own text.
        st.warning(plain(f"{label}: {len(result.errors)} rows skipped, {len(result.warnings)} notes."))
        lines = result.errors + result.warnings
        notes = pd.DataFrame(
            {
                "row": [line.split(":", 1)[0] for line in lines],
                "kind": ["skipped"] * len(result.errors) + ["note"] * len(result.warnings),
                "problem": [line.split(":", 1)[1].strip() for line in lines],
            }
        )
        st.dataframe(notes, hide_index=True, width="stretch", key=f"set_problems_{index}")

scale = state.linked_choice(
    st.radio, "Show", list(SCALES), key="set_scale", what="scale", name=SCALES.get, default="probability",
    horizontal=True,
)  # fmt: skip
summaries = {label: r.to_frame() for label, r in results.items()}
measures = list(dict.fromkeys(m for r in results.values() for m in r.measures if charts.measure_scale(m) == scale))
measures = [m for m in measures if any((f.measure == m).any() for f in summaries.values())]
if not measures:
    st.info("No prompt in the set gives this measure (a logit difference needs a contrast column).")
    st.stop()
chart = charts.prompt_set_chart(summaries, measures)
with st.container(key="set_chart"):
    st.altair_chart(charts.stretched(chart), width="stretch")
csv, json_text = exports.prompt_set_files(results)
view = provenance.View("prompt_set", tuple(read), texts=(text,), set_format=kind, max_prompts=server.max_prompts)
heading = f"Prompt set: {SCALES[scale].lower()} by layer, 95% bands"
exports.buttons(
    "prompt-set",
    csv,
    reproduce.with_provenance(json_text, view),
    exports.titled(chart, heading, exports.prompt_set_lines(results)),
    csv_help="One row per model, layer, group and measure: n, mean, 95% interval, median, quartiles.",
    json_help="Every model's summary, per-prompt numbers, prompts read and rows skipped.",
)
reproduce.offer(view)

concepts = {c: tokens for r in results.values() for c, tokens in r.concept_tokens.items()}
if concepts:
    st.subheader("Concept tokens")
    st.dataframe(
        pd.DataFrame({"concept": list(concepts), "tokens": [" | ".join(t) for t in concepts.values()]}),
        hide_index=True,
        width="stretch",
    )
st.subheader("Per prompt")
per_prompt = pd.concat([r.per_prompt.assign(model=label) for label, r in results.items()], ignore_index=True)
st.dataframe(per_prompt, hide_index=True, width="stretch", key="set_per_prompt")
st.download_button(
    "Per-prompt table (CSV)",
    lens.safe_csv(per_prompt),
    "prompt-set-per-prompt.csv",
    "text/csv",
    key="set_per_prompt_csv",
    on_click="ignore",
)
