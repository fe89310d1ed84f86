"""Prompt sets: the lens at each prompt's last position, averaged over many prompts, with 95% intervals.

One prompt is an anecdote; the logit-lens figures people cite ("Do Llamas Work in
English?", the tuned-lens evaluation) average a measure over many prompts, layer by
layer, with a confidence band. Here a set of rows (prompt, target, optional contrast,
group and concepts) becomes per-prompt numbers and per-group means with t-intervals.

Prompts are sorted by length and read in batches: one forward pass per batch, right
padding repeating each prompt's last token (causal attention: a position never sees
what follows it), and only the last positions go through the readout, every prompt's
own targets read in the same one-pass statistics kernel as a single run.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lens.backend import Backend, Row, check_backend, lens_rows
from lens.compare import relative_depths
from lens.corpus import BATCH_TOKENS
from lens.engine import capture_normed_batch, cell_statistics, release_freed_memory
from lens.errors import LensError
from lens.intervals import mean_interval
from lens.lenses import Lens, check_lens
from lens.tokens import check_text, resolve_targets, tokenize_prompt, tokenize_target

DEFAULT_MAX_PROMPTS = 1000
DEFAULT_GROUP = "all"
CONCEPT_PREFIX = "concept: "
CONCEPT_COLUMN = "concept:"
BASE_MEASURES = ("target_probability", "target_logit", "target_rank", "logit_difference")
SUMMARY_COLUMNS = [
    "layer",
    "layer_index",
    "depth",
    "group",
    "measure",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "median",
    "q1",
    "q3",
]
# progress(prompts_done, prompts_total, seconds_left or None)
PromptSetProgress = Callable[[int, int, "float | None"], None]


@dataclass(frozen=True)
class PromptRow:
    """One usable row: the ids fed, and the token ids of its target, contrast and concepts."""

    number: int
    prompt: str
    group: str
    token_ids: tuple[int, ...]
    target_id: int
    contrast_id: int | None
    concepts: Mapping[str, tuple[int, ...]]

    def read_ids(self) -> list[int]:
        """The tokens whose logits this prompt needs: target, contrast (or the target again), concepts' tokens."""
        contrast = self.target_id if self.contrast_id is None else self.contrast_id
        return [self.target_id, contrast, *(t for ids in self.concepts.values() for t in ids)]


@dataclass
class PromptSetResult:
    """Per-prompt lens numbers at each layer, and their per-group means with 95% t-intervals.

    ``per_prompt``: one row per prompt and layer. ``prompts``: one row per prompt read,
    with the tokens its target, contrast and concepts used. ``errors``: one line per
    row that could not be read, naming its row number (1 is the first row).
    """

    model_name: str
    lens_kind: str
    layers: list[str]
    per_prompt: pd.DataFrame
    prompts: pd.DataFrame
    concept_tokens: dict[str, list[str]]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.prompts["group"]))

    @property
    def measures(self) -> list[str]:
        return [m for m in self.per_prompt.columns if m in BASE_MEASURES or m.startswith(CONCEPT_PREFIX)]

    def to_json(self) -> str:
        """The summary, the per-prompt numbers, the prompts read and the rows that weren't, as one JSON object."""
        tables = {
            name: json.loads(frame.to_json(orient="records", force_ascii=False))
            for name, frame in (
                ("summary", self.to_frame()),
                ("per_prompt", self.per_prompt),
                ("prompts", self.prompts),
            )
        }
        return json.dumps(
            {
                "model": self.model_name,
                "lens": self.lens_kind,
                "layers": self.layers,
                "concept_tokens": self.concept_tokens,
                "errors": self.errors,
                "warnings": self.warnings,
                **tables,
            },
            ensure_ascii=False,
        )

    def to_frame(self) -> pd.DataFrame:
        """Long form: per layer, group and measure, n, mean, 95% t-interval, median and quartiles.

        A measure a group never has (no contrast given) is left out; n counts the prompts
        that have it.
        """
        records = []
        frame = self.per_prompt
        for (index, group), part in frame.groupby(["layer_index", "group"], sort=False):
            for measure in self.measures:
                values = part[measure].dropna().to_numpy(dtype=np.float64)
                if values.size == 0:
                    continue
                n, mean, low, high = mean_interval(values)
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                records.append(
                    {
                        "layer": self.layers[index],
                        "layer_index": index,
                        "depth": part["depth"].iloc[0],
                        "group": group,
                        "measure": measure,
                        "n": n,
                        "mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "median": median,
                        "q1": q1,
                        "q3": q3,
                    }
                )
        summary = pd.DataFrame.from_records(records, columns=SUMMARY_COLUMNS)
        order = {**{g: i for i, g in enumerate(self.groups)}, **{m: i for i, m in enumerate(self.measures)}}
        return summary.sort_values(
            ["group", "measure", "layer_index"],
            key=lambda c: c if c.name == "layer_index" else c.map(order),
            kind="stable",
        ).reset_index(drop=True)


def prompt_set(
    model: Backend,
    rows: Sequence[Mapping[str, object]],
    *,
    lens: Lens | None = None,
    top_k: int = 5,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    prepend_bos: bool | None = None,
    progress: PromptSetProgress | None = None,
) -> PromptSetResult:
    """Read the lens at the last position of every row's prompt; see :class:`PromptSetResult`.

    Each row is a mapping with ``prompt`` and ``target``, and optionally ``contrast``
    (the measure ``logit_difference`` is target logit minus contrast logit), ``group``
    (default "all") and ``concepts``: concept name -> list of strings, each expanded to
    the first tokens of its spaced and capitalised forms; a concept's probability is
    the summed probability of that token set. A bad row is reported in ``errors`` and
    the rest are still read; more than ``max_prompts`` rows is refused.
    """
    model = check_backend(model)
    lens = check_lens(lens)
    for name, value in (("top_k", top_k), ("max_prompts", max_prompts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise LensError(f"{name} must be a whole number of at least 1, not {value!r}.")
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise LensError(f"rows must be a list of mappings (prompt, target, ...), not {type(rows).__name__}.")
    if len(rows) > max_prompts:
        raise LensError(f"The set has {len(rows)} rows; this server reads at most {max_prompts} (LENS_MAX_PROMPTS).")
    model.capabilities.require("local_weights", "prompt sets (they batch prompts through the readout here)", model.name)
    lens.check_compatible(model)
    readable, errors, warnings = [], [], []
    for number, row in enumerate(rows, 1):
        try:
            prompt_row, row_warnings = read_row(model, row, number, prepend_bos)
        except LensError as exc:
            errors.append(f"Row {number}: {exc}")
            continue
        readable.append(prompt_row)
        warnings += [f"Row {number}: {w}" for w in row_warnings]
    if not readable:
        raise LensError(f"No row could be read ({len(errors)} bad): {errors[0] if errors else 'the set is empty'}")
    lens_points = lens_rows(model)
    numbers = _read_all(model, readable, lens_points, lens, int(top_k), progress)
    return _result(model, readable, lens_points, lens, numbers, errors, warnings)


@dataclass(frozen=True)
class UnreadableRow:
    """A line of an uploaded file that could not be parsed: reported as that row's error."""

    message: str


def read_prompt_rows(text: str, kind: str) -> list[Mapping[str, object] | UnreadableRow]:
    """Rows from CSV or JSONL text (``kind`` "csv" or "jsonl").

    CSV columns are prompt, target, contrast, group, and one ``concept:NAME`` column
    per concept whose cells list its words separated by ``|``. JSONL lines are objects
    with those keys, concepts given either way or as ``"concepts": {name: [words]}``.
    A JSONL line that isn't an object stays in place as an :class:`UnreadableRow`, so
    row N is still the file's Nth non-blank line.
    """
    if kind == "csv":
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
            raise LensError(f"The CSV could not be read: {str(exc).splitlines()[0]}") from exc
        records = frame.to_dict("records")
    elif kind == "jsonl":
        records = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                record = UnreadableRow(f"is not valid JSON ({exc.msg}).")
            records.append(record if isinstance(record, (dict, UnreadableRow)) else UnreadableRow("is not an object."))
    else:
        raise LensError(f"Prompt sets are read from csv or jsonl, not {kind!r}.")
    return [_gather_concepts(r) if isinstance(r, dict) else r for r in records]


def _gather_concepts(record: dict) -> dict:
    """``concept:NAME`` columns ("flower|blossom") folded into the ``concepts`` mapping."""
    concepts = dict(record.get("concepts") or {}) if isinstance(record.get("concepts"), Mapping) else {}
    out = {k: v for k, v in record.items() if not (isinstance(k, str) and k.startswith(CONCEPT_COLUMN))}
    for key, value in record.items():
        if isinstance(key, str) and key.startswith(CONCEPT_COLUMN) and not _absent(value):
            words = value.split("|") if isinstance(value, str) else value
            concepts[key[len(CONCEPT_COLUMN) :].strip()] = [w for w in words if not isinstance(w, str) or w.strip()]
    if concepts:
        out["concepts"] = concepts
    return out


def read_row(model: Backend, row: object, number: int, prepend_bos: bool | None = None) -> tuple[PromptRow, list[str]]:
    """One row checked and tokenized, or one LensError line saying what is wrong with it."""
    if isinstance(row, UnreadableRow):
        raise LensError(row.message)
    if not isinstance(row, Mapping):
        raise LensError(f"is {type(row).__name__}, not a mapping with prompt and target.")
    for column in ("prompt", "target"):
        if _missing(row.get(column)):
            raise LensError(f"has no {column}.")
    token_ids = tokenize_prompt(model, row["prompt"], prepend_bos)
    target_ids, _, warnings = resolve_targets(model, [_text(row["target"], "The target")])
    contrast_id = None
    if not _absent(row.get("contrast")):
        contrast_ids, _, contrast_warnings = resolve_targets(model, [_text(row["contrast"], "The contrast")])
        contrast_id, warnings = contrast_ids[0], warnings + contrast_warnings
    group = row.get("group")
    concepts = row.get("concepts") or {}
    if not isinstance(concepts, Mapping):
        raise LensError(f"concepts must map a concept's name to a list of strings, not {type(concepts).__name__}.")
    return PromptRow(
        number=number,
        prompt=row["prompt"],
        group=DEFAULT_GROUP if _absent(group) else str(group).strip(),
        token_ids=tuple(token_ids),
        target_id=target_ids[0],
        contrast_id=contrast_id,
        concepts={str(name): concept_token_ids(model, words, str(name)) for name, words in concepts.items()},
    ), warnings


def _missing(value: object) -> bool:
    """No value: None, or NaN (pandas' empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _absent(value: object) -> bool:
    """An optional cell left empty: missing, or empty text."""
    return _missing(value) or value == ""


def _text(value: object, what: str) -> str:
    check_text(value, what)
    return value  # type: ignore[return-value]


def concept_variants(word: str) -> list[str]:
    """A word with and without a leading space, as written, capitalised and lower-cased: " flower", "Flower", ..."""
    base = word.strip()
    cases = dict.fromkeys([base, base[:1].upper() + base[1:], base[:1].lower() + base[1:]])
    return [space + case for case in cases for space in (" ", "")]


def concept_token_ids(model: Backend, words: object, name: str) -> tuple[int, ...]:
    """The deduplicated first tokens of every variant of a concept's words."""
    if isinstance(words, str):
        words = [words]
    if not isinstance(words, Sequence) or not words:
        raise LensError(f"concept {name!r} needs a list of strings.")
    ids: dict[int, None] = {}
    for word in words:
        check_text(word, f"A word of concept {name!r}")
        if not word.strip():
            raise LensError(f"concept {name!r} has an empty word.")
        for variant in concept_variants(word):
            pieces = tokenize_target(model, variant)
            if pieces:
                ids[pieces[0]] = None
    if not ids:
        raise LensError(f"concept {name!r} has no token.")
    return tuple(ids)


def batches(prompts: Sequence[PromptRow], batch_tokens: int = BATCH_TOKENS) -> list[list[PromptRow]]:
    """Prompts sorted by length, cut into batches whose padded tokens stay within ``batch_tokens``."""
    out: list[list[PromptRow]] = []
    for prompt in sorted(prompts, key=lambda p: len(p.token_ids)):
        # Sorted, so the newest prompt is the longest: the batch pads to its length.
        if out and len(prompt.token_ids) * (len(out[-1]) + 1) <= batch_tokens:
            out[-1].append(prompt)
        else:
            out.append([prompt])
    return out


def _read_all(
    model: Backend,
    prompts: Sequence[PromptRow],
    lens_points: Sequence[Row],
    lens: Lens,
    top_k: int,
    progress: PromptSetProgress | None,
) -> dict[int, dict[str, np.ndarray]]:
    """Per prompt number: the cell statistics of its last position at every row, read batch by batch."""
    numbers: dict[int, dict[str, np.ndarray]] = {}
    started = time.monotonic()
    for batch in batches(prompts):
        longest = max(len(p.token_ids) for p in batch)
        padded = [list(p.token_ids) + [p.token_ids[-1]] * (longest - len(p.token_ids)) for p in batch]
        normed = capture_normed_batch(model, padded, lens_points, lens)
        last = torch.tensor([len(p.token_ids) - 1 for p in batch], device=normed.device)
        # [rows, prompts, d]: each prompt's last position stands where a single run has its positions.
        cells = normed[:, torch.arange(len(batch), device=normed.device), last]
        del normed
        wanted = [p.read_ids() for p in batch]
        width = max(len(w) for w in wanted)
        target_ids = np.array([w + [w[0]] * (width - len(w)) for w in wanted]).T  # [targets, prompts]
        stats = cell_statistics(model.readout, cells, top_k, target_ids)
        for column, prompt in enumerate(batch):
            numbers[prompt.number] = {name: _column(array, name, column) for name, array in stats.items()}
        if progress is not None:
            done = len(numbers)
            elapsed = time.monotonic() - started
            progress(done, len(prompts), elapsed * (len(prompts) - done) / done)
    release_freed_memory()
    return numbers


def _column(array: np.ndarray, name: str, position: int) -> np.ndarray:
    """One prompt's slice of a statistic: positions are the second axis, or the third for per-target ones."""
    return array[:, :, position] if name.startswith("target_") else array[:, position]


def _result(
    model: Backend,
    prompts: Sequence[PromptRow],
    lens_points: Sequence[Row],
    lens: Lens,
    numbers: Mapping[int, Mapping[str, np.ndarray]],
    errors: list[str],
    warnings: list[str],
) -> PromptSetResult:
    layers = [r.label for r in lens_points]
    depths = relative_depths(layers)
    name = model.token_name
    concept_names = list(dict.fromkeys(c for p in prompts for c in p.concepts))
    per_prompt, described = [], []
    concept_tokens: dict[str, dict[str, None]] = {c: {} for c in concept_names}
    for prompt in prompts:
        stats = numbers[prompt.number]
        probs, logits, ranks = stats["target_probs"], stats["target_logits"], stats["target_ranks"]
        slots, concept_probs = 2, {}
        for concept, ids in prompt.concepts.items():
            concept_probs[concept] = probs[slots : slots + len(ids)].astype(np.float64).sum(0)
            slots += len(ids)
            concept_tokens[concept].update(dict.fromkeys(name.many(ids)))
        top = stats["top_ids"]
        for index, layer in enumerate(layers):
            record = {
                "row": prompt.number,
                "group": prompt.group,
                "prompt": prompt.prompt,
                "layer": layer,
                "layer_index": index,
                "depth": depths[index],
                "target_probability": float(probs[0, index]),
                "target_logit": float(logits[0, index]),
                "target_rank": int(ranks[0, index]),
                "logit_difference": math.nan
                if prompt.contrast_id is None
                else float(logits[0, index] - logits[1, index]),
            }
            record.update({CONCEPT_PREFIX + c: math.nan for c in concept_names})
            record.update({CONCEPT_PREFIX + c: float(p[index]) for c, p in concept_probs.items()})
            record["top_tokens"] = " | ".join(name.many(top[index].tolist()))
            per_prompt.append(record)
        described.append(
            {
                "row": prompt.number,
                "group": prompt.group,
                "prompt": prompt.prompt,
                "n_tokens": len(prompt.token_ids),
                "target": name(prompt.target_id),
                "contrast": None if prompt.contrast_id is None else name(prompt.contrast_id),
                **{CONCEPT_PREFIX + c: " | ".join(name.many(ids)) for c, ids in prompt.concepts.items()},
            }
        )
    return PromptSetResult(
        model_name=model.name,
        lens_kind=lens.kind,
        layers=layers,
        per_prompt=pd.DataFrame.from_records(per_prompt),
        prompts=pd.DataFrame.from_records(described),
        concept_tokens={c: list(tokens) for c, tokens in concept_tokens.items()},
        errors=errors,
        warnings=warnings,
    )
