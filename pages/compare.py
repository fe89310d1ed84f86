"""Several prompts on one model, or one prompt on two models, side by side."""

import pandas as pd
import streamlit as st

from lens import charts
from lens.compare import js_divergence, same_vocabulary
from ui import cached, config, lenses, ndif, page

page.run_through_app()
st.title("Compare")
with st.expander("What am I looking at?"):
    st.markdown(
        "Put prompts (or models) next to each other. The heatmaps use one colour scale so they can be read "
        "together; the line chart follows the target token at the last position of each; the last chart "
        "measures, layer by layer, how different the guesses at the last position are, with the "
        "**Jensen–Shannon divergence** (0 bits: identical guesses; 1 bit: no overlap at all)."
    )

s = page.settings()
mode = st.radio(
    "Compare",
    ["prompts", "models", "lenses"],
    key="compare_mode",
    bind="query-params",
    horizontal=True,
    format_func={
        "prompts": "Several prompts, one model",
        "models": "One prompt, two models",
        "lenses": "Logit lens vs tuned lens",
    }.get,
)
if mode == "prompts":
    text = st.text_area(
        "Prompts, one per line",
        f"{s.prompt}\nThe Colosseum is in the city of",
        key="prompts",
        bind="query-params",
        help="Two to four prompts. The first is the reference for the divergence chart.",
    )
    prompts = [line for line in text.splitlines() if line.strip()][:4]
    runs = {f"#{i + 1} {p if len(p) <= 36 else '…' + p[-35:]}": page.query(s, prompt=p) for i, p in enumerate(prompts)}
elif mode == "models":
    choices = [m for m in config.model_choices(config.limits()) if m != s.model_name]
    other = st.selectbox("Second model", choices, format_func=config.model_label, key="model_b", bind="query-params")
    runs = {
        config.model_label(s.model_name): page.query(s, lens_source=None),
        config.model_label(other): page.query(s, model_name=other, lens_source=None),
    }
else:
    tuned = s.lens_source or next(iter(lenses.available(s.model_name).values()), None)
    if tuned is None:
        st.info("This model has no tuned lens yet: train one on the Tuned lens page, then come back.")
        st.stop()
    runs = {"Logit lens": page.query(s, lens_source=None), "Tuned lens": page.query(s, lens_source=tuned)}
if len(runs) < 2:
    st.info("Give at least two prompts, one per line.")
    st.stop()

models, results = {}, {}
target = s.target or None  # with none typed, follow the first prompt's final answer
for label, q in runs.items():
    model = page.load_model(q.model_name)
    if model is None:
        st.stop()
    try:
        base = page.run(model, q, s.top_k)
    except Exception as exc:  # noqa: BLE001 - every failure is shown as one line
        page.show_error(f"{label}: {exc}")
        st.stop()
    target = target if target is not None else int(base.top_ids[-1, -1, 0])
    models[label] = model
    results[label] = page.with_targets(q, [target], s.top_k)
page.describe_target(next(iter(models.values())), s)
if not s.target:
    st.caption(f"No target typed: following `{next(iter(results.values())).targets[0]}`, the first one's answer.")

metric = page.metric_picker("compare_metric")
values = [charts.metric_values(r, metric, r.target_ids[0]) for r in results.values()]
domain = charts.METRICS[metric].fixed_domain or (
    (1, max(float(v.max()) for v in values)) if charts.METRICS[metric].log else (0, max(float(v.max()) for v in values))
)
width = min(12, min(r.n_positions for r in results.values()))
heatmaps = [
    charts.heatmap(
        r,
        metric,
        target=r.target_ids[0],
        window=(r.n_positions - width, r.n_positions),
        color_domain=domain,
        selectable=False,
        title=label,
    )
    for label, r in results.items()
]
st.caption(f"Last {width} positions of each, aligned at the end; one colour scale for all.")
for chart in heatmaps:
    st.altair_chart(chart, width="content")

measure = page.measure_picker("compare_measure", "Target measure")
trajectory = charts.compare_trajectory_chart(results, 0, measure)
st.altair_chart(trajectory, width="content")

labels = list(results)
reference = labels[0]
if len({r.n_rows for r in results.values()}) > 1:
    st.info("The models have different numbers of layers, so their layers can't be compared one to one.")
elif not all(same_vocabulary(models[reference], models[label]) for label in labels[1:]):
    st.info("The models use different vocabularies, so their guesses can't be compared token by token.")
elif any(ndif.is_remote(q.model_name) for q in runs.values()):
    st.info("The per-layer divergence needs every row's full distribution, which stays on NDIF.")
else:
    log_probs = {label: cached.last_log_probs(runs[label]) for label in labels}
    rows = []
    for label in labels[1:]:
        divergence = js_divergence(log_probs[reference], log_probs[label])
        rows += [
            {"pair": f"{reference} vs {label}", "layer": layer, "value": float(v)}
            for layer, v in zip(results[reference].layers, divergence, strict=True)
        ]
    frame = pd.DataFrame(rows)
    st.altair_chart(
        charts.divergence_chart(
            frame, results[reference].layers, "Jensen–Shannon divergence, last position", "JS divergence (bits)"
        ),
        width="content",
    )
page.export_buttons(results[reference], trajectory, "compare")
