"""Several prompts on one model, one prompt on two models, or two lenses: side by side."""

from ui.entry import run_through_app

run_through_app()  # first, before torch is imported: see ui.entry

import pandas as pd
import streamlit as st

import lens
from lens import charts, js_divergence, provenance, same_vocabulary, token_text
from ui import cached, config, corpus_input, exports, lenses, models, reproduce, running, state
from ui.escape import code, plain

st.title("Compare")
with st.expander("What am I looking at?"):
    st.markdown(
        "Put prompts (or models, or lenses) next to each other. The heatmaps sit side by side with one colour "
        "scale and the same last positions; for two runs of equal depth a third heatmap shows the difference "
        "(B − A). The line chart follows the target token at the last position of each; the last chart "
        "measures, layer by layer, how different the guesses at the last position are, with the "
        "**Jensen–Shannon divergence** (0 bits: identical guesses; 1 bit: no overlap at all)."
    )


def dataset_texts() -> list[str]:
    """The Dataset page's texts: its pasted lines, else the bundled sample (an upload isn't kept)."""
    if st.session_state.get("corpus_source", st.query_params.get("corpus_source")) == "paste":
        pasted = corpus_input.lines(st.session_state.get("corpus_text", st.query_params.get("corpus_text", "")))
        if pasted:
            return pasted
    st.caption("On the bundled sample texts (the Dataset page's pasted texts are used when it has some).")
    return corpus_input.sample_texts()


s = state.choices()
MODES = {
    "prompts": "Several prompts, one model",
    "models": "One prompt, two models",
    "lenses": "Logit, tuned and Jacobian lens",
}
mode = state.linked_choice(
    st.radio, "Compare", list(MODES), key="compare_mode", what="comparison", name=MODES.get, default="prompts",
    horizontal=True,
)  # fmt: skip
follow_own = False
if mode == "prompts":
    text = st.text_area(
        "Prompts, one per line",
        f"{s.prompt}\nThe Colosseum is in the city of",
        key="prompts",
        bind="query-params",
        help="Two to four prompts. The first is the reference for the divergence chart.",
    )
    prompts = [line for line in text.splitlines() if line.strip()][:4]
    runs = {f"#{i + 1} {p if len(p) <= 36 else '…' + p[-35:]}": state.query(s, prompt=p) for i, p in enumerate(prompts)}
elif mode == "models":
    choices = [m for m in models.local_choices(config.server()) if m != s.model_name]
    other = state.linked_choice(
        st.selectbox, "Second model", choices, key="model_b", what="second model", name=models.label
    )
    if not s.target:
        follow = {
            "first": "the first model's answer (as text, in each model's own tokens)",
            "own": "each model's own answer",
        }
        follow_own = (
            state.linked_choice(
                st.radio,
                "With no target typed, follow",
                list(follow),
                key="compare_follow",
                what="answer to follow",
                name=follow.get,
                default="first",
                horizontal=True,
            )
            == "own"
        )
    runs = {
        models.label(s.model_name): state.query(s, lens_source=None),
        models.label(other): state.query(s, model_name=other, lens_source=None),
    }
else:
    found = lenses.first_of_each_kind(s.model_name, s.lens_source)
    if not found:
        st.info("This model has no tuned or Jacobian lens yet: make one on the Lenses page, then come back.")
        st.stop()
    # The Jacobian lens reads block outputs only, so every lens is read there, row for row.
    lens_points = ("resid_post",) if "jacobian" in found else s.points
    runs = {"Logit lens": state.query(s, lens_source=None, points=lens_points)}
    for kind, lens_source in found.items():
        runs[lenses.KIND_LABELS[kind].capitalize()] = state.query(s, lens_source=lens_source, points=lens_points)
if len(runs) < 2:
    st.info("Give at least two prompts, one per line.")
    st.stop()

# Each run's target is resolved by its own model: a typed target as text, or the first
# run's answer (an id for the same model; as text for another vocabulary), or its own answer.
loaded, results = {}, {}
first_answer: tuple[lens.LensModel, int] | None = None
for index, (label, q) in enumerate(runs.items()):
    second_model = mode == "models" and index == 1
    # The demo button sets the second model when the first isn't the demo already; else none.
    demo_key = ("model_b" if s.model_name != "demo" else None) if second_model else "model"
    model = running.load_model(q.model_name, demo_key=demo_key)
    if model is None:
        st.stop()
    try:
        base = running.run(model, q, s.top_k)
        own_answer = int(base.top_ids[-1, -1, 0])
        if s.target:
            target = s.target
        elif first_answer is None or follow_own:
            target = own_answer
        elif first_answer[0] is model:
            target = first_answer[1]
        else:
            target = token_text(*first_answer)
        first_answer = first_answer or (model, own_answer)
        results[label] = running.with_targets(q, [target], s.top_k)
    except lens.LensError as exc:
        running.show_error(f"{label}: {exc}", demo_key=None)
        st.stop()
    loaded[label] = model
running.describe_target(next(iter(loaded.values())), s)
labels = list(results)
if not s.target:
    if follow_own:
        st.caption("No target typed: each model follows its own answer at the last position.")
    else:
        how = " (re-tokenized for the second model)" if mode == "models" else ""
        st.caption(f"No target typed: following {code(results[labels[0]].targets[0])}, the first one's answer{how}.")
for label, result in results.items():
    for warning in result.warnings:
        st.warning(plain(f"{label}: {warning}"))

metric = state.metric_picker("compare_metric")
targets = {label: r.target_ids[0] for label, r in results.items()}
values = [charts.metric_values(r, metric, targets[label]) for label, r in results.items()]
info = charts.METRICS[metric]
top = max(float(v.max()) for v in values)
domain = info.fixed_domain or ((1, max(top, 2)) if info.log else (0, max(top, 1e-9)))
shortest = min(r.n_positions for r in results.values())
per_row = len(results) if len(results) <= 3 else 2
width = (
    st.slider(
        "Positions shown (counted from the end)",
        1,
        shortest,
        min(shortest, {1: 12, 2: 8, 3: 6}[per_row]),
        key="compare_width",
        bind="query-params",
        help="The runs are aligned at their last token. Fewer positions give wider, more readable cells.",
    )
    if shortest > 1
    else 1
)
heatmaps = {
    label: charts.heatmap(
        r,
        metric,
        target=targets[label],
        window=(r.n_positions - width, r.n_positions),
        color_domain=domain,
        selectable=False,
        title=label,
    )
    for label, r in results.items()
}
same_depth = len({tuple(r.layers) for r in results.values()}) == 1
st.caption(
    f"Last {width} positions of each, aligned at the end; one colour scale for all."
    + ("" if same_depth else " The models differ in depth, so each panel keeps its own layers.")
)
with st.container(key="compare_heatmaps"):
    for start in range(0, len(labels), per_row):
        columns = st.columns(per_row, gap="medium")
        for column, label in zip(columns, labels[start : start + per_row], strict=False):
            column.altair_chart(charts.fit_to_container(heatmaps[label], width), width="stretch")

figures = list(heatmaps.values())
pair = (0, 1)
if mode == "lenses" and len(results) > 2:
    pairs = {f"{labels[j]} − {labels[i]}": (i, j) for j in range(1, len(labels)) for i in range(j)}
    pair = pairs[st.selectbox("Difference heatmap", list(pairs), index=len(pairs) - 2, key="compare_pair")]
if (len(results) == 2 or mode == "lenses") and same_depth:
    a, b = results[labels[pair[0]]], results[labels[pair[1]]]
    short = [label.split(" ")[0] if mode == "prompts" else label for label in labels]
    difference = charts.difference_heatmap(
        a, b, metric, width, (short[pair[0]], short[pair[1]]), (targets[labels[pair[0]]], targets[labels[pair[1]]])
    )
    st.altair_chart(charts.fit_to_container(difference, width), width="stretch")
    figures.append(difference)

measure = state.measure_picker("compare_measure", "Target measure")
trajectory = charts.compare_trajectory_chart(results, 0, measure)
lines = [trajectory]
left, right = st.container(key="compare_lines").columns(2, gap="medium")
left.altair_chart(charts.stretched(trajectory), width="stretch")

reference = labels[0]
with right:
    if not same_depth:
        st.info(
            "The models have different numbers of layers, so their layers can't be compared one to one; "
            "the line chart puts them on a relative depth (1 = output)."
        )
    elif not all(same_vocabulary(loaded[reference], loaded[label]) for label in labels[1:]):
        st.info("The models use different vocabularies, so their guesses can't be compared token by token.")
    elif not all(models.has_local_weights(model) for model in loaded.values()):
        st.info("The per-layer divergence needs every row's full distribution, which stays on NDIF.")
    else:
        log_probs = {label: cached.last_log_probs(runs[label]) for label in labels}
        rows = []
        for label in labels[1:]:
            divergence = js_divergence(log_probs[reference], log_probs[label])
            rows += [
                {"pair": label, "layer": layer, "value": float(v)}
                for layer, v in zip(results[reference].layers, divergence, strict=True)
            ]
        divergence_chart = charts.divergence_chart(
            pd.DataFrame(rows),
            results[reference].layers,
            f"Jensen–Shannon divergence from {reference.split(' ')[0] if mode == 'prompts' else reference}",
            "JS divergence (bits)",
        )
        st.altair_chart(charts.stretched(divergence_chart), width="stretch")
        lines.append(divergence_chart)

if mode == "lenses":
    st.subheader("KL to the output, layer by layer")
    KL_TEXTS = {"prompt": "This prompt (mean over positions)", "corpus": "The Dataset page's texts"}
    on = state.linked_choice(
        st.radio, "Measured on", list(KL_TEXTS), key="compare_kl_on", what="KL text", name=KL_TEXTS.get,
        default="prompt", horizontal=True,
    )  # fmt: skip
    if on == "prompt":
        kl = pd.DataFrame(
            {"source": label, "layer": layer, "kl_to_final": float(r.kl_to_final[i].mean()), "n_tokens": r.n_positions}
            for label, r in results.items()
            for i, layer in enumerate(r.layers)
        )
    else:
        texts = dataset_texts()
        frames = []
        for index, label in enumerate(labels):
            try:
                frame = running.corpus_with_progress(
                    s.model_name, texts, lens_points, config.server().max_corpus_tokens, runs[label].lens_source,
                    len(labels) - index - 1,
                )  # fmt: skip
            except lens.LensError as exc:
                running.show_error(f"{label}: {exc}")
                st.stop()
            frames.append(frame.assign(source=label))
        kl = pd.concat(frames, ignore_index=True)
        st.caption(f"{int(kl.n_tokens.iloc[0]):,} predicted tokens from {len(texts)} texts.")
    kl_chart = charts.corpus_chart(kl, "kl_to_final")
    st.altair_chart(charts.stretched(kl_chart), width="stretch")
    lines.append(kl_chart)

view = provenance.View(
    "compare",
    tuple(
        provenance.Run(q.model_name, tuple(results[label].token_ids), q.prompt, q.lens_source, (targets[label],), label)
        for label, q in runs.items()
    ),
    top_k=s.top_k,
    points=tuple(s.points),
    settings={"metric": metric, "positions_from_end": width, "measure": measure},
)
csv, json_text = exports.comparison_files(results)
subtitle = [
    " · ".join(exports.describe(r))
    if label in exports.describe(r)[0]
    else f"{label}: " + " · ".join(exports.describe(r))
    for label, r in results.items()
]
figure = charts.comparison_figure(figures, lines, charts.export_title(f"Compare: {info.title}", subtitle))
exports.buttons("compare", csv, reproduce.with_provenance(json_text, view), figure)
reproduce.offer(view)
