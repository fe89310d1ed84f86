"""Downloads that always arrive, holding what the screen shows.

Streamlit's deferred downloads (a callable as ``data``) are dropped when the click that
asked for one reruns the page: a second click 0.3 s after the first found its file gone.
So every file here is made when the page is drawn, and the buttons don't rerun the page
(``on_click="ignore"``): the files of one drawing stay valid, however fast the clicks.
Tables are cheap; images take vl_convert most of a second each, so they are made once
on request ("Prepare PNG and SVG") and kept per session until the chart changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence

import altair as alt
import pandas as pd
import streamlit as st

import lens
from lens import charts, safe_csv
from lens.exports import comparison_frame
from lens.provenance import Run, View
from ui import models, reproduce, running, state


def describe(result: lens.LensResult) -> list[str]:
    """Lines naming what a result is: model and lens, prompt, targets."""
    return describe_run(result.model_name, result.lens_kind, result.prompt, result.targets)


def describe_run(model_name: str, lens_kind: str, prompt: str, targets: Sequence[str]) -> list[str]:
    """Lines naming a run: model and lens, prompt (cut at 90 characters), targets."""
    prompt = prompt if len(prompt) <= 90 else prompt[:89] + "…"
    lines = [f"{models.label(model_name)} · {lens_kind} lens", f"Prompt: {prompt!r}"]
    if targets:
        lines.append(("Target: " if len(targets) == 1 else "Tokens: ") + ", ".join(targets))
    return lines


def titled(chart: alt.TopLevelMixin, heading: str, lines: Sequence[str]) -> alt.TopLevelMixin:
    """The chart as an image carries it: a title naming model, prompt and lens; labels kept in their cells."""
    if isinstance(chart, alt.LayerChart) and isinstance(chart.data, pd.DataFrame) and "column" in chart.data:
        chart = charts.labels_within_cells(chart)
    return chart.properties(title=charts.export_title(heading, lines))


def result_files(result: lens.LensResult) -> tuple[bytes, str]:
    """CSV and JSON of one result."""
    return safe_csv(result.to_frame()).encode(), result.to_json(include_unembed_input=False)


def comparison_files(results: Mapping[str, lens.LensResult]) -> tuple[bytes, str]:
    """CSV and JSON of every compared run: a ``run`` column (lens.exports.comparison_frame), and a JSON list of runs."""
    runs = [
        {"run": label, "result": json.loads(result.to_json(include_unembed_input=False))}
        for label, result in results.items()
    ]
    return safe_csv(comparison_frame(results)).encode(), json.dumps({"runs": runs}, ensure_ascii=False)


def prompt_set_lines(results: Mapping[str, lens.PromptSetResult]) -> list[str]:
    """Lines naming a prompt-set figure: each model and lens, with how many prompts and groups it read."""
    return [
        f"{label} · {r.lens_kind} lens · {len(r.prompts)} prompts in {len(r.groups)} groups"
        + (f" ({len(r.errors)} rows skipped)" if r.errors else "")
        for label, r in results.items()
    ]


def prompt_set_files(results: Mapping[str, lens.PromptSetResult]) -> tuple[bytes, str]:
    """CSV of every summary (a ``model`` column first) and JSON of every full result."""
    frames = [r.to_frame().assign(model=label) for label, r in results.items()]
    table = pd.concat(frames, ignore_index=True)
    table = table[["model", *[c for c in table.columns if c != "model"]]]
    runs = [{"model": label, "result": json.loads(r.to_json())} for label, r in results.items()]
    return safe_csv(table).encode(), json.dumps({"runs": runs}, ensure_ascii=False)


def _render(spec: str, digest: str, key: str) -> None:
    """Both images, with a progress bar: each takes vl_convert a few seconds on a large chart."""
    import vl_convert

    bar = st.progress(0.0, text="Drawing the PNG (1 of 2)…")
    png = vl_convert.vegalite_to_png(spec, scale=2)
    bar.progress(0.5, text="Drawing the SVG (2 of 2)…")
    svg = vl_convert.vegalite_to_svg(spec)
    bar.empty()
    st.session_state[key] = (digest, png, svg)


def buttons(
    stem: str,
    csv: bytes,
    json_text: str,
    chart: alt.TopLevelMixin,
    csv_help: str = "One row per (layer, position): top-k, entropy, KL, targets.",
    json_help: str = "The full result; lens.LensResult.from_json reads it back.",
) -> None:
    """CSV, JSON, and the chart as PNG and SVG once prepared; none of them reruns the page."""
    if chart.config is alt.Undefined:
        # vl_convert's default font lacks "␣" and switches whole labels to a serif fallback.
        chart = chart.configure(font="DejaVu Sans, Liberation Sans, sans-serif")
    spec = json.dumps(chart.to_dict(validate=False))  # validation would double the time a redraw takes
    digest = hashlib.sha256(spec.encode()).hexdigest()
    key = f"_images_{stem}"
    images = st.session_state.get(key)
    with st.container(horizontal=True, gap="small", key=f"{stem}_downloads"):
        st.download_button(
            "CSV",
            csv,
            f"{stem}.csv",
            "text/csv",
            key=f"{stem}_csv",
            on_click="ignore",
            help=csv_help,
        )
        st.download_button(
            "JSON",
            json_text,
            f"{stem}.json",
            "application/json",
            key=f"{stem}_json",
            on_click="ignore",
            help=json_help,
        )
        # One slot: the button, then its progress bar while the images are drawn (a click's
        # rerun draws them here, not in a callback, which could show nothing), then the downloads.
        slot = st.empty()
        if (images is None or images[0] != digest) and slot.button(
            "Prepare PNG and SVG",
            key=f"{stem}_prepare",
            help="Drawing the images takes a few seconds, with progress shown; then they download at once.",
        ):
            with slot.container():
                _render(spec, digest, key)
            images = st.session_state[key]
        if images is not None and images[0] == digest:
            with slot.container(horizontal=True, gap="small"):
                st.download_button("PNG", images[1], f"{stem}.png", "image/png", key=f"{stem}_png", on_click="ignore")
                st.download_button(
                    "SVG", images[2], f"{stem}.svg", "image/svg+xml", key=f"{stem}_svg", on_click="ignore"
                )


def export_buttons(
    result: lens.LensResult,
    chart: alt.TopLevelMixin,
    stem: str,
    heading: str | None = None,
    shown: dict[str, object] | None = None,
) -> None:
    """Downloads of the result (CSV, JSON) and the chart (PNG, SVG) as the screen shows them, and
    the Python that remakes them. ``shown`` names display settings (metric, window) for both.

    A target typed in the sidebar goes into the files even when the chart isn't coloured by it.
    """
    c = state.choices()
    if c.target and not result.targets and result.prompt == c.prompt:
        with contextlib.suppress(lens.LensError):  # the sidebar already shows why the target can't be used
            result = running.with_targets(state.query(c), [c.target], c.top_k)
    csv, json_text = result_files(result)
    heading = heading or f"{result.lens_kind.capitalize()} lens"
    run = Run(c.model_name, tuple(result.token_ids), result.prompt, c.lens_source, tuple(result.target_ids))
    view = View("lens", (run,), top_k=c.top_k, points=tuple(c.points), settings=shown or {}, stem=stem)
    buttons(stem, csv, reproduce.with_provenance(json_text, view), titled(chart, heading, describe(result)))
    reproduce.offer(view)
