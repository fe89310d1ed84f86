"""The one result type that flows from the engine to the charts and the exports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

_FORMAT_VERSION = 1
# The per-cell statistics every backend computes.
STATISTICS = (
    "top_ids",
    "top_probs",
    "log_normalizer",
    "entropy",
    "kl_to_final",
    "target_probs",
    "target_logits",
    "target_ranks",
)
_ARRAY_FIELDS = (*STATISTICS, "top_tokens", "unembed_input")


@dataclass(eq=False)
class LensResult:
    """Per-cell statistics of the lens: one cell per (row, position).

    Rows are residual-stream points, bottom first; the last row is the model's own
    output. Probabilities and logits are fp32, entropies and KL are in nats, ranks are
    1-based (rank 1 is the row's top prediction). ``unembed_input`` holds the final-norm
    output of every cell when the run kept it, so new targets need no forward pass.
    """

    model_name: str
    prompt: str
    tokens: list[str]
    token_ids: list[int]
    layers: list[str]
    points: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: np.ndarray
    log_normalizer: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    targets: list[str]
    target_ids: list[int]
    target_probs: np.ndarray
    target_logits: np.ndarray
    target_ranks: np.ndarray
    lens_kind: str = "logit"
    prepend_bos: bool = False
    warnings: list[str] = field(default_factory=list)
    unembed_input: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return len(self.layers)

    @property
    def n_positions(self) -> int:
        return len(self.token_ids)

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[-1])

    @property
    def top1_tokens(self) -> np.ndarray:
        return self.top_tokens[..., 0]

    @property
    def top1_probs(self) -> np.ndarray:
        return self.top_probs[..., 0]

    def target_index(self, target: str | int) -> int:
        """Position of a target in ``targets``, by its shown string or its token id."""
        if isinstance(target, (int, np.integer)):
            return self.target_ids.index(int(target))
        return self.targets.index(target)

    def to_frame(self) -> pd.DataFrame:
        """One row per (row, position): the lens's answer there, its top-k and the targets."""
        n_rows, n_pos = self.n_rows, self.n_positions
        row_index, pos_index = np.meshgrid(np.arange(n_rows), np.arange(n_pos), indexing="ij")
        rows, positions = row_index.ravel(), pos_index.ravel()
        columns: dict[str, object] = {
            "row": rows,
            "layer": np.asarray(self.layers, dtype=object)[rows],
            "position": positions,
            "token": np.asarray(self.tokens, dtype=object)[positions],
            "token_id": np.asarray(self.token_ids, dtype=np.int64)[positions],
            "entropy": self.entropy.ravel(),
            "kl_to_final": self.kl_to_final.ravel(),
            "log_normalizer": self.log_normalizer.ravel(),
        }
        for k in range(self.top_k):
            columns[f"top{k + 1}_token"] = self.top_tokens[..., k].ravel()
            columns[f"top{k + 1}_id"] = self.top_ids[..., k].ravel()
            columns[f"top{k + 1}_prob"] = self.top_probs[..., k].ravel()
        for t, name in enumerate(self.targets):
            columns[f"prob[{name}]"] = self.target_probs[t].ravel()
            columns[f"logit[{name}]"] = self.target_logits[t].ravel()
            columns[f"rank[{name}]"] = self.target_ranks[t].ravel()
        return pd.DataFrame(columns)

    def to_json(self, *, include_unembed_input: bool = True) -> str:
        """Lossless JSON: arrays keep their dtype and shape, fp32 values survive exactly."""
        payload: dict[str, object] = {"format_version": _FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "unembed_input" and not include_unembed_input:
                value = None
            if f.name in _ARRAY_FIELDS and value is not None:
                value = {
                    "dtype": value.dtype.str if value.dtype.kind not in "UO" else "str",
                    "shape": list(value.shape),
                    "data": value.ravel().tolist(),
                }
            payload[f.name] = value
        return json.dumps(payload, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LensResult:
        payload = json.loads(text)
        payload.pop("provenance", None)  # what made it (lens.provenance), not part of the result
        version = payload.pop("format_version", None)
        if version != _FORMAT_VERSION:
            raise ValueError(f"Unsupported lens result format version {version!r}.")
        for name in _ARRAY_FIELDS:
            spec = payload.get(name)
            if spec is not None:
                dtype = object if spec["dtype"] == "str" else np.dtype(spec["dtype"])
                payload[name] = np.array(spec["data"], dtype=dtype).reshape(spec["shape"])
        return cls(**payload)

    def equals(self, other: LensResult) -> bool:
        """Field-by-field equality, exact for arrays."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                if mine is None or theirs is None or mine.dtype != theirs.dtype or not np.array_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True
