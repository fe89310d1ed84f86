"""What a view was made from, as data (for JSON exports) and as a Python snippet that remakes it.

A page describes what it shows as a :class:`View`; :func:`snippet` writes the few lines
of Python, on the installed ``lens`` package, that recompute exactly that data and save
it as the CSV the page offers; :func:`provenance` is the same description for a JSON
export, with the versions of the libraries that computed it. The prompt goes by its
token ids, which no later change of tokenizer or whitespace can alter.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

LIBRARIES = ("transformer_lens", "transformers", "torch", "nnsight")
# How the dashboard names a lens (None is the logit lens): a tuned-lens folder or "hub:<model>",
# a Jacobian-lens file "jlens:<path>" or the published one "jlens-hub:<model>".
HUB_PREFIX = "hub:"
JACOBIAN_PREFIX = "jlens:"
JACOBIAN_HUB_PREFIX = "jlens-hub:"


@dataclass(frozen=True)
class Run:
    """One lens run: a model, a prompt by its token ids (with its text), a lens, targets."""

    model: str
    token_ids: tuple[int, ...]
    text: str
    lens_source: str | None = None  # a tuned lens folder or "hub:<model>"; None: the logit lens
    targets: tuple[str | int, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class View:
    """What one page shows: "lens", "compare", "attribution", "dataset", "patch" or "prompt_set"."""

    page: str
    runs: tuple[Run, ...]
    top_k: int = 10
    points: tuple[str, ...] = ("resid_post",)
    # Attribution: the cell (row label, position), the token explained and its contrast; Patch:
    # the target and contrast, with the point and metric (its runs: the clean and corrupted prompts).
    row: str | None = None
    position: int | None = None
    target: str | int | None = None
    contrast: str | int | None = None
    point: str = ""
    metric: str = ""
    # Dataset: the texts read and the cap on tokens; each run then names a model and lens only.
    # Prompt sets: one text, the set as CSV or JSONL (``set_format``), and the cap on prompts.
    texts: tuple[str, ...] = ()
    max_tokens: int = 0
    set_format: str = ""
    max_prompts: int = 0
    settings: dict[str, object] = field(default_factory=dict)
    stem: str = ""  # the CSV's name without ".csv"; "" for the page's usual one


STEMS = {
    "lens": "logit-lens",
    "compare": "compare",
    "attribution": "attribution",
    "dataset": "lens-dataset",
    "patch": "patch",
    "prompt_set": "prompt-set",
}


def versions() -> dict[str, str | None]:
    """Versions of lens and the libraries under it (None for one that isn't installed)."""
    import lens

    found: dict[str, str | None] = {"lens": lens.__version__}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def revision(model: str) -> str | None:
    """The hub commit a model id was loaded from (its cached snapshot); None for a folder or an uncached id."""
    from lens.sources import DEMO_ALIASES, cached_snapshot

    if model.strip().lower() in DEMO_ALIASES or Path(model).expanduser().exists():
        return None
    try:
        snapshot = cached_snapshot(model)
    except Exception:  # noqa: BLE001 - an id the hub library rejects has no revision to name
        return None
    return Path(snapshot).name if snapshot else None


def provenance(view: View) -> dict[str, object]:
    """What a JSON export carries: versions, models and revisions, token ids, lens and settings."""
    return {
        "versions": versions(),
        "page": view.page,
        "runs": [
            {
                "label": run.label,
                "model": run.model,
                "revision": revision(run.model),
                "token_ids": list(run.token_ids),
                "prompt": run.text,
                "lens": run.lens_source or "logit",
                "targets": list(run.targets),
            }
            for run in view.runs
        ],
        "settings": {
            "top_k": view.top_k,
            "points": list(view.points),
            **({"row": view.row, "position": view.position} if view.page == "attribution" else {}),
            **({"target": view.target, "contrast": view.contrast} if view.page in ("attribution", "patch") else {}),
            **({"point": view.point, "metric": view.metric} if view.page == "patch" else {}),
            **({"max_tokens": view.max_tokens, "n_texts": len(view.texts)} if view.page == "dataset" else {}),
            **({"format": view.set_format, "max_prompts": view.max_prompts} if view.page == "prompt_set" else {}),
            **view.settings,
        },
    }


def snippet(view: View) -> str:
    """Python that recomputes the view's data and writes the CSV the page offers, byte for byte."""
    lines = ["import lens", "from lens.exports import safe_csv"]
    if view.page == "compare":
        lines[-1] = "from lens.exports import comparison_frame, safe_csv"
    if view.page in ("dataset", "prompt_set"):
        lines.insert(0, "import pandas as pd")
    sources = sorted({r.lens_source for r in view.runs if r.lens_source})
    if any(lens_kind(source) == "tuned" for source in sources):
        lines.append("from lens.tuned import TunedLens")
    lines.append("")
    models: dict[str, str] = {}
    for run in view.runs:
        if run.model not in models:
            models[run.model] = "model" if not models else f"model_{len(models) + 1}"
            found = revision(run.model)
            where = f"  # revision {found}" if found else "  # a local folder" if Path(run.model).is_dir() else ""
            lines.append(f"{models[run.model]} = lens.load_model({run.model!r}){where}")
    lenses = {source: f"lens_{i + 1}" if len(sources) > 1 else lens_kind(source) for i, source in enumerate(sources)}
    for source, name in lenses.items():
        lines.append(f"{name} = {_lens_loader(source)}")
    points = list(view.points)

    def lens_arg(run: Run) -> str:
        return f", lens={lenses[run.lens_source]}" if run.lens_source else ""

    if view.page == "dataset":
        lines.append(f"texts = {list(view.texts)!r}")
        lines.append("frames = []")
        for run in view.runs:
            lines.append(
                f"frame = lens.corpus_stats({models[run.model]}, texts, points={points!r}, "
                f"max_tokens={view.max_tokens}{lens_arg(run)})"
            )
            lines.append(f"frames.append(frame.assign(source={run.label!r}))")
        lines.append("table = pd.concat(frames, ignore_index=True)")
    elif view.page == "prompt_set":
        lines.append(f"rows = lens.read_prompt_rows({view.texts[0]!r}, {view.set_format!r})")
        lines.append("frames = []")
        for run in view.runs:
            lines.append(
                f"result = lens.prompt_set({models[run.model]}, rows, max_prompts={view.max_prompts}{lens_arg(run)})"
            )
            lines.append(f"frames.append(result.to_frame().assign(model={run.label!r}))")
        lines.append("table = pd.concat(frames, ignore_index=True)")
        lines.append('table = table[["model", *[c for c in table.columns if c != "model"]]]')
    else:
        for index, run in enumerate(view.runs):
            lines.append(f"# {run.text!r}")
            lines.append(f"prompt_{index + 1} = {list(run.token_ids)!r}")
        if view.page == "patch":
            model = models[view.runs[0].model]
            contrast = f", contrast={view.contrast!r}" if view.contrast not in (None, "") else ""
            lines.append(
                f"result = lens.patch({model}, prompt_1, prompt_2, target={view.target!r}{contrast}, "
                f"point={view.point!r}, metric={view.metric!r})"
            )
            lines.append("table = result.to_frame()")
        elif view.page == "attribution":
            run = view.runs[0]
            contrast = f", contrast={view.contrast!r}" if view.contrast not in (None, "") else ""
            lines.append(
                f"attribution = lens.attribute({models[run.model]}, prompt_1, position={view.position}, "
                f"row={view.row!r}, target={view.target!r}{contrast}{lens_arg(run)})"
            )
            lines.append("table = attribution.to_frame()")
        else:
            # As the page does: the lens once, then its targets from the kept final-norm outputs
            # (lens.retarget), which can round a probability's last bit unlike a run with targets.
            lines.append("")
            lines.append("def run(model, prompt, targets, lens_=None):")
            lines.append(
                f"    result = lens.run_lens(model, prompt, top_k={view.top_k}, points={points!r}, "
                "keep_unembed_input=True, lens=lens_)"
            )
            lines.append("    return lens.retarget(model, result, targets) if targets else result")
            lines.append("")
            calls = [
                f"run({models[run.model]}, prompt_{i + 1}, {list(run.targets)!r}"
                + (f", {lenses[run.lens_source]})" if run.lens_source else ")")
                for i, run in enumerate(view.runs)
            ]
            if view.page == "compare":
                lines.append("results = {")
                lines += [f"    {run.label!r}: {call}," for run, call in zip(view.runs, calls, strict=True)]
                lines.append("}")
                lines.append("table = comparison_frame(results)")
            else:
                lines.append(f"result = {calls[0]}")
                lines.append("table = result.to_frame()")
    if view.settings:
        shown = ", ".join(f"{key}={value!r}" for key, value in view.settings.items())
        lines.append(f"# The page also showed: {shown}")
    name = f"{view.stem or STEMS[view.page]}.csv"
    lines.append(f"with open({name!r}, 'w', encoding='utf-8', newline='') as out:")
    lines.append("    out.write(safe_csv(table))")
    return "\n".join(lines) + "\n"


def lens_kind(source: str | None) -> str:
    """'logit', 'tuned' or 'jacobian': what a dashboard lens source names."""
    if not source:
        return "logit"
    return "jacobian" if source.startswith((JACOBIAN_PREFIX, JACOBIAN_HUB_PREFIX)) else "tuned"


def _lens_loader(source: str) -> str:
    """The expression that loads the lens a dashboard source names."""
    if source.startswith(JACOBIAN_HUB_PREFIX):
        return f"lens.published_jacobian_lens({source.removeprefix(JACOBIAN_HUB_PREFIX)!r})"
    if source.startswith(JACOBIAN_PREFIX):
        return f"lens.JacobianLens.load({source.removeprefix(JACOBIAN_PREFIX)!r})"
    return f"TunedLens.load({source.removeprefix(HUB_PREFIX)!r})"
