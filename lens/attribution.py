"""Direct logit attribution: which components wrote the lens logit of a token at one cell.

The residual stream at a cell is the sum of every component's write below it (the
embeddings, each layer's attention heads and output bias, each MLP). The lens reads it
through the final norm, which divides by a scale taken from the residual itself. Freezing
that scale at its actual value (the standard direct-logit-attribution convention) makes the
norm linear, so each write can go through it and the unembedding on its own and the parts
add up *exactly* to the lens logit; the norm's bias and the unembedding bias are their own
parts.

One forward pass gives every write at the cell; they are kept, already through the frozen
norm, as ``[parts, d_model]`` directions (:class:`CellWrites`). Another target or contrast
token is then a dot product with other unembedding columns: no forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lens.backend import POINTS, Backend, BlockWrites, ComponentWrites, Row, check_backend, lens_rows
from lens.checks import listed, whole_number
from lens.engine import on_one_intra_op_thread
from lens.errors import LensError
from lens.lenses import LOGIT_LENS, Lens, check_lens
from lens.tokens import prompt_text, tokenize_prompt, tokenize_target

# Parts that belong to no attention head (head -1); attn parts carry their head.
COMPONENTS = ("embed", "pos_embed", "attn", "attn_bias", "mlp", "lens_bias", "norm_bias", "unembed_bias")
PART_KINDS = {"attn": "attention", "attn_bias": "attention", "mlp": "MLP"}
# A residual that its writes don't rebuild to this relative error is not a sum of them
# (fp32 rebuilds to ~1e-7; a half-precision model's own additions round to ~1e-2).
RESIDUAL_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
HALF_TOLERANCE = 5e-2


@dataclass(frozen=True)
class FrozenNorm:
    """A norm with its scale frozen at one residual's value: linear, plus its own bias."""

    gain: torch.Tensor
    bias: torch.Tensor | None
    centre: bool
    scale: torch.Tensor

    def __call__(self, writes: torch.Tensor) -> torch.Tensor:
        if self.centre:
            writes = writes - writes.mean(-1, keepdim=True)
        return writes * self.gain / self.scale


def freeze_norm(module: torch.nn.Module, x: torch.Tensor, what: str) -> FrozenNorm:
    """Linearise a LayerNorm or RMSNorm at residual ``x`` (fp32, [d_model]).

    The gain is read from the Hugging Face module's weights: ``w`` for most models,
    ``1 + w`` for Gemma's RMSNorm. Which one applies is decided by checking against the
    module's own output at ``x``, so a norm this code does not understand is refused
    rather than attributed wrongly.
    """
    hf = getattr(module, "original_component", module)
    kind = type(hf).__name__
    centre = isinstance(hf, torch.nn.LayerNorm) or ("LayerNorm" in kind and "RMS" not in kind)
    if not centre and "RMS" not in kind:
        raise LensError(f"The {what} is a {kind}, which attribution does not know how to linearise.")
    eps = getattr(hf, "eps", None) or getattr(hf, "variance_epsilon", None) or 0.0
    weight = getattr(hf, "weight", None)
    bias = getattr(hf, "bias", None)
    bias = None if bias is None else bias.detach().float()
    centred = x - x.mean() if centre else x
    scale = torch.sqrt(centred.pow(2).mean() + eps)
    with torch.no_grad():
        expected = module(x[None].to(_dtype(hf, x)))[0].float()
    gains = [torch.ones_like(x)] if weight is None else [weight.detach().float(), 1 + weight.detach().float()]
    tolerance = 1e-4 if expected.dtype == torch.float32 and _dtype(hf, x) == torch.float32 else 3e-2
    for gain in gains:
        frozen = FrozenNorm(gain, bias, centre, scale)
        rebuilt = frozen(x) + (0 if bias is None else bias)
        if torch.linalg.vector_norm(rebuilt - expected) <= tolerance * torch.linalg.vector_norm(expected) + 1e-6:
            return frozen
    raise LensError(f"The {what} ({kind}) does not behave like a LayerNorm or RMSNorm; attribution can't linearise it.")


def _dtype(module: torch.nn.Module, fallback: torch.Tensor) -> torch.dtype:
    param = next(module.parameters(), None)
    return fallback.dtype if param is None else param.dtype


@dataclass(eq=False)
class CellWrites:
    """Every component's write at one cell, through the frozen final norm: no target yet.

    ``directions[i]`` is part i's write after the frozen norm (and a tuned lens's linear
    map): the vector the unembedding reads. Its dot product with a token's unembedding
    column (times the model's logit scale, if any) is that part's share of the token's
    logit. The ``unembed_bias`` part has a zero direction; its share is the bias itself.
    """

    model_name: str
    prompt: str
    tokens: list[str]
    token_ids: list[int]
    position: int
    row: str
    components: list[str]
    layers: np.ndarray
    heads: np.ndarray
    directions: np.ndarray
    per_head: bool
    lens_kind: str = "logit"
    softcap: float | None = None
    notes: list[str] = field(default_factory=list)

    def attribute(self, model: Backend, target: str | int, contrast: str | int | None = None) -> Attribution:
        """Split the lens logit of ``target`` (minus ``contrast``'s) into these parts: no forward pass."""
        target_id = single_token(model, target, "target")
        contrast_id = None if contrast is None or contrast == "" else single_token(model, contrast, "contrast")
        if contrast_id == target_id:
            raise LensError("The contrast token is the target itself; pick another token to compare with.")
        ids = [target_id] + ([] if contrast_id is None else [contrast_id])
        per_token = self.shares(model, ids)
        contributions = per_token[:, 0] - (per_token[:, 1] if contrast_id is not None else 0.0)
        totals = per_token.sum(0)
        capped = None
        if self.softcap is not None:
            shown = self.softcap * np.tanh(totals / self.softcap)
            capped = float(shown[0] - (shown[1] if contrast_id is not None else 0.0))
        return Attribution(
            writes=self,
            target=model.token_name(target_id),
            target_id=target_id,
            contrast=None if contrast_id is None else model.token_name(contrast_id),
            contrast_id=contrast_id,
            contributions=contributions,
            softcapped_logit=capped,
        )

    def shares(self, model: Backend, token_ids: Sequence[int]) -> np.ndarray:
        """[parts, tokens]: each part's share of each token's (pre-cap) lens logit, in float64.

        A model's logit scale (Cohere's, Granite's) multiplies every share: it is linear.
        """
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=model.readout.device)
        columns = model.readout.unembed_weight[:, ids].double()
        directions = torch.from_numpy(self.directions).to(columns.device).double()
        shares = directions @ columns
        if model.readout.bias is not None:
            shares[self.components.index("unembed_bias")] = model.readout.bias[ids].double()
        return (shares * model.readout.transform.scale).cpu().numpy()

    def part_labels(self) -> list[str]:
        """Readable names: 'L3 H5', 'L3 attn bias', 'L2 MLP', 'embed'."""
        names = {"attn_bias": "attn bias", "mlp": "MLP", "pos_embed": "position embed", "attn": "attn"}
        labels = []
        for component, layer, head in zip(self.components, self.layers, self.heads, strict=True):
            if layer < 0:
                labels.append(component.replace("_", " "))
            elif component == "attn" and head >= 0:
                labels.append(f"L{layer} H{head}")
            else:
                labels.append(f"L{layer} {names.get(component, component)}")
        return labels

    def layer_labels(self) -> list[str]:
        """Each part's per-layer name: a layer's heads and its output bias all read 'L3 attn'."""
        return [
            f"L{layer} attn" if component in ("attn", "attn_bias") else label
            for component, layer, label in zip(self.components, self.layers, self.part_labels(), strict=True)
        ]

    def grouped(self) -> tuple[list[str], np.ndarray]:
        """Per-layer parts and their summed directions (the unembedding bias, which has none, left out)."""
        labels = self.layer_labels()
        names = list(
            dict.fromkeys(label for label, c in zip(labels, self.components, strict=True) if c != "unembed_bias")
        )
        directions = np.zeros((len(names), self.directions.shape[1]))
        for label, direction in zip(labels, self.directions, strict=True):
            if label in names:
                directions[names.index(label)] += direction
        return names, directions

    def promoted(self, model: Backend, k: int = 5, parts: Sequence[str] | None = None) -> pd.DataFrame:
        """Top and bottom ``k`` tokens of each per-layer part's write, through the unembedding.

        The unembedding bias is left out: it is the same for every part. ``parts`` picks
        labels from :meth:`grouped` or :meth:`part_labels` (a single head); all per-layer parts by default.
        """
        whole_number(k, "k", 1)
        labels, directions = self.grouped()
        wanted = labels if parts is None else listed(parts, "parts", str, "a part label or a list of them")
        own = self.part_labels()
        rows = []
        for name in wanted:
            if name in labels:
                vector = directions[labels.index(name)]
            elif name in own:
                vector = self.directions[own.index(name)]
            else:
                raise LensError(f"There is no part called {name!r} at this cell.")
            rows.append(torch.from_numpy(np.asarray(vector, dtype=np.float32)))
        logits = (torch.stack(rows).to(model.readout.device) @ model.readout.unembed_weight).cpu()
        logits *= model.readout.transform.scale
        kk = min(k, logits.shape[1])
        top, bottom = torch.topk(logits, kk, dim=1), torch.topk(logits, kk, dim=1, largest=False)
        records = []
        for i, name in enumerate(wanted):
            records.append(
                {
                    "part": name,
                    "promoted": _listing(model, top.indices[i], top.values[i]),
                    "suppressed": _listing(model, bottom.indices[i], bottom.values[i]),
                }
            )
        return pd.DataFrame.from_records(records, columns=["part", "promoted", "suppressed"])

    def describe(self) -> dict[str, object]:
        keep = ("model_name", "prompt", "tokens", "token_ids", "position", "row", "per_head", "lens_kind", "softcap")
        return {name: getattr(self, name) for name in keep} | {"notes": list(self.notes)}


def _listing(model: Backend, ids: torch.Tensor, values: torch.Tensor) -> str:
    return ", ".join(f"{model.token_name(int(i))} ({float(v):+.2f})" for i, v in zip(ids, values, strict=True))


@dataclass(eq=False)
class Attribution:
    """The lens logit of a target (or target − contrast) at one cell, split into parts.

    ``logit`` is the sum of ``contributions``: the lens logit before any soft-cap.
    ``softcapped_logit`` is what the lens shows for a model with final soft-capping
    (Gemma-2), None otherwise.
    """

    writes: CellWrites
    target: str
    target_id: int
    contrast: str | None
    contrast_id: int | None
    contributions: np.ndarray
    softcapped_logit: float | None = None

    @property
    def logit(self) -> float:
        return float(self.contributions.sum())

    @property
    def notes(self) -> list[str]:
        return self.writes.notes

    def by_layer(self) -> pd.DataFrame:
        """Per-layer parts (heads and output bias summed): part, kind, layer, contribution; sums to ``logit``."""
        frame = self.to_frame()
        frame["part"] = self.writes.layer_labels()
        frame["kind"] = frame.component.map(PART_KINDS).fillna("other")
        grouped = frame.groupby("part", sort=False).agg(
            kind=("kind", "first"), layer=("layer", "first"), contribution=("contribution", "sum")
        )
        return grouped.reset_index()

    def retarget(self, model: Backend, target: str | int, contrast: str | int | None = None) -> Attribution:
        """The same cell for another target or contrast, from the kept writes: no forward pass."""
        return self.writes.attribute(model, target, contrast)

    def to_frame(self) -> pd.DataFrame:
        """One row per part: component, layer (-1 for none), head (-1 for none), contribution."""
        w = self.writes
        return pd.DataFrame(
            {
                "component": w.components,
                "layer": np.asarray(w.layers, dtype=np.int64),
                "head": np.asarray(w.heads, dtype=np.int64),
                "contribution": self.contributions.astype(np.float64),
            }
        )

    def to_json(self, *, include_unembed_input: bool = False) -> str:
        """The parts and their context; ``include_unembed_input`` adds every part's normed direction."""
        payload: dict[str, object] = self.writes.describe()
        payload |= {
            "target": self.target,
            "target_id": self.target_id,
            "contrast": self.contrast,
            "contrast_id": self.contrast_id,
            "logit": self.logit,
            "softcapped_logit": self.softcapped_logit,
            "parts": self.to_frame().to_dict(orient="records"),
        }
        if include_unembed_input:
            payload["directions"] = self.writes.directions.tolist()
        return json.dumps(payload, ensure_ascii=False)


def token_text(model: Backend, token_id: int) -> str:
    """Text that tokenizes back to exactly this token, or '#id' when none does (a lone byte).

    Decoded after a newline, as :func:`tokenize_target` encodes: SentencePiece drops a
    word's leading space at the start of a text.
    """
    context = model.tokenizer("\n", add_special_tokens=False)["input_ids"]
    prefix = model.tokenizer.decode(context)
    text = model.tokenizer.decode([*context, int(token_id)])[len(prefix) :]
    try:
        return text if tokenize_target(model, text) == [int(token_id)] else f"#{token_id}"
    except LensError:
        return f"#{token_id}"


def single_token(model: Backend, token: str | int, what: str) -> int:
    """The one id of a target or contrast; a text that tokenizes into several is refused."""
    pieces = tokenize_target(model, token)
    if len(pieces) != 1:
        shown = " + ".join(model.token_name(p) for p in pieces)
        raise LensError(f"The {what} {token!r} is {len(pieces)} tokens ({shown}); attribution needs a single token.")
    return pieces[0]


def resolve_row(model: Backend, row: int | str | None) -> Row:
    """None: the output row. An int: the residual after block ``row`` (negative counts from the end).

    A string: a row label as the lens shows it ('embed', 'L3 attn', 'L3', 'L4 (output)') or a hook name.
    """
    points = POINTS if model.capabilities.after_attention else tuple(p for p in POINTS if p != "resid_mid")
    rows = lens_rows(model, points)
    if row is None:
        return rows[-1]
    if isinstance(row, (int, np.integer)) and not isinstance(row, bool):
        n = model.n_layers
        if not -n <= int(row) < n:
            raise LensError(f"Row {row} is out of range: model '{model.name}' has blocks 0 to {n - 1}.")
        layer = int(row) % n
        return next(r for r in rows if r.layer == layer and r.hook.endswith("hook_resid_post"))
    for candidate in rows:
        if row in (candidate.label, candidate.hook):
            return candidate
    if isinstance(row, str) and (row.endswith(" attn") or row.endswith(".hook_resid_mid")):
        model.capabilities.require("after_attention", f"the after-attention row {row!r}", model.name)
    labels = ", ".join(r.label for r in rows[:3])
    raise LensError(f"There is no row {row!r}; rows are named like {labels}, … or by block number.")


def _position(n_positions: int, position: int) -> int:
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise LensError(f"The position must be a whole number, not {position!r}.")
    if not -n_positions <= int(position) < n_positions:
        raise LensError(f"Position {position} is out of range: the prompt has positions 0 to {n_positions - 1}.")
    return int(position) % n_positions


@on_one_intra_op_thread
def cell_writes(
    model: Backend,
    prompt: str | Sequence[int],
    *,
    position: int,
    row: int | str | None = None,
    prepend_bos: bool | None = None,
    lens: Lens | None = None,
) -> CellWrites:
    """One forward pass: every component's write at (row, position), through the frozen final norm.

    The backend reads the writes (:class:`ComponentWrites`); splitting them into parts,
    checking they add up, the lens's map and the frozen norm happen here, for every backend.
    """
    model = check_backend(model)
    model.capabilities.require("per_head", "direct logit attribution (per-head writes)", model.name)
    lens = check_lens(lens)
    token_ids = tokenize_prompt(model, prompt, prepend_bos)
    position = _position(len(token_ids), position)
    target_row = resolve_row(model, row)
    is_output = target_row.hook == f"blocks.{model.n_layers - 1}.hook_resid_post"
    tokens = torch.tensor([token_ids], dtype=torch.long, device=model.readout.device)
    with model.lock, torch.no_grad():
        cell = model.component_writes(tokens, target_row, position)
        parts = _collect_parts(cell)
        notes = list(parts.notes)
        writes = torch.stack(parts.writes)
        residual = cell.residual
        _check_sum(model.name, cell.dtype, writes.sum(0), residual, target_row)
        lens.check_compatible(model)
        translate = _lens_map(lens, target_row, is_output)
        if translate is not None:
            lens_bias = translate(torch.zeros_like(residual))
            writes = torch.cat([translate(writes) - lens_bias, lens_bias[None]])
            residual = translate(residual)
            parts.name_extra("lens_bias")
            notes.append(
                f"{lens.description.capitalize()}: its map is affine, so each write goes through the map's linear "
                "part and its constant is a part of its own (lens_bias)."
            )
        final = freeze_norm(model.readout.norm, residual, "final norm")
        directions = [final(writes)]
        if final.bias is not None and torch.any(final.bias):
            parts.name_extra("norm_bias")
            directions.append(final.bias[None])
        if model.readout.bias is not None:
            parts.name_extra("unembed_bias")  # its share is the bias itself, see CellWrites.shares
            directions.append(torch.zeros_like(residual)[None])
        directions = torch.cat(directions)
        del cell
    cap = model.readout.softcap
    if cap is not None:
        notes.append(
            f"This model soft-caps its logits (cap·tanh(logit/cap), cap {cap:g}); the parts add up to the "
            "logit before the cap, which is not linear."
        )
    return CellWrites(
        model_name=model.name,
        prompt=prompt_text(model, prompt),
        tokens=model.token_name.many(token_ids),
        token_ids=token_ids,
        position=position,
        row=target_row.label,
        components=parts.components,
        layers=np.asarray(parts.layers, dtype=np.int64),
        heads=np.asarray(parts.heads, dtype=np.int64),
        directions=directions.cpu().numpy().astype(np.float32),
        per_head=parts.per_head,
        lens_kind=lens.kind,
        softcap=model.readout.softcap,
        notes=notes,
    )


@dataclass
class _Parts:
    components: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    writes: list[torch.Tensor] = field(default_factory=list)
    per_head: bool = True
    notes: list[str] = field(default_factory=list)

    def add(self, component: str, layer: int, head: int, write: torch.Tensor) -> None:
        """A write into the residual stream."""
        self.name_extra(component, layer, head)
        self.writes.append(write)

    def name_extra(self, component: str, layer: int = -1, head: int = -1) -> None:
        """A part that is not a write into the residual stream (a bias after it)."""
        self.components.append(component)
        self.layers.append(layer)
        self.heads.append(head)


def _collect_parts(cell: ComponentWrites) -> _Parts:
    """The raw (un-normed) writes at the cell, bottom up; they add up to the row's residual."""
    parts = _Parts()
    parts.add("embed", -1, -1, cell.embed)
    if cell.pos_embed is not None:
        parts.add("pos_embed", -1, -1, cell.pos_embed)
    fallback_layers = []
    for i, block in enumerate(cell.blocks):
        heads = _head_writes(block, cell.dtype)
        if heads is None:
            fallback_layers.append(i)
            parts.add("attn", i, -1, block.attention)
        else:
            per_head, bias = heads
            for h, write in enumerate(per_head):
                parts.add("attn", i, h, write)
            if bias is not None:
                parts.add("attn_bias", i, -1, bias)
        if block.mlp is not None:
            parts.add("mlp", i, -1, block.mlp)
    if fallback_layers:
        parts.per_head = False
        shown = ", ".join(str(i) for i in fallback_layers)
        parts.notes.append(
            f"This model does not expose per-head attention writes that add up to its attention output "
            f"(layers {shown}); those layers' attention is one part each (head -1)."
        )
    return parts


def _head_writes(block: BlockWrites, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
    """Per-head writes z_h·W_O[h] and the output bias, or None when they don't rebuild the attention output.

    Gemma-2 normalises the attention output again before adding it (a post-attention
    RMSNorm); with that norm's scale frozen too, the heads still add up exactly.
    """
    z, W_O = block.heads_input, block.head_weights
    if z is None or W_O is None:
        return None
    if z.ndim != 2 or tuple(W_O.shape[:2]) != tuple(z.shape):
        return None
    heads = torch.einsum("hd,hdm->hm", z, W_O.detach().float())
    b_O = block.head_bias
    bias = None if b_O is None or not torch.any(b_O) else b_O.detach().float()
    raw = heads.sum(0) + (0 if bias is None else bias)
    if _close(dtype, raw, block.attention):
        return list(heads), bias
    if block.post_norm is None:
        return None
    try:
        frozen = freeze_norm(block.post_norm, raw, "post-attention norm")
    except LensError:
        return None
    normed_heads = frozen(heads)
    normed_bias = None if bias is None else frozen(bias)
    if frozen.bias is not None and torch.any(frozen.bias):
        normed_bias = frozen.bias if normed_bias is None else normed_bias + frozen.bias
    rebuilt = normed_heads.sum(0) + (0 if normed_bias is None else normed_bias)
    return (list(normed_heads), normed_bias) if _close(dtype, rebuilt, block.attention) else None


def _close(dtype: torch.dtype, rebuilt: torch.Tensor, actual: torch.Tensor) -> bool:
    """Whether ``rebuilt`` is ``actual`` to the rounding of a model computing in ``dtype``."""
    error = torch.linalg.vector_norm(rebuilt - actual)
    return bool(error <= RESIDUAL_TOLERANCE.get(dtype, HALF_TOLERANCE) * torch.linalg.vector_norm(actual) + 1e-6)


def _check_sum(name: str, dtype: torch.dtype, rebuilt: torch.Tensor, residual: torch.Tensor, row: Row) -> None:
    if not _close(dtype, rebuilt, residual):
        raise LensError(
            f"Model '{name}''s residual at row {row.label} is not the sum of the embeddings, attention and MLP "
            "writes below it (its family scales or norms them before adding them), so it can't be attributed "
            "exactly."
        )


def _lens_map(lens: Lens, row: Row, is_output: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The lens's map for this row (affine for every lens here), or None where it is the identity.

    The output row is never transformed, and the logit lens never transforms anything.
    """
    if lens.kind == LOGIT_LENS.kind or is_output:
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lens.transform(row, x)

    return apply


def attribute(
    model: Backend,
    prompt: str | Sequence[int],
    *,
    position: int,
    target: str | int,
    contrast: str | int | None = None,
    row: int | str | None = None,
    prepend_bos: bool | None = None,
    lens: Lens | None = None,
) -> Attribution:
    """Split the lens logit of ``target`` at (``row``, ``position``) into every component's write.

    ``row`` None is the output row. With ``contrast``, the logit difference target −
    contrast is split. Another target or contrast later: :meth:`Attribution.retarget`.
    """
    model = check_backend(model)
    target_id = single_token(model, target, "target")
    if contrast not in (None, ""):
        single_token(model, contrast, "contrast")
    writes = cell_writes(model, prompt, position=position, row=row, prepend_bos=prepend_bos, lens=lens)
    return writes.attribute(model, target_id, contrast)


def head_attention(
    model: Backend,
    prompt: str,
    *,
    layer: int,
    head: int,
    position: int,
    prepend_bos: bool | None = None,
) -> pd.DataFrame:
    """Where one head looked from ``position``: its attention weight on every earlier position.

    Only this path asks for attention patterns, so plain lens runs keep the fast forward pass.
    """
    model = check_backend(model)
    model.capabilities.require("attention_patterns", "attention patterns", model.name)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.n_layers:
        raise LensError(f"Layer {layer} is out of range: model '{model.name}' has layers 0 to {model.n_layers - 1}.")
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise LensError(f"The head must be a whole number, not {head!r}.")
    token_ids = tokenize_prompt(model, prompt, prepend_bos)
    position = _position(len(token_ids), position)
    tokens = torch.tensor([token_ids], dtype=torch.long, device=model.readout.device)
    with model.lock, torch.no_grad():
        pattern = model.attention_pattern(tokens, int(layer), position)
    if not 0 <= head < pattern.shape[0]:
        raise LensError(f"Head {head} is out of range: layer {layer} has heads 0 to {pattern.shape[0] - 1}.")
    weights = pattern[head].float().cpu().numpy()
    names = model.token_name.many(token_ids[: position + 1])
    return pd.DataFrame({"position": np.arange(position + 1), "token": names, "weight": weights.astype(np.float64)})


__all__ = ["Attribution", "CellWrites", "attribute", "cell_writes", "head_attention"]
