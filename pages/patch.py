"""Patch: which layer and position of a clean prompt carry its answer into a corrupted one."""

from __future__ import annotations

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

from types import SimpleNamespace

import streamlit as st

import lens
from lens import (
    PATCH_METRICS,
    PATCH_POINTS,
    charts,
    patch_charts,
    prompt_words,
    provenance,
    replace_word,
    safe_csv,
    typable_token,
)
from ui import cached, exports, models, reproduce, running, state
from ui.escape import code, plain

POINT_NAMES = {
    "resid_pre": "Residual before the block",
    "resid_post": "Residual after the block",
    "attn_out": "Attention output",
    "mlp_out": "MLP output",
}
METRIC_NAMES = {"logit_diff": "Logit difference", "prob": "Target probability"}


def make_corrupted() -> None:
    """The word helper's button: the clean prompt with the chosen word replaced becomes the corrupted one."""
    clean, index = st.session_state.get("patch_clean", ""), st.session_state.get("patch_word")
    replacement = st.session_state.get("patch_replacement", "")
    if index is not None and replacement.strip() and index < len(prompt_words(clean)):
        st.session_state["patch_corrupted"] = replace_word(clean, index, replacement.strip())


st.title("Patch: where does the answer live?")
st.markdown(
    "**Which layer, at which word, carries the information the model needs for its answer.** Give a *clean* "
    "prompt and a *corrupted* one that differs in a word. Each cell runs the corrupted prompt with one piece "
    "of the clean run copied in (one layer, one position) and shows how much of the clean answer comes back: "
    "0 is the corrupted run's answer, 1 the clean run's."
)
with st.expander("How is this computed?"):
    st.markdown(
        "This is *activation patching* (causal tracing). The clean prompt runs once and its activations are "
        "kept; every patched run of the corrupted prompt then goes through the model in batches, one patch per "
        "batch item. The metric is read from the model's real output at the last position: the target's logit "
        "minus the contrast's (by default the corrupted run's top answer), or the target's probability. "
        "Positions before the first changed word can't matter (the model reads left to right): they stay 0."
    )

c = state.choices()
model = running.load_model(c.model_name)
if model is None:
    st.stop()
try:
    model.capabilities.require("patching", "activation patching", model.name)
except lens.LensError as exc:
    running.show_error(str(exc))
    st.stop()

prompts = st.columns(2)
clean = prompts[0].text_area(
    "Clean prompt", value=c.prompt, key="patch_clean", bind="query-params", height=80,
    help="The prompt whose answer you want to locate.",
)  # fmt: skip
corrupted = prompts[1].text_area(
    "Corrupted prompt", key="patch_corrupted", bind="query-params", height=80,
    help="The same prompt with a word changed, in as many tokens; or make it with the helper below.",
)  # fmt: skip
clean_words = prompt_words(clean)
with st.container(horizontal=True, gap="small", vertical_alignment="bottom", key="patch_helper"):
    st.selectbox(
        "Word to replace", range(len(clean_words)), format_func=lambda i: f"{i + 1}: {clean_words[i]}",
        index=len(clean_words) - 1 if clean_words else None, key="patch_word", width=220,
    )  # fmt: skip
    st.text_input("Replace it with", key="patch_replacement", placeholder="e.g. boy", width=180)
    st.button("Make the corrupted prompt", on_click=make_corrupted, key="patch_make")

options = st.columns(4)
typed_target = options[0].text_input(
    "Target token", key="patch_target", bind="query-params",
    help="The answer to follow; empty means the clean run's top answer. '#123' is token id 123.",
)  # fmt: skip
typed_contrast = options[1].text_input(
    "Contrast token (optional)", key="patch_contrast", bind="query-params",
    help="The logit difference is target minus this token; empty means the corrupted run's top answer.",
)  # fmt: skip
with options[2]:
    point = state.linked_choice(
        st.selectbox, "Patch point", list(PATCH_POINTS), key="patch_point", what="patch point",
        name=POINT_NAMES.get, default="resid_pre",
    )  # fmt: skip
with options[3]:
    metric = state.linked_choice(
        st.selectbox, "Metric", list(PATCH_METRICS), key="patch_metric", what="metric", name=METRIC_NAMES.get,
        default="logit_diff",
    )  # fmt: skip

if not corrupted.strip():
    st.info("Type a corrupted prompt, or pick a word above and make one.", icon=":material/edit:")
    st.stop()
try:
    for prompt in (clean, corrupted):
        running.check_length(model, state.query(c, prompt=prompt))
    target = typed_target.strip()
    if not target:
        clean_run = running.run(model, state.query(c, prompt=clean), 1)
        target = typable_token(model, int(clean_run.top_ids[-1, -1, 0]))
    request = cached.PatchQuery(
        c.model_name, clean, corrupted, c.prepend_bos, state.parse_token(target),
        state.parse_token(typed_contrast) if typed_contrast.strip() else None, point, metric,
    )  # fmt: skip
    result = running.with_progress(
        lambda report: cached.patch_result(request, _progress=report), f"Patching {model.name}"
    )
except lens.LensError as exc:
    running.show_error(str(exc))
    st.stop()

what = code(result.target) + (f" − {code(result.contrast)}" if result.contrast else "")
st.markdown(
    f"{METRIC_NAMES[metric]} of {what} at the last position: clean run **{result.clean_metric:+.4g}**, "
    f"corrupted run **{result.corrupted_metric:+.4g}**."
)
for note in result.notes:
    st.caption(f":material/info: {plain(note)}")

labels = patch_charts.column_labels(result)
grid = SimpleNamespace(n_rows=result.n_layers, layers=result.layer_labels, tokens=[x.split(" ", 1)[1] for x in labels])
window = (0, len(result.positions))
row, position = state.selected_cell(grid, request, window)
state.selectable_heatmap(patch_charts.effect_heatmap(result, selected=(row, position)), (row, position))
state.cell_picker(grid, window, (row, position))

effect = result.effect[row, position]
st.subheader(
    f"The corrupted run with {result.layer_labels[row]} {POINT_NAMES[point].lower()} patched at {labels[position]}"
)
st.caption(
    f"Effect {effect:.3f} ({METRIC_NAMES[metric].lower()} {result.raw[row, position]:+.4g}). The lens view of "
    "this patched run: each layer's probability of the target."
)
try:
    with st.spinner("Running the patched prompt…", show_time=True):
        view = cached.patched_lens(request, row, int(result.positions[position]))
except lens.LensError as exc:
    running.show_error(str(exc))
else:
    st.altair_chart(charts.heatmap(view, "target_prob", target=view.target_ids[0], selectable=False), width="content")

lines = [
    f"{models.label(result.model_name)} · {POINT_NAMES[point]} · {METRIC_NAMES[metric]} of {what.replace('`', '')}",
    *(
        f"{name}: {text if len(text) <= 90 else text[:89] + '…'!r}"
        for name, text in (("Clean", clean), ("Corrupted", corrupted))
    ),
]
view = provenance.View(
    "patch",
    tuple(
        provenance.Run(c.model_name, tuple(lens.tokenize_prompt(model, text, c.prepend_bos)), text, label=name)
        for name, text in (("clean", clean), ("corrupted", corrupted))
    ),
    target=request.target,
    contrast=request.contrast,
    point=point,
    metric=metric,
)
exports.buttons(
    "patch",
    safe_csv(result.to_frame()).encode(),
    reproduce.with_provenance(result.to_json(), view),
    exports.titled(patch_charts.effect_heatmap(result, selectable=False), "Activation patching", lines),
    csv_help="One row per (layer, position): the patched run's metric and its effect (0 corrupted, 1 clean).",
    json_help="The sweep with its context: model, prompts, point, metric, target and contrast.",
)
reproduce.offer(view)
