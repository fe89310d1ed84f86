"""The lens through nnsight: the same statistics, computed where the model runs.

For a model too big for this machine (Llama-3.1-70B, 405B), NDIF runs it and nnsight
ships our traced code there. Full logits of a 70B model are [80 layers x positions x
128k] floats, gigabytes per prompt over the network, so the final norm, the
unembedding and the reduction of every cell to the numbers people look at (top-k,
log-normaliser, entropy, KL to the final row, targets' probability, logit and rank)
all run inside the trace; only those small arrays are saved and come back.

The same trace runs locally (``remote=False``) on any model that fits, which is how
it is tested against the TransformerLens backend. Every NDIF failure (no key, a
rejected key, NDIF unreachable, a model it doesn't host) becomes one LensError line;
queue and run status go to the ``progress`` callback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lens.backend import Capabilities, OutputTransform, Progress, Readout, Row
from lens.errors import LensError
from lens.model import _first_line, resolve_model_source
from lens.result import STATISTICS
from lens.tokens import TokenNamer, tokenizer_prepends_bos

NDIF_KEY_URL = "https://login.ndif.us"
TASK = "text-generation"
BLOCK_LOGITS = 2**23  # logits made at once in the trace: 64 MB in float64, 65 positions of a 128k vocabulary
# Where decoder layers, the final norm and the output head sit in the model families
# NDIF hosts (Llama, Gemma, Qwen, Mistral, GPT-2, GPT-J, GPT-NeoX, OLMo).
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")
# The arrays a run saves out of the trace, and nothing else (their size: payload_bytes).
SAVED_ARRAYS = STATISTICS


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
        """Residuals at block boundaries; the weights (and so the readout and gradients) only when run here."""
        return Capabilities(local_weights=not self.remote, gradients=not self.remote, remote=self.remote)

    @cached_property
    def output_transform(self) -> OutputTransform:
        """The config's logit scale (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``) and soft-cap."""
        scale = float(getattr(self.config, "logit_scale", None) or 1.0)
        scaling = getattr(self.config, "logits_scaling", None)
        if scaling:
            scale /= float(scaling)
        cap = getattr(self.config, "final_logit_softcapping", None)
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


def _envoy(root, path: str):
    """The nnsight envoy at a dotted path such as ``model.layers``."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _has_path(module: torch.nn.Module, path: str) -> bool:
    for part in path.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return True


def saved_api_key() -> str | None:
    """The key nnsight's own config holds (``nnsight login``): the library reads no environment."""
    from nnsight import CONFIG

    return (CONFIG.API.APIKEY or "").strip() or None


def load_nnsight_model(
    name_or_path: str,
    *,
    remote: bool = False,
    api_key: str | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> NnsightModel:
    """Wrap a model in nnsight: its weights for a local run, only its structure for NDIF.

    A remote model needs its config and tokenizer (kilobytes), never its weights: those
    are on NDIF. The key is checked first, so a missing one fails before any download.
    """
    report = progress or (lambda message, fraction: None)
    if remote:
        api_key = (api_key or "").strip() or saved_api_key()
        if not api_key:
            raise LensError(
                f"No NDIF API key: set NDIF_API_KEY (or the app's NDIF_API_KEY secret); get a key at {NDIF_KEY_URL}."
            )
    source, shown = resolve_model_source(name_or_path)
    try:
        report("Starting nnsight", None)
        import nnsight
        from transformers import AutoConfig, AutoTokenizer

        if not Path(source).is_dir():
            source = _download_config_and_tokenizer(source, progress)
        report(f"Reading the config and tokenizer of {shown}", None)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        if remote:
            # The repo id, not the local snapshot, is the model's identity on NDIF.
            wrapper = nnsight.TransformersModel(
                name_or_path if not Path(name_or_path).exists() else source,
                task=TASK,
                tokenizer=tokenizer,
                config=config,
            )
        else:
            placement = {"device": device} if device else {}
            # Eager attention, as TransformerLens runs it, so the two backends agree to fp32 rounding.
            wrapper = nnsight.TransformersModel(
                source, task=TASK, tokenizer=tokenizer, dtype=dtype, attn_implementation="eager", **placement
            )
            report(f"Reading the weights of {shown}", None)
            wrapper.dispatch()
            wrapper._module.eval()
    except LensError:
        raise
    except Exception as exc:  # the libraries raise many types; people need one line
        raise LensError(f"Could not load model '{shown}': {_first_line(exc)}") from exc
    report(f"{shown} is ready", 1.0)
    return _handle(wrapper, tokenizer, shown, remote=remote, api_key=api_key if remote else None)


def wrap_hf_model(hf_model: torch.nn.Module, tokenizer, *, name: str) -> NnsightModel:
    """Wrap a Hugging Face model that is already built (benchmarks, notebooks)."""
    import nnsight

    return _handle(nnsight.TransformersModel(hf_model.eval(), tokenizer=tokenizer, task=TASK), tokenizer, name)


def _handle(wrapper, tokenizer, name: str, *, remote: bool = False, api_key: str | None = None) -> NnsightModel:
    module = wrapper._module
    layers = next((p for p in _LAYER_PATHS if _has_path(module, p)), None)
    norm = next((p for p in _NORM_PATHS if _has_path(module, p)), None)
    output_head = module.get_output_embeddings()
    head = next((n for n, m in module.named_modules() if m is output_head and n), None)
    if layers is None or norm is None or head is None:
        raise LensError(f"Model '{name}' has no decoder layers, final norm and output head the lens knows how to read.")
    return NnsightModel(wrapper, tokenizer, name, remote, layers, norm, head, api_key=api_key)


def _download_config_and_tokenizer(repo_id: str, progress: Progress | None) -> str:
    """The hub files that describe a model, without its weights."""
    from huggingface_hub import snapshot_download

    if progress is not None:
        progress(f"Downloading the config and tokenizer of {repo_id}", None)
    return snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.model"])


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
    backend = remote_backend(model, progress) if model.remote else None
    if backend is None:
        input_ids = input_ids.to(model.wrapper._module.get_output_embeddings().weight.device)
    try:
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
    except LensError:
        raise
    except Exception as exc:  # nnsight, websocket and httpx raise many types; people need one line
        if backend is None:
            raise LensError(f"The nnsight run of '{model.name}' failed: {_first_line(exc)}") from exc
        raise ndif_error(exc, model.name, backend.host, model.api_key) from exc


def remote_backend(model: NnsightModel, progress: Progress | None):
    """nnsight's RemoteBackend, reporting NDIF's job status to ``progress`` instead of the terminal."""
    from nnsight.intervention.backends.display import StatusDisplay
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.response import Status

    waiting = {
        Status.RECEIVED: "NDIF received the request",
        Status.QUEUED: "Waiting in NDIF's queue",
        Status.PROVISIONING: "NDIF is provisioning a GPU for the model",
        Status.DEPLOYING: "NDIF is loading the model onto its GPUs (the first run of a model can take minutes)",
        Status.DISPATCHED: "NDIF dispatched the request to the model",
        Status.RUNNING: "Running on NDIF",
        Status.COMPLETED: "NDIF finished; fetching the statistics",
    }

    class ReportingBackend(RemoteBackend):
        def note(self, response) -> bool:
            if progress is not None and response.status in waiting:
                detail = (response.description or "").strip().splitlines()
                message = waiting[response.status]
                if response.status == Status.QUEUED and detail:
                    message += f": {detail[0][:120]}"
                progress(message, None)
            return super().note(response)

    backend = ReportingBackend(_model_key(model), api_key=model.api_key, env=model.wrapper._remoteable_get_env())
    backend.display = StatusDisplay(enabled=False)  # status goes to progress, never to a log
    return backend


def _model_key(model: NnsightModel) -> str:
    """NDIF's key for the model. nnsight canonicalizes the id on the hub; offline, the id as given is used."""
    try:
        return model.wrapper.to_model_key()
    except Exception:  # noqa: BLE001 - the hub lookup failed; the curated ids are canonical
        from nnsight.modeling import huggingface

        huggingface._ID_CACHE.setdefault(model.wrapper.repo_id, model.wrapper.repo_id)
        return model.wrapper.to_model_key()


# Phrases of NDIF's own refusals (seen in nnsight and NDIF issue threads), lower-cased.
_NOT_HOSTED = ("unavailable for deployment", "not dedicated", "is not deployed", "model not found", "not hosted")
_REJECTED = ("api key", "apikey", "unauthorized", "401", "403", "forbidden", "not authorized")


def ndif_error(exc: BaseException, model_name: str, host: str, api_key: str | None = None) -> LensError:
    """One line for whatever went wrong between here and NDIF. The key is never part of it."""
    chain = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain).lower()
    names = {type(e).__name__ for e in chain}
    if any(phrase in text for phrase in _NOT_HOSTED):
        return LensError(f"NDIF does not host '{model_name}' right now; pick one of its hosted models.")
    if any(phrase in text for phrase in _REJECTED) or "WebSocketBadStatusException" in names:
        return LensError(f"NDIF rejected the API key; check NDIF_API_KEY (keys come from {NDIF_KEY_URL}).")
    if names & {"ConnectError", "ConnectTimeout", "ConnectionRefusedError", "gaierror", "TimeoutError"} or any(
        isinstance(e, OSError) for e in chain
    ):
        return LensError(f"NDIF cannot be reached at {host}; check the network, or try again later.")
    detail = _first_line(exc)
    return LensError(f"NDIF could not run '{model_name}': {detail.replace(api_key, '***') if api_key else detail}")
