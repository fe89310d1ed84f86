"""Activation patching: which (layer, position) of a clean prompt carries its answer into a corrupted one.

Run the corrupted prompt, copy in the clean prompt's activation at one point of one
layer at one position, and read how much of the clean answer comes back (causal
tracing, Meng et al. 2022). The metric is read at the last position, from the final
residual through the model's own readout, so it is the model's output, not a lens.

The clean activations are captured in one forward pass. The patched runs share the
corrupted tokens, so they go through the model as one batch: batch item ``k`` carries
its own replacement (:class:`~lens.backend.Patch`), and a 12-layer x 13-position sweep
is one forward pass of 156 items instead of 156 passes, in batches sized so that the
activations stay within the engine's chunk budget.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lens.backend import Backend, Patch, Progress, check_backend
from lens.engine import CHUNK_BYTES, release_freed_memory, run_lens
from lens.errors import LensError
from lens.result import LensResult
from lens.tokens import resolve_targets, tokenize_prompt, uses_bos

PATCH_POINTS = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
METRICS = ("logit_diff", "prob")
# Activations a block holds at once per position and run, in widths of d_model and of the MLP:
# the residual stream's copies through the bridge's hook points, norms, q, k, v and attention
# output; the MLP's input and the temporaries of its activation function. Set after GPT-2 small,
# where one 156-run batch at 13 tokens raised peak RSS by 482 MB (~3 MB a run, allocator included).
BLOCK_WIDTHS = 16
MLP_WIDTHS = 6
WORD = re.compile(r"\w+")
SHOWN_TOKENS = 24  # a refusal that shows a tokenization stays one readable line
# |clean - corrupted| below this fraction of the metric is rounding: there is nothing to restore.
SAME_METRIC = 1e-5

# A patched run: the (hook, position) cells that take the clean activation.
PatchedRun = Sequence[tuple[str, int]]


@dataclass(eq=False)
class PatchResult:
    """The metric of every patched run, [layers, positions], and the clean and corrupted runs' own.

    ``effect`` is the metric rescaled so that 0 is the corrupted run and 1 the clean run:
    a cell near 1 restores the clean answer on its own.
    """

    model_name: str
    clean: str
    corrupted: str
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    point: str
    metric: str
    target: str
    target_id: int
    contrast: str | None
    contrast_id: int | None
    positions: np.ndarray
    raw: np.ndarray
    clean_metric: float
    corrupted_metric: float
    prepend_bos: bool
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return int(self.raw.shape[0])

    @property
    def layer_labels(self) -> list[str]:
        return [f"L{i}" for i in range(self.n_layers)]

    @property
    def effect(self) -> np.ndarray:
        """(raw - corrupted) / (clean - corrupted); NaN where the two runs agree, as then nothing can be restored."""
        gap = self.clean_metric - self.corrupted_metric
        if abs(gap) <= SAME_METRIC * max(abs(self.clean_metric), abs(self.corrupted_metric)) + 1e-12:
            return np.full_like(self.raw, np.nan)
        return (self.raw - self.corrupted_metric) / gap

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: layer, position, the clean and corrupted tokens there, raw metric and effect."""
        n_pos = len(self.positions)
        layers = np.repeat(np.arange(self.n_layers), n_pos)
        positions = np.tile(self.positions, self.n_layers)
        return pd.DataFrame(
            {
                "layer": layers.astype(np.int64),
                "position": positions.astype(np.int64),
                "clean_token": [self.clean_tokens[p] for p in positions],
                "corrupted_token": [self.corrupted_tokens[p] for p in positions],
                "raw": self.raw.reshape(-1).astype(np.float64),
                "effect": self.effect.reshape(-1).astype(np.float64),
            }
        )

    def to_json(self) -> str:
        """The sweep and its context; undefined effects are null."""
        effect = self.effect
        payload = {
            "model_name": self.model_name,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "clean_tokens": self.clean_tokens,
            "corrupted_tokens": self.corrupted_tokens,
            "point": self.point,
            "metric": self.metric,
            "target": self.target,
            "target_id": self.target_id,
            "contrast": self.contrast,
            "contrast_id": self.contrast_id,
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "positions": self.positions.tolist(),
            "layers": self.layer_labels,
            "raw": self.raw.tolist(),
            "effect": [[None if math.isnan(v) else v for v in row] for row in effect.tolist()],
            "notes": list(self.notes),
        }
        return json.dumps(payload, ensure_ascii=False)


def point_hook(point: str, layer: int) -> str:
    """The TransformerLens hook name of a patch point at one block."""
    return f"blocks.{layer}.{PATCH_POINTS[point]}"


class Metric:
    """The metric of runs from their final residual at the last position, through the model's readout.

    ``logit_diff`` needs only the target and contrast columns of the unembedding; ``prob``
    needs the whole row's normaliser.
    """

    def __init__(self, model: Backend, kind: str, target_id: int, contrast_id: int | None) -> None:
        self.readout = model.readout
        self.kind = kind
        self.ids = [target_id] if contrast_id is None else [target_id, contrast_id]

    def __call__(self, final_resid: torch.Tensor) -> torch.Tensor:
        """[runs] metric values (float64) of final residuals [runs, d_model]; call it holding the model's lock."""
        readout = self.readout
        normed = readout.normed(final_resid)
        if self.kind == "prob":
            return torch.softmax(readout.logits(normed), dim=-1)[:, self.ids[0]].double()
        columns = torch.tensor(self.ids, device=normed.device)
        logits = normed @ readout.unembed_weight[:, columns]
        if readout.bias is not None:
            logits = logits + readout.bias[columns]
        logits = readout.transform.apply(logits).double()
        return logits[:, 0] - logits[:, 1]


def final_hook(model: Backend) -> str:
    return f"blocks.{model.n_layers - 1}.hook_resid_post"


def batch_runs(model: Backend, n_positions: int) -> int:
    """How many patched runs go through the model at once: their activations stay within CHUNK_BYTES."""
    cfg = getattr(model, "cfg", None)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * model.d_model)
    n_heads = int(getattr(cfg, "n_heads", None) or 1)
    per_run = 4 * n_positions * (BLOCK_WIDTHS * model.d_model + MLP_WIDTHS * d_mlp + n_heads * n_positions)
    return max(1, CHUNK_BYTES // per_run)


def patched_metrics(
    model: Backend,
    corrupted_ids: Sequence[int],
    clean_activations: dict[str, torch.Tensor],
    runs: Sequence[PatchedRun],
    metric: Metric,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The metric of each patched run of the corrupted prompt, in batches of runs, [runs] float64.

    ``clean_activations[hook]`` is the clean run's activation there, [positions, d_model];
    a run may patch any number of cells (every position of a layer, say).
    """
    size = batch_size or batch_runs(model, len(corrupted_ids))
    device = model.readout.device
    hook = final_hook(model)
    values = np.empty(len(runs), dtype=np.float64)
    for start in range(0, len(runs), size):
        batch = runs[start : start + size]
        cells: dict[str, tuple[list[int], list[int]]] = {}
        for item, run in enumerate(batch):
            for name, position in run:
                items, positions = cells.setdefault(name, ([], []))
                items.append(item)
                positions.append(position)
        patches = {
            name: Patch(
                torch.tensor(items, device=device),
                torch.tensor(positions, device=device),
                clean_activations[name][positions],
            )
            for name, (items, positions) in cells.items()
        }
        tokens = torch.tensor([list(corrupted_ids)], dtype=torch.long, device=device).expand(len(batch), -1)
        with model.lock, torch.no_grad():
            final = model.capture_patched(tokens, [hook], patches)[hook][:, -1]
            values[start : start + len(batch)] = metric(final).cpu().numpy()
        if progress is not None:
            done = start + len(batch)
            progress(f"Patched {done} of {len(runs)} runs", done / len(runs))
    return values


def patch(
    model: Backend,
    clean: str,
    corrupted: str,
    *,
    target: str | int,
    contrast: str | int | None = None,
    point: str = "resid_pre",
    metric: str = "logit_diff",
    positions: Sequence[int] | None = None,
    progress: Progress | None = None,
    max_cells: int | None = None,
    prepend_bos: bool | None = None,
    batch_size: int | None = None,
) -> PatchResult:
    """Patch the clean prompt's ``point`` activation into the corrupted run at every (layer, position).

    ``metric`` is read at the last position: ``logit_diff`` is the target's logit minus the
    contrast's (by default the corrupted run's top answer other than the target), ``prob``
    the target's probability. ``positions`` limits the sweep (default: every position);
    ``max_cells`` refuses a larger sweep; ``batch_size`` fixes how many patched runs share
    a forward pass (default: as many as the memory budget allows).
    """
    model = check_backend(model)
    model.capabilities.require("patching", "activation patching", model.name)
    if point not in PATCH_POINTS:
        raise LensError(f"Unknown patch point {point!r}; choose from {', '.join(PATCH_POINTS)}.")
    if metric not in METRICS:
        raise LensError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.")
    for value, what in ((max_cells, "max_cells"), (batch_size, "batch_size")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise LensError(f"{what} must be a whole number of at least 1, not {value!r}.")
    if progress is not None and not callable(progress):
        raise LensError(f"progress must be a function (message, fraction), not {type(progress).__name__}.")
    clean_ids = tokenize_prompt(model, clean, prepend_bos)
    corrupted_ids = tokenize_prompt(model, corrupted, prepend_bos)
    _check_pair(model, clean_ids, corrupted_ids)
    target_id, target_notes = _one_token(model, target, "target")
    contrast_id, notes = (None, []) if contrast in (None, "") else _one_token(model, contrast, "contrast")
    if contrast_id == target_id:
        raise LensError("The contrast token is the target itself; pick another token to compare with.")
    notes = target_notes + notes
    swept = _positions(positions, len(clean_ids))
    n_layers = model.n_layers
    if max_cells is not None and n_layers * len(swept) > max_cells:
        raise LensError(
            f"This sweep is {n_layers} layers x {len(swept)} positions = {n_layers * len(swept)} patched runs; "
            f"the limit here is {max_cells} (LENS_MAX_PATCH_CELLS): pick fewer positions."
        )

    hooks = [point_hook(point, layer) for layer in range(n_layers)]
    final = final_hook(model)
    device = model.readout.device
    report = progress or (lambda message, fraction: None)
    report("Running the clean and corrupted prompts", 0.0)
    with model.lock, torch.no_grad():
        try:
            cache = model.capture(torch.tensor([clean_ids], device=device), [*hooks, final])
        except (ValueError, KeyError) as exc:
            raise LensError(f"Model '{model.name}' cannot provide the {point} points: {exc}") from exc
        missing = [h for h in hooks if h not in cache]
        if missing:
            raise LensError(f"Model '{model.name}' has no {point} point at block {missing[0].split('.')[1]}.")
        clean_activations = {h: cache[h][0] for h in hooks}
        clean_final = cache[final][:, -1]
        corrupted_cache = model.capture(torch.tensor([corrupted_ids], device=device), [*hooks, final])
        corrupted_final = corrupted_cache[final][:, -1]
        # A cell whose clean activation is the corrupted one, bit for bit (every position before
        # the first changed token: the model reads left to right), patches nothing: no run needed.
        same = {h: torch.all(cache[h][0] == corrupted_cache[h][0], dim=-1).tolist() for h in hooks}
        del cache, corrupted_cache
        if metric == "prob" and contrast_id is not None:
            notes.append("The probability metric reads the target alone; the contrast is not used.")
            contrast_id = None
        elif metric == "logit_diff" and contrast_id is None:
            contrast_id, note = _corrupted_answer(model, corrupted_final, target_id)
            notes.append(note)
        measure = Metric(model, metric, target_id, contrast_id)
        clean_metric = float(measure(clean_final)[0])
        corrupted_metric = float(measure(corrupted_final)[0])
    cells = [(hook, p) for hook in hooks for p in swept]
    needed = [i for i, (hook, p) in enumerate(cells) if not same[hook][p]]
    raw = np.full(len(cells), corrupted_metric)
    raw[needed] = patched_metrics(
        model, corrupted_ids, clean_activations, [[cells[i]] for i in needed], measure,
        batch_size=batch_size, progress=report,
    )  # fmt: skip
    if not needed:
        report("Every cell is the corrupted run: nothing to patch", 1.0)
    del clean_activations
    release_freed_memory()
    result = PatchResult(
        model_name=model.name,
        clean=clean,
        corrupted=corrupted,
        clean_tokens=model.token_name.many(clean_ids),
        corrupted_tokens=model.token_name.many(corrupted_ids),
        point=point,
        metric=metric,
        target=model.token_name(target_id),
        target_id=target_id,
        contrast=None if contrast_id is None else model.token_name(contrast_id),
        contrast_id=contrast_id,
        positions=np.asarray(swept, dtype=np.int64),
        raw=raw.reshape(n_layers, len(swept)),
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        prepend_bos=uses_bos(model, prepend_bos),
        notes=notes,
    )
    if np.isnan(result.effect).all():
        result.notes.append(
            f"The clean and corrupted runs give the same {metric} ({clean_metric:.6g}): there is nothing for a "
            "patch to restore, so the effect is undefined."
        )
    return result


def patched_lens(
    model: Backend,
    result: PatchResult,
    layer: int,
    position: int,
    *,
    top_k: int = 10,
    points: Sequence[str] = ("resid_post",),
) -> LensResult:
    """The logit lens of one cell's patched run: the corrupted prompt with the clean ``point`` at (layer, position).

    Its output row at the last position is the run the sweep measured there.
    """
    model = check_backend(model)
    n_positions = len(result.clean_tokens)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.n_layers:
        raise LensError(f"Layer {layer} is out of range: model '{model.name}' has layers 0 to {model.n_layers - 1}.")
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < n_positions:
        raise LensError(f"Position {position} is out of range: the prompts have positions 0 to {n_positions - 1}.")
    hook = point_hook(result.point, int(layer))
    clean_ids = tokenize_prompt(model, result.clean, result.prepend_bos)
    with model.lock, torch.no_grad():
        clean = model.capture(torch.tensor([clean_ids], device=model.readout.device), [hook])[hook][0]
    device = clean.device
    cell = Patch(torch.tensor([0], device=device), torch.tensor([int(position)], device=device), clean[[position]])
    targets = [result.target_id] + ([] if result.contrast_id is None else [result.contrast_id])
    return run_lens(
        model,
        result.corrupted,
        top_k=top_k,
        targets=targets,
        prepend_bos=result.prepend_bos,
        points=points,
        patches={hook: cell},
    )


def words(text: str) -> list[str]:
    """The words of a prompt a person may swap (runs of letters and digits), in order."""
    return [match.group() for match in WORD.finditer(text)]


def replace_word(text: str, index: int, replacement: str) -> str:
    """``text`` with its ``index``-th word (see :func:`words`) replaced: a corrupted prompt from a clean one."""
    matches = list(WORD.finditer(text))
    if not 0 <= index < len(matches):
        raise LensError(f"There is no word {index} in the prompt; it has {len(matches)} words.")
    match = matches[index]
    return text[: match.start()] + replacement + text[match.end() :]


def _check_pair(model: Backend, clean_ids: list[int], corrupted_ids: list[int]) -> None:
    """The two prompts must differ, in the same number of tokens (a position means the same slot in both)."""
    if clean_ids == corrupted_ids:
        raise LensError(
            "The clean and corrupted prompts are the same tokens; change a word in the corrupted one "
            "(e.g. another name or place)."
        )
    if len(clean_ids) != len(corrupted_ids):
        raise LensError(
            f"The prompts must be the same number of tokens to patch position by position: clean is "
            f"{len(clean_ids)} ({_shown(model, clean_ids)}), corrupted is {len(corrupted_ids)} "
            f"({_shown(model, corrupted_ids)})."
        )


def _shown(model: Backend, ids: list[int]) -> str:
    names = model.token_name.many(ids[:SHOWN_TOKENS])
    return "|".join(names) + ("|…" if len(ids) > SHOWN_TOKENS else "")


def _one_token(model: Backend, token: str | int, what: str) -> tuple[int, list[str]]:
    """A target or contrast's token id; several tokens are followed by their first, with a note."""
    if isinstance(token, bool) or not isinstance(token, (str, int, np.integer)):
        raise LensError(f"The {what} must be a token (text or id), not {type(token).__name__}.")
    ids, _, warnings = resolve_targets(model, [token])
    return ids[0], [w.replace("Target", what.capitalize(), 1) for w in warnings]


def _positions(positions: Sequence[int] | None, n_positions: int) -> list[int]:
    if positions is None:
        return list(range(n_positions))
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence | np.ndarray):
        raise LensError(f"positions must be a list of whole numbers, not {type(positions).__name__}.")
    swept = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise LensError(f"A position must be a whole number, not {p!r}.")
        if not -n_positions <= int(p) < n_positions:
            raise LensError(f"Position {p} is out of range: the prompts have positions 0 to {n_positions - 1}.")
        swept.append(int(p) % n_positions)
    if not swept:
        raise LensError("positions is empty: give at least one position to patch.")
    return sorted(set(swept))


def _corrupted_answer(model: Backend, corrupted_final: torch.Tensor, target_id: int) -> tuple[int, str]:
    """The corrupted run's top answer other than the target: the default contrast of ``logit_diff``."""
    logits = model.readout(corrupted_final)[0]
    logits[target_id] = -math.inf
    answer = int(torch.argmax(logits))
    return answer, (
        f"The logit difference is {model.token_name(target_id)!r} minus {model.token_name(answer)!r}, the "
        "corrupted run's top answer (other than the target)."
    )


__all__ = [
    "METRICS",
    "PATCH_POINTS",
    "PatchResult",
    "patch",
    "patched_lens",
    "patched_metrics",
    "replace_word",
    "words",
]
