"""The lens through nnsight: the same statistics, computed where the model runs.

For a model too big for this machine (Llama-3.1-70B, 405B), NDIF runs it and nnsight
ships our traced code there. Full logits of a 70B model are [80 layers x positions x
128k] floats, gigabytes per prompt over the network, so the final norm, the
unembedding and the reduction of every cell to the numbers people look at (top-k,
log-normaliser, entropy, KL to the final row, targets' probability, logit and rank)
all run inside the trace; only those small arrays are saved and come back.

Run here (``remote=False``), the backend captures residuals like the TransformerLens
one and the shared engine and readout do the rest; for attribution it reads one cell's
writes (each head's slice of the attention output projection's input, the MLP outputs)
in one trace, and lens.attribution splits them as it does TransformerLens's. On NDIF a
run has a time limit, holds no lock here, and every failure (no key, a rejected key,
NDIF unreachable or down, a model it doesn't host, a queue that doesn't move) becomes
one LensError line, told apart by exception type and HTTP status; queue and run status
go to ``progress``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from lens.backend import (
    BlockWrites,
    Capabilities,
    ComponentWrites,
    OutputTransform,
    Progress,
    Readout,
    Row,
    prefer_sdpa,
)
from lens.errors import LensError
from lens.result import STATISTICS
from lens.sources import check_tokenizer, exception_chain, first_line, load_failure, status_code
from lens.tokens import TokenNamer, tokenizer_prepends_bos

NDIF_KEY_URL = "https://login.ndif.us"
TASK = "text-generation"
BLOCK_LOGITS = 2**23  # logits made at once in the trace: 64 MB in float64, 65 positions of a 128k vocabulary
DEFAULT_TIMEOUT = 300.0  # seconds a remote run may take, queue included (the app's LENS_NDIF_TIMEOUT)
PROGRESS_SECONDS = 1.0  # how often the waiting thread reports and checks the time
STATUS_SECONDS = 5.0  # NDIF's /status, asked after it refused a job
# The arrays a run saves out of the trace, and nothing else (their size: payload_bytes).
SAVED_ARRAYS = STATISTICS
# Attention's output projection, by family (Llama's o_proj, GPT-2's c_proj, GPT-NeoX's dense, GPT-J's out_proj).
PROJECTION_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
# A learned position embedding beside the token embedding (GPT-2's wpe): its write is a part of its own.
POSITION_NAMES = ("wpe", "embed_positions", "position_embeddings")


@dataclass(eq=False)
class NnsightModel:
    """An nnsight ``TransformersModel`` and what the lens needs to tokenize and label around it.

    With ``remote=True`` the wrapper holds only the model's structure on the meta
    device (config and tokenizer, no weights) and every run goes to NDIF. The API key
    is kept out of ``repr`` so it is never printed with the handle.
    """

    wrapper: object
    tokenizer: object
    name: str
    remote: bool
    layers_path: str
    norm_path: str
    head_path: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self):
        return self.wrapper._module.config

    @property
    def n_layers(self) -> int:
        return len(_envoy(self.wrapper, self.layers_path))

    @property
    def n_ctx(self) -> int:
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, name, None)
            if value:
                return int(value)
        return 2048

    @property
    def d_vocab(self) -> int:
        return int(self.wrapper._module.get_output_embeddings().weight.shape[0])

    @property
    def default_prepend_bos(self) -> bool:
        """The tokenizer's own default, as for the TransformerLens backend."""
        return tokenizer_prepends_bos(self.tokenizer)

    @property
    def d_model(self) -> int:
        return int(self.wrapper._module.get_output_embeddings().weight.shape[1])

    @cached_property
    def capabilities(self) -> Capabilities:
        """Residuals at block boundaries; the weights (and so the readout and gradients) only when run here.

        Per-head writes and attention patterns too when run here, on blocks whose attention
        and MLP this backend can find (:func:`_write_paths`).
        """
        local = not self.remote
        per_head = local and self._write_layout is not None
        return Capabilities(
            local_weights=local, per_head=per_head, attention_patterns=per_head, gradients=local, remote=self.remote
        )

    @cached_property
    def _write_layout(self) -> tuple[_WritePaths, ...] | None:
        """Where each block's writes are read, or None when any block doesn't fit (:func:`_write_paths`)."""
        layout = tuple(map(_write_paths, self.wrapper._module.get_submodule(self.layers_path)))
        return None if any(paths is None for paths in layout) else layout  # type: ignore[return-value]

    @cached_property
    def _position_path(self) -> str | None:
        """A learned position embedding registered beside the token embedding (GPT-2's ``wpe``), or None."""
        module = self.wrapper._module
        embedding = module.get_input_embeddings()
        parent = next(name for name, m in module.named_modules() if m is embedding).rpartition(".")[0]
        holder = module.get_submodule(parent)
        name = next((n for n in POSITION_NAMES if isinstance(getattr(holder, n, None), torch.nn.Embedding)), None)
        return None if name is None else f"{parent}.{name}".lstrip(".")

    @cached_property
    def output_transform(self) -> OutputTransform:
        """The config's logit scale and soft-cap, under every name the exact families use for them.

        Read from the config, not the weights, so a remote handle (no weights here) has it too.
        """
        config = self.config
        scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere
        scale *= float(getattr(config, "lm_head_multiplier", None) or 1.0)  # Falcon-H1
        scaling = getattr(config, "logits_scaling", None)  # Granite divides
        if scaling:
            scale /= float(scaling)
        cap = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_soft_cap", None)
        return OutputTransform(scale, float(cap) if cap else None)

    @cached_property
    def readout(self) -> Readout:
        """The Hugging Face model's own final norm and output head; only a model run here has them."""
        self.capabilities.require("local_weights", "a readout on this machine", self.name)
        module = self.wrapper._module
        head = module.get_output_embeddings()
        norm = module.get_submodule(self.norm_path)
        return Readout(norm, head.weight, getattr(head, "bias", None), self.output_transform)

    def capture(self, tokens: torch.Tensor, hooks: Sequence[str]) -> dict[str, torch.Tensor]:
        """One traced forward pass that saves the residual at each hook name, stopped after the last one.

        nnsight hands out module inputs and outputs in the order the forward pass makes them,
        so the points are read bottom-up.
        """
        points = sorted((_block_point(hook), hook) for hook in dict.fromkeys(hooks))
        saved = {}
        with torch.no_grad(), self.wrapper.trace(tokens) as tracer:
            layers = _envoy(self.wrapper, self.layers_path)
            for (layer, after), hook in points:
                if not after:
                    saved[hook] = layers[layer].input.save()
                else:
                    output = layers[layer].output
                    saved[hook] = (output[0] if isinstance(output, tuple) else output).save()
            tracer.stop()
        return saved

    def component_writes(self, tokens: torch.Tensor, row: Row, position: int) -> ComponentWrites:
        """Every write below (``row``, ``position``), read in one trace. Hold :attr:`lock`.

        Each block's output-projection input is saved and split by head; head h's write is its
        slice times its slice of the projection's weight, so the heads are read, not
        recomputed. The attention's and the MLP's outputs (or the norms' after them) are the
        layer's writes; attribution checks that the heads rebuild the one and that
        everything adds up to the row's residual.
        """
        self.capabilities.require("per_head", "per-head writes", self.name)
        layer, after = _block_point(row.hook)
        layout = self._write_layout[: layer + 1] if after else ()
        try:
            cell = self._trace_writes(tokens, position, layout)
        except Exception as exc:  # nnsight re-raises the model's errors in its own types; people need one line
            raise LensError(f"The nnsight run of '{self.name}' failed: {first_line(exc)}") from exc
        blocks = self.wrapper._module.get_submodule(self.layers_path)
        n_heads = int(getattr(self.config, "num_attention_heads", 0) or 0)
        writes = []
        for i, paths in enumerate(layout):
            block = blocks[i]
            projection = block.get_submodule(paths.projection)
            heads_input = cell[f"heads{i}"]
            split = n_heads > 0 and heads_input.shape[0] % n_heads == 0
            writes.append(
                BlockWrites(
                    attention=cell[f"attention{i}"],
                    heads_input=heads_input.unflatten(0, (n_heads, -1)) if split else None,
                    head_weights=_projection_rows(projection).detach().unflatten(0, (n_heads, -1)) if split else None,
                    head_bias=projection.bias,
                    post_norm=None if paths.post_norm is None else block.get_submodule(paths.post_norm),
                    mlp=cell[f"mlp{i}"],
                )
            )
        embedded, positions = cell["embedded"], cell.get("positions")
        return ComponentWrites(
            embed=embedded if positions is None else embedded - positions,
            pos_embed=positions,
            blocks=writes,
            residual=cell["residual"] if layout else embedded,
            dtype=next(self.wrapper._module.parameters()).dtype,
        )

    def _trace_writes(self, tokens: torch.Tensor, position: int, layout: Sequence[_WritePaths]) -> dict:
        """The cell's vectors, read in the order the forward pass makes them (nnsight hands them out so)."""
        import nnsight

        with torch.no_grad(), self.wrapper.trace(tokens) as tracer:
            cell = {}
            if self._position_path is not None:
                cell["positions"] = _at(_envoy(self.wrapper, self._position_path).output, position)
            layers = _envoy(self.wrapper, self.layers_path)
            cell["embedded"] = _at(layers[0].input, position)
            for i, paths in enumerate(layout):
                cell[f"heads{i}"] = _at(_envoy(layers[i], paths.projection).input, position)
                cell[f"attention{i}"] = _at(_envoy(layers[i], paths.attention_write).output, position)
                cell[f"mlp{i}"] = _at(_envoy(layers[i], paths.mlp_write).output, position)
            if layout:
                cell["residual"] = _at(layers[len(layout) - 1].output, position)
            nnsight.save(cell)
            tracer.stop()
        return cell

    def attention_pattern(self, tokens: torch.Tensor, layer: int, position: int) -> torch.Tensor:
        """Every head's attention weights from ``position`` in block ``layer``, [heads, position + 1]; hold the lock.

        SDPA returns no weights, so this one run uses eager attention, as TransformerLens's
        pattern hook does; the model is switched back after it.
        """
        import nnsight

        self.capabilities.require("attention_patterns", "attention patterns", self.name)
        module = self.wrapper._module
        previous = module.config._attn_implementation
        try:
            if previous != "eager":
                module.set_attn_implementation("eager")
            with torch.no_grad(), self.wrapper.trace(tokens) as tracer:
                block = _envoy(self.wrapper, self.layers_path)[layer]
                weights = _envoy(block, self._write_layout[layer].attention).output[1]
                found = {} if weights is None else {"pattern": weights[0, :, position, : position + 1].clone()}
                nnsight.save(found)
                tracer.stop()
        except Exception as exc:  # nnsight re-raises the model's errors in its own types; people need one line
            raise LensError(f"The nnsight run of '{self.name}' failed: {first_line(exc)}") from exc
        finally:
            if previous != "eager":
                module.set_attn_implementation(previous)
        if "pattern" not in found:
            raise LensError(f"Model '{self.name}' does not expose attention patterns.")
        return found["pattern"]

    def remote_statistics(
        self,
        token_ids: Sequence[int],
        rows: Sequence[Row],
        top_k: int,
        target_ids: Sequence[int],
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray]:
        """The cells' statistics reduced where the model runs; only those small arrays travel back."""
        input_ids = torch.tensor([list(token_ids)], dtype=torch.long)
        if self.remote:  # nothing here to guard: the model runs on NDIF, and a queue wait must not block others
            saved = _run_trace(self, input_ids, rows[0].label == "embed", top_k, list(target_ids), progress)
        else:
            with self.lock:
                saved = _run_trace(self, input_ids, rows[0].label == "embed", top_k, list(target_ids), progress)
        stats = {name: value.numpy() for name, value in saved.items()}
        for name in ("top_ids", "target_ranks"):
            stats[name] = stats[name].astype(np.int64)
        return stats

    @cached_property
    def token_name(self) -> TokenNamer:
        return TokenNamer(self.tokenizer)


def _block_point(hook: str) -> tuple[int, bool]:
    """(block, after it) for a residual hook name: the input of block 0, or any block's output."""
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        layer, point = int(parts[1]), parts[2]
        if point == "hook_resid_post" or (point == "hook_resid_pre" and layer == 0):
            return layer, point == "hook_resid_post"
    raise KeyError(f"the nnsight backend reads block outputs and the embeddings, not {hook}")


@dataclass(frozen=True)
class _WritePaths:
    """Where one decoder block's writes are read, as module paths under the block."""

    attention: str  # the attention module
    projection: str  # its output projection: the input is every head's output, head-major
    attention_write: str  # the module whose output is attention's write: the attention, or a norm after it
    post_norm: str | None  # that norm, between the projection and the residual (Gemma-2), if any
    mlp_write: str  # the module whose output is the MLP's write


def _write_paths(block: torch.nn.Module) -> _WritePaths | None:
    """Where a block's heads and MLP write, found by structure; None where the block doesn't fit.

    The attention is the one child whose class is an ``...Attention``, with an output
    projection (PROJECTION_NAMES) as a child; the MLP is the child ``mlp``. A block that
    norms each sub-layer's output before adding it (Gemma-2 and 3, OLMo-2: a
    ``post_feedforward_layernorm`` beside ``post_attention_layernorm``) writes those norms'
    outputs. What this finds is checked on every run: the heads must rebuild the attention's
    write and all writes must add up to the residual, or attribution refuses in one line.
    """
    children = dict(block.named_children())
    attention = [name for name, child in children.items() if type(child).__name__.endswith("Attention")]
    if len(attention) != 1 or "mlp" not in children:
        return None
    inner = dict(children[attention[0]].named_children())
    projection = next((name for name in PROJECTION_NAMES if _projection_rows(inner.get(name)) is not None), None)
    if projection is None:
        return None
    paths = _WritePaths(attention[0], f"{attention[0]}.{projection}", attention[0], None, "mlp")
    if "post_feedforward_layernorm" in children:
        if "post_attention_layernorm" not in children:
            return None
        post = "post_attention_layernorm"
        return _WritePaths(paths.attention, paths.projection, post, post, "post_feedforward_layernorm")
    return paths


def _projection_rows(module: torch.nn.Module | None) -> torch.Tensor | None:
    """A projection's weight as [in, out], or None for anything else.

    nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    """
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.weight.t()
    return module.weight if isinstance(module, Conv1D) else None


def _at(value, position: int) -> torch.Tensor:
    """One cell's vector, a copy in fp32, from a module's input or output (the first of a tuple; batch item 0)."""
    value = value[0] if isinstance(value, tuple) else value
    return value.reshape(-1, *value.shape[-2:])[0, position].to(torch.float32, copy=True)


def _envoy(root, path: str):
    """The nnsight envoy at a dotted path such as ``model.layers``."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def saved_api_key() -> str | None:
    """The key nnsight's own config holds (``nnsight login``), for a caller that passes none."""
    from nnsight import CONFIG

    return (CONFIG.API.APIKEY or "").strip() or None


def check_api_key(api_key: str | None) -> str:
    """The key a remote run will send, or one line saying where to get one (before anything is downloaded)."""
    key = (api_key or "").strip() or saved_api_key()
    if not key:
        raise LensError(
            f"No NDIF API key: set NDIF_API_KEY (or the app's NDIF_API_KEY secret); get a key at {NDIF_KEY_URL}."
        )
    return key


def load_nnsight(
    source: str,
    shown: str,
    *,
    remote_id: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> NnsightModel:
    """Wrap a checked source (lens.loading ran the guards) in nnsight: its weights here, or only its structure.

    With ``remote_id`` the model runs on NDIF under that hub id: the handle holds the
    config and tokenizer (kilobytes) and builds the structure on the meta device.
    Attention runs as the TransformerLens backend runs it (SDPA where the model has it),
    so the two agree to fp32 rounding.
    """
    report = progress or (lambda message, fraction: None)
    try:
        report("Starting nnsight", None)
        import nnsight
        from transformers import AutoConfig, AutoTokenizer

        report(f"Reading the config and tokenizer of {shown}", None)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        check_tokenizer(tokenizer, shown)
        if remote_id is not None:
            config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=True)
            # The repo id, not the local snapshot, is the model's identity on NDIF.
            wrapper = nnsight.TransformersModel(remote_id, task=TASK, tokenizer=tokenizer, config=config)
        else:
            placement = {"device": device} if device else {}
            wrapper = nnsight.TransformersModel(source, task=TASK, tokenizer=tokenizer, dtype=dtype, **placement)
            report(f"Reading the weights of {shown}", None)
            wrapper.dispatch()
            prefer_sdpa(wrapper._module.eval())
    except LensError:
        raise
    except Exception as exc:  # the libraries raise many types; people need one line
        raise load_failure(exc, shown, source) from exc
    report(f"{shown} is ready", 1.0)
    remote = remote_id is not None
    return _handle(wrapper, tokenizer, shown, remote=remote, api_key=api_key if remote else None, timeout=timeout)


def wrap_hf_model(hf_model: torch.nn.Module, tokenizer, *, name: str) -> NnsightModel:
    """Wrap a Hugging Face model that is already built (tests, benchmarks, notebooks), with SDPA where it has it."""
    import nnsight

    prefer_sdpa(hf_model.eval())
    return _handle(nnsight.TransformersModel(hf_model, tokenizer=tokenizer, task=TASK), tokenizer, name)


def _block_paths(module: torch.nn.Module) -> tuple[str | None, str | None]:
    """Where the decoder blocks and the final norm sit, found by structure, not by family name.

    The blocks are the first module list as long as the model is deep (``model.layers``,
    ``transformer.h``, ``backbone.layers``, ``rwkv.blocks``, ...); the final norm is the
    last norm registered beside them (``model.norm``, ``transformer.ln_f``, ``backbone.norm_f``,
    Lfm2's ``model.embedding_norm``, which it applies last). The architecture tests prove each
    exact family's output row against the model's own logits.
    """
    depth = getattr(module.config, "num_hidden_layers", None)
    layers = next(
        (name for name, m in module.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth),
        None,
    )
    if layers is None:
        return None, None
    parent_path, _, list_name = layers.rpartition(".")
    parent = module.get_submodule(parent_path)
    norms = [n for n, m in parent._modules.items() if "norm" in type(m).__name__.lower() or n == list_name]
    at = norms.index(list_name)
    # The first norm registered after the blocks, else the last before them (OPT registers it first).
    norm = next(iter(norms[at + 1 :]), norms[at - 1] if at else None)
    return layers, None if norm is None else f"{parent_path}.{norm}".lstrip(".")


def _handle(
    wrapper, tokenizer, name: str, *, remote: bool = False, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> NnsightModel:
    module = wrapper._module
    layers, norm = _block_paths(module)
    output_head = module.get_output_embeddings()
    head = next((n for n, m in module.named_modules() if m is output_head and n), None)
    if layers is None or norm is None or head is None:
        raise LensError(f"Model '{name}' has no decoder layers, final norm and output head the lens knows how to read.")
    return NnsightModel(wrapper, tokenizer, name, remote, layers, norm, head, api_key=api_key, timeout=timeout)


# --- inside the trace -------------------------------------------------------------------
# Everything below this line until the next marker runs where the model runs (on NDIF,
# shipped by value): plain torch on the tensors the trace reads, nothing from this machine.


def reduce_rows(
    hidden: list[torch.Tensor],
    norm: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    top_k: int,
    target_ids: list[int],
    transform: OutputTransform,
) -> dict[str, torch.Tensor]:
    """Each row's residuals [positions, d_model] -> the per-cell statistics, on the CPU.

    Logits are made one row and one block of positions at a time (BLOCK_LOGITS at
    most), so memory grows with neither depth nor prompt length; each block's final
    row is made first because every row's KL is measured against it. The reductions
    run in float64: a 27-nat KL keeps its last fp32 digit (fp32 sums lose ~1e-5).
    Ids and ranks travel as int32 (vocabularies are far below 2**31): half the bytes.
    """

    def log_probs(resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = transform.apply(head(norm(resid)).double())
        return logits, torch.log_softmax(logits, dim=-1)

    targets = torch.tensor(target_ids, dtype=torch.long, device=hidden[-1].device)
    n_positions = hidden[-1].shape[0]
    block = max(1, BLOCK_LOGITS // head(norm(hidden[-1][:1])).shape[-1])
    cells: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in hidden] for name in SAVED_ARRAYS}
    for start in range(0, n_positions, block):
        final_logits, final_log_probs = log_probs(hidden[-1][start : start + block])
        final_probs = final_log_probs.exp()
        for row, resid in enumerate(hidden):
            last = row == len(hidden) - 1
            logits, row_log_probs = (final_logits, final_log_probs) if last else log_probs(resid[start : start + block])
            top = torch.topk(row_log_probs, top_k, dim=-1)
            target_logits = logits[:, targets]  # [positions, targets]
            ranks = [1 + (logits > target_logits[:, [j]]).sum(-1) for j in range(len(target_ids))]
            for name, value in (
                ("top_ids", top.indices.int()),
                ("top_probs", top.values.exp()),
                ("log_normalizer", logits.gather(-1, top.indices[:, :1])[:, 0] - top.values[:, 0]),
                ("entropy", -(row_log_probs.exp() * row_log_probs).sum(-1)),
                ("kl_to_final", (final_probs * (final_log_probs - row_log_probs)).sum(-1).clamp_min(0)),
                ("target_logits", target_logits.t()),
                ("target_probs", row_log_probs[:, targets].exp().t()),
                ("target_ranks", torch.stack(ranks).int() if ranks else target_logits.t().int()),
            ):
                cells[name][row].append(value)
    out = {}
    for name, rows in cells.items():
        by_row = torch.stack([torch.cat(blocks, dim=-1 if name.startswith("target_") else 0) for blocks in rows])
        if name.startswith("target_"):
            by_row = by_row.transpose(0, 1)  # [targets, rows, positions]
        out[name] = (by_row.float() if by_row.is_floating_point() else by_row).contiguous().cpu()
    return out


def traced_statistics(
    wrapper,
    input_ids: torch.Tensor,
    paths: tuple[str, str, str],
    read_embeddings: bool,
    top_k: int,
    target_ids: list[int],
    transform: OutputTransform,
    backend=None,
) -> dict[str, torch.Tensor]:
    """One traced forward pass; only the reduced arrays are saved out of it.

    ``paths`` name the decoder layers, the final norm and the output head. ``backend``
    is nnsight's: None runs here, a RemoteBackend runs on NDIF. The forward stops
    after the last decoder layer: the model's own [positions x vocab] output is never
    computed (the lens makes it from the last row).
    """
    import nnsight

    with torch.no_grad(), wrapper.trace(input_ids, backend=backend) as tracer:
        layers, norm, head = (_envoy(wrapper, path) for path in paths)
        hidden = [layers[0].input[0]] if read_embeddings else []
        for layer in layers:
            output = layer.output
            hidden.append((output[0] if isinstance(output, tuple) else output)[0])
        statistics = reduce_rows(hidden, norm, head, top_k, target_ids, transform)
        nnsight.save(statistics)
        tracer.stop()
    return statistics


# --- back on this machine ---------------------------------------------------------------


def payload_bytes(n_rows: int, n_positions: int, top_k: int, n_targets: int) -> int:
    """Bytes of the arrays a run saves: per cell, k (int32 id + fp32 prob), three fp32, and 12 per target."""
    return n_rows * n_positions * (8 * top_k + 12 + 12 * n_targets)


def _run_trace(
    model: NnsightModel,
    input_ids: torch.Tensor,
    read_embeddings: bool,
    top_k: int,
    target_ids: list[int],
    progress: Progress | None,
) -> dict[str, torch.Tensor]:
    """The traced statistics, run here (the caller holds the lock) or on NDIF (no lock: no hooks here)."""

    def run(backend) -> dict[str, torch.Tensor]:
        return traced_statistics(
            model.wrapper,
            input_ids,
            (model.layers_path, model.norm_path, model.head_path),
            read_embeddings,
            top_k,
            target_ids,
            model.output_transform,
            backend,
        )

    if model.remote:
        return _run_on_ndif(model, run, progress)
    input_ids = input_ids.to(model.wrapper._module.get_output_embeddings().weight.device)
    try:
        return run(None)
    except Exception as exc:  # nnsight re-raises the model's errors in its own types; people need one line
        raise LensError(f"The nnsight run of '{model.name}' failed: {first_line(exc)}") from exc


class NdifTimeout(TimeoutError):
    """NDIF did not finish within the run's time limit (``last`` is its last status, or None)."""

    def __init__(self, seconds: float, last: object) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds, self.last = seconds, last


def _run_on_ndif(model: NnsightModel, run: Callable, progress: Progress | None) -> dict[str, torch.Tensor]:
    """Run on NDIF in a worker thread, reporting its status and the time left here, up to ``model.timeout``.

    The wait happens in the caller's thread, so ``progress`` (a page's status box) is
    called where it was made; the worker's socket is closed when the time is up.
    """
    backend = remote_backend(model)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["value"] = run(backend)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which classifies it
            outcome["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=work, name=f"ndif-{model.name}", daemon=True)
    worker.start()
    reported = 0
    while True:
        worker.join(min(PROGRESS_SECONDS, max(0.0, model.timeout - (time.monotonic() - started))))
        elapsed = time.monotonic() - started
        if progress is not None:
            fresh = backend.updates[reported:]
            reported += len(fresh)
            for message in fresh or backend.updates[-1:]:
                progress(f"{message} ({elapsed:.0f} s of at most {model.timeout:g} s)", None)
        if not worker.is_alive():
            break
        if elapsed >= model.timeout:
            backend.abandon()
            raise ndif_error(NdifTimeout(model.timeout, backend.last_status), model.name, backend.host)
    if "error" in outcome:
        error = outcome["error"]
        raise ndif_error(error, model.name, backend.host, model.api_key) from error  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


_STATUS_MESSAGES = {
    "RECEIVED": "NDIF received the request",
    "QUEUED": "Waiting in NDIF's queue",
    "PROVISIONING": "NDIF is provisioning a GPU for the model",
    "DEPLOYING": "NDIF is loading the model onto its GPUs (the first run of a model can take minutes)",
    "DISPATCHED": "NDIF dispatched the request to the model",
    "RUNNING": "Running on NDIF",
    "COMPLETED": "NDIF finished; fetching the statistics",
}


def remote_backend(model: NnsightModel):
    """nnsight's RemoteBackend for this model, with its time limit; status kept for the waiting thread.

    The lens modules travel by value (registered with nnsight), so NDIF needs no copy
    of this package, installed or not.
    """
    from nnsight.intervention.backends.display import StatusDisplay

    ship_by_value()
    backend = deadline_backend_class()(
        _model_key(model), api_key=model.api_key, env=model.wrapper._remoteable_get_env()
    )
    backend.timeout = model.timeout
    backend.display = StatusDisplay(enabled=False)  # status goes to progress, never to a log
    return backend


def ship_by_value() -> None:
    """Have nnsight pickle this package's code into the request (reduce_rows, OutputTransform), not name it.

    nnsight ships only modules outside site-packages by value; an installed ``lens`` would be
    named by reference and fail on NDIF, which has no copy of it.
    """
    import nnsight

    nnsight.register(__name__.split(".")[0])


@functools.cache
def deadline_backend_class() -> type:
    """RemoteBackend whose every socket read is bounded and can be abandoned (nnsight's waits without limit)."""
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.response import Status

    class DeadlineBackend(RemoteBackend):
        last_status: str | None = None
        abandoned = False
        connection = None
        timeout = DEFAULT_TIMEOUT

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.updates = ["Sending the request to NDIF"]  # appended by the worker, read by the waiting thread

        def note(self, response) -> bool:
            name = getattr(response.status, "name", str(response.status))
            if name in _STATUS_MESSAGES:
                self.last_status = name
                detail = (response.description or "").strip().splitlines()
                message = _STATUS_MESSAGES[name]
                self.updates.append(f"{message}: {detail[0][:120]}" if name == "QUEUED" and detail else message)
            return super().note(response)

        def abandon(self) -> None:
            """Stop waiting: the worker's next socket read fails and it ends."""
            self.abandoned = True
            if self.connection is not None:
                self.connection.close()

        def request(self, request, tracer):
            """nnsight's blocking request, with the handshake and every read bounded."""
            blob = self._serialize(tracer)
            header = {"ndif-api-key": self.api_key} if self.api_key else None
            self.updates.append(f"Connecting to NDIF at {self.host}")
            self.connection = websocket.create_connection(
                f"{self.ws_host}/subscribe", header=header, timeout=self.timeout
            )
            try:
                request.session_id = json.loads(self.connection.recv())["session_id"]
                self.send(request, blob)
                self.connection.settimeout(PROGRESS_SECONDS)
                while not self.abandoned:
                    try:
                        message = self.connection.recv()
                    except websocket.WebSocketTimeoutException:
                        continue
                    response = self.parse(message)
                    result = self.handle(response)
                    if response.status == Status.COMPLETED:
                        return result
                raise NdifTimeout(self.timeout, self.last_status)
            finally:
                self.connection.close()

    return DeadlineBackend


def _model_key(model: NnsightModel) -> str:
    """NDIF's key for the model. nnsight canonicalizes the id on the hub; offline, the id as given is used."""
    try:
        return model.wrapper.to_model_key()
    except Exception:  # noqa: BLE001 - the hub lookup failed; the curated ids are canonical
        from nnsight.modeling import huggingface

        huggingface._ID_CACHE.setdefault(model.wrapper.repo_id, model.wrapper.repo_id)
        return model.wrapper.to_model_key()


def hosted_on_ndif(host: str, repo_id: str) -> bool | None:
    """Whether NDIF's /status lists a deployment of ``repo_id``; None when NDIF can't say."""
    import httpx

    try:
        response = httpx.get(f"{host}/status", timeout=STATUS_SECONDS)
        response.raise_for_status()
        deployments = response.json().get("deployments", {})
        return any(str(d.get("repo_id", "")).lower() == repo_id.lower() for d in deployments.values())
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def ndif_error(exc: BaseException, model_name: str, host: str, api_key: str | None = None) -> LensError:
    """One line for whatever went wrong between here and NDIF, by exception type and HTTP status; never the key.

    No key is refused before any run (:func:`check_api_key`). Then: a rejected key (401,
    403), NDIF down (5xx), NDIF unreachable (DNS, refused, a connection timeout), a time
    limit spent waiting (in the queue or on the run), and a job NDIF refused, which is
    "not hosted" when NDIF's status lists no deployment of the model.
    """
    import httpx
    import websocket
    from nnsight.intervention.backends.remote import RemoteError

    chain = exception_chain(exc)
    timeout = next((e for e in chain if isinstance(e, NdifTimeout)), None)
    if timeout is not None:
        if timeout.last == "QUEUED":
            return LensError(
                f"NDIF's queue did not reach the run of '{model_name}' within {timeout.seconds:g} s "
                "(LENS_NDIF_TIMEOUT); try again later."
            )
        return LensError(
            f"NDIF did not finish the run of '{model_name}' within {timeout.seconds:g} s (LENS_NDIF_TIMEOUT); "
            "try again later."
        )
    code = next((c for c in map(status_code, chain) if c is not None), None)
    if code in (401, 403):
        return LensError(f"NDIF rejected the API key; check NDIF_API_KEY (keys come from {NDIF_KEY_URL}).")
    if code is not None and code >= 500:
        return LensError(f"NDIF is down or overloaded right now (HTTP {code} from {host}); try again later.")
    unreachable = (
        httpx.TransportError,
        websocket.WebSocketAddressException,
        websocket.WebSocketTimeoutException,
        websocket.WebSocketConnectionClosedException,
        OSError,
    )
    if code is None and any(isinstance(e, unreachable) for e in chain):
        return LensError(f"NDIF cannot be reached at {host}; check the network, or try again later.")
    if any(isinstance(e, RemoteError) for e in chain) and hosted_on_ndif(host, model_name) is False:
        return LensError(f"NDIF does not host '{model_name}' right now; pick one of its hosted models.")
    detail = first_line(exc)
    return LensError(f"NDIF could not run '{model_name}': {detail.replace(api_key, '***') if api_key else detail}")
