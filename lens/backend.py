"""The one interface every model backend implements, and the one readout they share.

A backend (TransformerLens, nnsight run here, nnsight on NDIF) does three things for
the lens: it tokenizes, it captures the residual stream at named points, and it owns
the model's *readout*, the path from a residual to logits (final norm, unembedding,
bias, logit scale, soft-cap). Everything above it (the engine, attribution, corpus
statistics, lens training, patching, the app) talks to this interface only, so a fix
to the readout or a guard reaches every backend at once, and what a backend can't do
is a capability flag, answered with one line, not an ``AttributeError``.

Point names are TransformerLens's hook names (``blocks.3.hook_resid_post``) whatever
the backend: they are labels kept as data, and each backend maps them to its model.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from lens.checks import listed
from lens.errors import LensError

if TYPE_CHECKING:
    from lens.tokens import TokenNamer

Progress = Callable[[str, "float | None"], None]
POINTS = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class Row:
    """One residual-stream point the lens reads: a hook name, the label people see, and its block."""

    hook: str
    label: str
    layer: int


def lens_rows(model: Backend, points: Sequence[str] = ("resid_post",)) -> list[Row]:
    """Rows bottom-up. The final block's output is always included, as the last row."""
    points = listed(points, "points", str, f"a residual point or a list of them ({', '.join(POINTS)})")
    unknown = {p for p in points if p not in POINTS}
    if unknown:
        raise LensError(f"Unknown residual point {min(map(str, unknown))!r}; choose from {', '.join(POINTS)}.")
    if "resid_mid" in points:
        model.capabilities.require("after_attention", "after-attention rows (resid_mid)", model.name)
    n = model.n_layers
    rows = []
    if "resid_pre" in points:
        rows.append(Row("blocks.0.hook_resid_pre", "embed", -1))
    for i in range(n):
        if "resid_mid" in points:
            rows.append(Row(f"blocks.{i}.hook_resid_mid", f"L{i} attn", i))
        if "resid_post" in points or i == n - 1:
            rows.append(Row(f"blocks.{i}.hook_resid_post", f"L{i}" if i < n - 1 else f"L{i} (output)", i))
    return rows


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond reading residuals; what it can't is refused in one line.

    ``local_weights``: the weights are in this process, so the readout runs here.
    ``after_attention``: it can read the residual between attention and MLP (resid_mid).
    ``per_head``: it can split every write into the residual stream by component and
    attention head (direct logit attribution, through ``component_writes``).
    ``attention_patterns``: it can read a head's attention weights (``attention_pattern``).
    ``gradients``: it can backpropagate (tuned-lens and Jacobian-lens fitting).
    ``patching``: it can run forward passes with residuals replaced (patch lens).
    ``remote``: runs go to another machine (NDIF), so they can wait in a queue.
    """

    local_weights: bool = True
    after_attention: bool = False
    per_head: bool = False
    attention_patterns: bool = False
    gradients: bool = False
    patching: bool = False
    remote: bool = False

    def require(self, capability: str, what: str, model_name: str) -> None:
        """Raise one LensError line when ``capability`` is missing: ``what`` is what the caller needs it for."""
        if not getattr(self, capability):
            where = "on NDIF" if self.remote else "on this backend"
            raise LensError(
                f"Model '{model_name}' can't provide {what} {where}; load it locally with the "
                "TransformerLens backend (the default) to use it."
            )


@dataclass(frozen=True)
class OutputTransform:
    """What a model does to its unembedding's output: a scale (Cohere, Granite), then a soft-cap (Gemma-2).

    Written once, so the readout here and the one shipped into a remote trace agree.
    """

    scale: float = 1.0
    softcap: float | None = None

    def apply_(self, logits: torch.Tensor) -> torch.Tensor:
        """In place, for the engine's preallocated slabs."""
        if self.scale != 1.0:
            logits.mul_(self.scale)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Out of place, for autograd (training) and for remote traces."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class Readout:
    """The model's own final norm, unembedding, bias and output transform, read in fp32.

    ``norm`` is the model's final-norm module (called as is, so a backend whose norm goes
    through hook points must hold its lock); ``unembed_rows`` is W_U as [vocab, d_model].
    """

    def __init__(
        self,
        norm: Callable[[torch.Tensor], torch.Tensor],
        unembed_rows: torch.Tensor,
        bias: torch.Tensor | None,
        transform: OutputTransform,
    ) -> None:
        self.norm = norm
        self.unembed_rows = unembed_rows.detach().float().contiguous()
        self.bias = None if bias is None or not torch.any(bias) else bias.detach().float()
        self.transform = transform

    @property
    def d_vocab(self) -> int:
        return int(self.unembed_rows.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.unembed_rows.shape[1])

    @property
    def device(self) -> torch.device:
        return self.unembed_rows.device

    @property
    def unembed_weight(self) -> torch.Tensor:
        """W_U as [d_model, vocab] (a view): a token's column is its direction in the residual stream."""
        return self.unembed_rows.t()

    @property
    def softcap(self) -> float | None:
        return self.transform.softcap

    def normed(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final norm, in fp32."""
        return self.norm(resid).float()

    def unembed_columns(
        self, normed: torch.Tensor, out: torch.Tensor | None = None, vocab: slice = slice(None)
    ) -> torch.Tensor:
        """Vocab-major logits [vocab, cells] of normed residuals [cells, d_model], scaled and capped as the model does.

        ``vocab`` picks a slice of the vocabulary, so a slab of logits can be made and read while it is in cache.
        """
        logits = torch.mm(self.unembed_rows[vocab], normed.t(), out=out)
        if self.bias is not None:
            logits.add_(self.bias[vocab, None])
        return self.transform.apply_(logits)

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab] of normed residuals [..., d_model]; differentiable."""
        logits = normed @ self.unembed_weight
        if self.bias is not None:
            logits = logits + self.bias
        return self.transform.apply(logits)

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        """A residual's logits: norm, then unembedding."""
        return self.logits(self.normed(resid))


@dataclass(frozen=True)
class BlockWrites:
    """What one block wrote into the residual stream at one cell, in fp32: the pieces attribution splits.

    ``attention`` is attention's write as it reaches the residual. Head h wrote
    ``heads_input[h] @ head_weights[h]``: the output projection's input split by head
    [heads, d_head] and its weight [heads, d_head, d_model] (None where the backend can't
    read them; the layer is then one part). ``head_bias`` is the projection's bias;
    ``post_norm`` a norm between the projection and the residual (Gemma-2's), which
    attribution freezes as it does the final one. ``mlp`` is the MLP's write, None when the
    row sits between this block's attention and its MLP.
    """

    attention: torch.Tensor
    heads_input: torch.Tensor | None
    head_weights: torch.Tensor | None
    head_bias: torch.Tensor | None
    post_norm: torch.nn.Module | None
    mlp: torch.Tensor | None


@dataclass(frozen=True)
class ComponentWrites:
    """Every write below one (row, position) cell, from one forward pass, and the residual they add up to.

    ``embed`` is the token embedding's write (block 0's input less ``pos_embed``, the
    learned position embedding where the model has one); ``blocks`` run from block 0 to
    the row's block. ``dtype`` is the model's: it sets how closely its writes can add up.
    """

    embed: torch.Tensor
    pos_embed: torch.Tensor | None
    blocks: list[BlockWrites]
    residual: torch.Tensor
    dtype: torch.dtype


@dataclass(frozen=True)
class Patch:
    """Activations written into a run at one hook point: item ``items[k]`` at ``positions[k]`` gets ``values[k]``.

    Each batch item of a patched run carries its own replacement, so one forward pass
    makes many patched runs (activation patching sweeps every (layer, position) this way).
    """

    items: torch.Tensor
    positions: torch.Tensor
    values: torch.Tensor

    def write(self, activations: torch.Tensor, hook: object = None) -> torch.Tensor:
        """A copy of ``activations`` [batch, positions, ...] with this patch's cells replaced (a forward hook)."""
        patched = activations.clone()
        patched[self.items, self.positions] = self.values.to(patched.dtype)
        return patched


class Backend(Protocol):
    """What the lens needs of a loaded model, whichever library runs it.

    ``capture`` runs one forward pass of ``tokens`` [batch, positions] and returns the
    residual at each hook name, [batch, positions, d_model]; the caller holds ``lock``,
    because hooks on a shared model would otherwise read another run's activations.
    ``readout`` exists where ``capabilities.local_weights`` is true;
    ``capture_patched(tokens, hooks, patches)`` (the same capture with each hook's
    :class:`Patch` written in first) where ``capabilities.patching`` is;
    ``component_writes(tokens, row, position)`` (every write below one cell, a
    :class:`ComponentWrites`) where ``capabilities.per_head`` is; and
    ``attention_pattern(tokens, layer, position)`` (every head's attention weights from
    ``position`` in block ``layer``, [heads, position + 1]) where ``capabilities.attention_patterns`` is.
    Each runs one forward pass of ``tokens`` [1, positions] and is called holding ``lock``.
    """

    name: str
    tokenizer: object
    lock: threading.Lock

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def d_vocab(self) -> int: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def default_prepend_bos(self) -> bool: ...

    @property
    def token_name(self) -> TokenNamer: ...

    @property
    def readout(self) -> Readout: ...

    def capture(self, tokens: torch.Tensor, hooks: Sequence[str]) -> dict[str, torch.Tensor]: ...


def prefer_sdpa(hf_model: torch.nn.Module) -> bool:
    """Run a Hugging Face model's attention on SDPA where transformers can (eager otherwise, e.g. Gemma-2).

    Every backend makes this one choice, so they run the same attention kernel and agree
    to fp32 rounding; eager and SDPA differ at near-ties (406 of 15,775 ranks on stories260K).
    """
    if not getattr(hf_model, "_supports_sdpa", False):
        return False
    try:
        hf_model.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001 - transformers refuses models its SDPA path can't run; they stay eager
        return False
    return True


_BACKEND_MEMBERS = ("capabilities", "capture", "readout", "tokenizer", "lock", "n_layers", "token_name")


def check_backend(model: object, what: str = "model") -> Backend:
    """``model`` as a Backend, or one line saying what was passed instead (a name is not a model).

    Looked up statically: reading ``readout`` on a remote model would raise.
    """
    if all(inspect.getattr_static(model, name, None) is not None for name in _BACKEND_MEMBERS):
        return model  # type: ignore[return-value]
    if isinstance(model, str):
        raise LensError(f"{what} must be a loaded model (lens.load_model({model[:60]!r})), not a string.")
    raise LensError(f"{what} must be a loaded model (from lens.load_model), not {type(model).__name__}.")
