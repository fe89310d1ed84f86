"""Loading a model for the lens, and the handle every lens run goes through.

``run_with_cache`` adds hooks to the one shared model while it runs, so two runs at once
would read each other's activations. :class:`LensModel` carries the lock that serialises
them, next to the bridge and its tokenizer.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from lens import budget
from lens.architectures import check_architecture
from lens.backend import Capabilities, OutputTransform, Progress, Readout
from lens.errors import LensError
from lens.settings import DEFAULT_MODEL
from lens.tokens import TokenNamer, tokenizer_prepends_bos

if TYPE_CHECKING:
    from lens.nnsight_backend import NnsightModel

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"
DEMO_ALIASES = ("demo",)
HUB_PROBE_SECONDS = 4.0
_TRANSFORMER_LENS_CAPABILITIES = Capabilities(
    local_weights=True, after_attention=True, per_head=True, gradients=True, patching=True
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(eq=False)
class LensModel:
    """A booted TransformerBridge, its tokenizer, and the lock that guards its hooks."""

    bridge: object
    tokenizer: object
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_hf(
        cls,
        hf_model,
        tokenizer,
        *,
        name: str | None = None,
        device: str | None = "cpu",
        fast_attention: bool = True,
    ) -> LensModel:
        """Wrap a Hugging Face model that is already built (tests, benchmarks, notebooks).

        ``fast_attention`` as in :func:`use_fast_attention`; False keeps TransformerLens's eager path.
        """
        from transformer_lens.model_bridge import TransformerBridge

        name = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=device)
        bridge.eval()
        if fast_attention:
            use_fast_attention(bridge)
        return cls(bridge=bridge, tokenizer=tokenizer, name=name)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def d_vocab(self) -> int:
        return self.readout.d_vocab

    @property
    def capabilities(self) -> Capabilities:
        """Everything: the weights are here and every hook point is reachable."""
        return _TRANSFORMER_LENS_CAPABILITIES

    @cached_property
    def default_prepend_bos(self) -> bool:
        """Whether the tokenizer itself starts a text with BOS: Llama's does, GPT-2's doesn't.

        TransformerLens's cfg.default_prepend_bos is True for GPT-2 too, unlike the model's
        own tokenizer and the seed notebook, which changes every first-position reading.
        """
        return tokenizer_prepends_bos(self.tokenizer)

    @property
    def softcap(self) -> float | None:
        """Gemma-2-style final logit soft-capping, or None when the model has none."""
        cap = getattr(self.cfg, "output_logits_soft_cap", None)
        return float(cap) if cap is not None and cap > 0 else None

    @cached_property
    def logit_scale(self) -> float:
        """What the model multiplies its unembedding's output by, before any soft-cap.

        Cohere's ``logit_scale`` and Granite's ``1 / logits_scaling``; 1.0 for most models.
        Read by probing the adapter's own output transform (the path TransformerLens
        declares for the model's logits) at one small logit with the soft-cap undone, so
        every family that scales its logits is covered, not only the ones named here.
        """
        transform = getattr(getattr(self.bridge, "adapter", None), "apply_output_logits_transform", None)
        if transform is None:
            return 1.0
        probe = 1e-3
        out = float(transform(torch.tensor([probe], dtype=torch.float64)))
        if self.softcap is not None:
            out = self.softcap * math.atanh(out / self.softcap)
        scale = out / probe
        return 1.0 if math.isclose(scale, 1.0, rel_tol=1e-9) else scale

    @cached_property
    def readout(self) -> Readout:
        """The bridge's final norm and unembedding (W_U, b_U), with the model's logit scale and soft-cap."""
        unembed = self.bridge.unembed
        return Readout(
            self.bridge.ln_final,
            unembed.W_U.detach().float().t(),
            getattr(unembed, "b_U", None),
            OutputTransform(self.logit_scale, self.softcap),
        )

    @cached_property
    def token_name(self) -> TokenNamer:
        return TokenNamer(self.tokenizer)

    def capture(self, tokens: torch.Tensor, hooks: Sequence[str], stop_at_layer: int | None = None) -> dict:
        """``run_with_cache`` on ``hooks``, stopped before block ``stop_at_layer`` or, by default, the final norm.

        TransformerLens's ``stop_at_layer`` cannot stop after the last block: the model
        would go on to its own [positions x vocab] logits, a third of a 1024-token forward
        pass on GPT-2 small, which the lens then recomputes in its own way. So a hook on the
        final norm's input stops the run there, the way ``stop_at_layer`` stops a block, once
        every hook asked for has fired (some models, NanoChat's, also norm the embeddings with
        that module). Call it holding :attr:`lock`.
        """
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        stop_point = "ln_final.hook_in"
        hook_dict = self.bridge.hook_dict
        if stop_at_layer is not None and stop_at_layer < self.n_layers or stop_point not in hook_dict:
            _, cache = self.bridge.run_with_cache(tokens, names_filter=list(hooks), stop_at_layer=stop_at_layer)
            return cache
        waiting = {name for name in hooks if name in hook_dict}

        def fired(name: str) -> Callable:
            return lambda tensor, hook: waiting.discard(name)

        def stop(tensor: torch.Tensor, hook) -> None:
            if not waiting:
                raise StopAtLayerException(tensor)

        with self.bridge.hooks(fwd_hooks=[*((name, fired(name)) for name in waiting), (stop_point, stop)]):
            _, cache = self.bridge.run_with_cache(tokens, names_filter=list(hooks))
        return cache


def resolve_model_source(name_or_path: str) -> tuple[str, str]:
    """Decide where a model comes from: (source to boot from, name to show people).

    A folder is used as is. A hub id is looked up in the local cache first, so a cached
    model loads with no network; an uncached one needs the hub, which is probed with a
    short timeout instead of the libraries' 40 s of retries.
    """
    if isinstance(name_or_path, Path):
        name_or_path = str(name_or_path)
    if name_or_path is not None and not isinstance(name_or_path, str):
        raise LensError(f"A model is named by a string (hub id or folder), not {type(name_or_path).__name__}.")
    name = (name_or_path or "").strip()
    if not name:
        raise LensError("No model given: name a Hugging Face model id or a model folder.")
    if name.lower() in DEMO_ALIASES:
        return _model_folder(DEMO_MODEL_DIR, "demo"), "demo"
    path = Path(name).expanduser()
    if path.exists():
        return _model_folder(path, name), name
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise LensError(f"There is no model folder at '{name}'.")
    if not _REPO_ID.match(name):
        raise LensError(f"'{name}' is neither a Hugging Face model id (like openai-community/gpt2) nor a model folder.")
    _check_repo_id(name)
    cached = _cached_snapshot(name)
    if cached is not None:
        return cached, name
    if _hub_offline():
        raise LensError(
            f"Could not download model '{name}': the Hugging Face hub cannot be reached "
            "and the model is not in the local cache."
        )
    return name, name


def _check_repo_id(name: str) -> None:
    """The hub library's own rules ('--', '..', 96 characters at most), as one line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        shown = name if len(name) <= 100 else name[:100] + "…"
        raise LensError(
            f"'{shown}' is not a valid Hugging Face model id (letters, digits, '-', '_' and '.'; "
            "no '--' or '..'; at most 96 characters)."
        ) from exc


def _model_folder(path: Path, shown: str) -> str:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise LensError(f"'{shown}' is not a model folder: it has no config.json.")
    return str(path)


def _cached_snapshot(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config, str) and Path(config).is_file():
        return str(Path(config).parent)
    return None


def _hub_offline() -> bool:
    """True when the hub is switched off or does not answer within a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
            reachable.set()
        except OSError:
            pass

    # getaddrinfo ignores socket timeouts, so the probe runs in a thread we can stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 1)
    return not reachable.is_set()


def use_fast_attention(bridge) -> int:
    """Let attention run on Hugging Face's SDPA kernel whenever no hook inside it is listening.

    TransformerLens reimplements attention step by step so that ``hook_attn_scores`` and
    ``hook_pattern`` can fire; that path materialises every [heads x positions x positions]
    score and runs the forward pass ~2x slower than SDPA at 1024 tokens. The lens hooks only
    the residual stream. So each attention bridge gets a forward that, while none of its inner
    hook points has a hook, takes TransformerLens's own delegating path (``hook_in``, the
    wrapped Hugging Face module, ``hook_out``) with the model switched to SDPA; a hook on the
    pattern, scores, q/k/v or z (or a split-input setting) sends that call down the
    reimplementation as before. Models without SDPA (Gemma-2's attention soft-capping) keep
    eager attention. Returns how many attention modules were switched.
    """
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    hf_model = bridge.original_model
    if not getattr(hf_model, "_supports_sdpa", False):
        return 0
    try:
        hf_model.set_attn_implementation("sdpa")
    except Exception:  # transformers refuses models its SDPA path can't run; they stay eager
        return 0
    switched = 0
    for module in bridge.modules():
        if not isinstance(module, AttentionBridge) or type(module).forward is AttentionBridge.forward:
            continue
        outer = (module.hook_in, module.hook_out)
        inner = [m for m in module.modules() if isinstance(m, HookPoint) and all(m is not o for o in outer)]
        # nn.Module.__call__ looks forward up on the instance; the bridge's __setattr__
        # would hand the attribute to the wrapped module, so it is set directly.
        object.__setattr__(module, "forward", _FastAttentionForward(module, inner))
        switched += 1
    return switched


class _FastAttentionForward:
    """An attention bridge's forward: SDPA through the wrapped module, or the bridge's own path when hooked."""

    SPLIT_SETTINGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")

    def __init__(self, attention, inner_hook_points) -> None:
        self.attention, self.inner = attention, inner_hook_points

    def __call__(self, *args, **kwargs):
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

        attention = self.attention
        config = attention.config
        hooked = any(h._forward_hooks or h._forward_pre_hooks or h._backward_hooks for h in self.inner)
        if hooked or any(getattr(config, s, False) for s in self.SPLIT_SETTINGS):
            return type(attention).forward(attention, *args, **kwargs)
        return AttentionBridge.forward(attention, *args, **kwargs)


def download_snapshot(repo_id: str, progress: Progress | None = None) -> str:
    """Fetch a hub model's config, tokenizer and weights (safetensors when the repo has them).

    Downloading before booting lets the caller show which file of how many is coming,
    and the boot then reads a plain local folder.
    """
    from huggingface_hub import list_repo_files, snapshot_download
    from tqdm.auto import tqdm

    files = list_repo_files(repo_id)
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["pytorch_model*.bin"]

    class ReportingBar(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            if progress is not None and self.total:
                progress(f"Downloading {repo_id}: file {self.n} of {self.total}", self.n / self.total)
            return shown

    return snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.model", *weights], tqdm_class=ReportingBar)


def read_config(source: str) -> dict:
    """A model's config.json, from its folder or as one small file from the hub (no weights)."""
    if Path(source).is_dir():
        path = Path(source) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, "config.json")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LensError(f"The model's config.json could not be read: {exc}") from exc
    if not isinstance(config, dict):
        raise LensError("The model's config.json is not a JSON object.")
    return config


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    progress: Progress | None = None,
    backend: str = "transformer_lens",
    remote: bool = False,
    api_key: str | None = None,
    fast_attention: bool = True,
    max_model_bytes: int | None = None,
) -> LensModel | NnsightModel:
    """Boot a hub id or a local Hugging Face folder, with the tokenizer from the same place.

    Remote code is never trusted. ``device`` and ``device_map`` go straight to
    TransformerLens (``device_map="auto"`` spreads a large model over several GPUs).
    ``progress(message, fraction_or_None)`` hears what is happening, for a UI to show.
    ``backend="nnsight"`` wraps the model in nnsight instead (lens/nnsight_backend.py);
    with ``remote=True`` it runs on NDIF, with ``api_key`` (else the key ``nnsight login`` saved).
    ``max_model_bytes`` is the largest fp32 model loaded (default: the memory still free).
    ``fast_attention`` runs attention on SDPA while nothing hooks it (:func:`use_fast_attention`).
    """
    if backend == "nnsight":
        from lens.nnsight_backend import load_nnsight_model

        return load_nnsight_model(
            name_or_path, remote=remote, api_key=api_key, device=device, dtype=dtype, progress=progress
        )
    if backend != "transformer_lens":
        raise LensError(f"Unknown backend {backend!r}; choose 'transformer_lens' or 'nnsight'.")
    if remote:
        raise LensError("Remote runs go through nnsight: pass backend='nnsight' with remote=True.")
    report = progress or (lambda message, fraction: None)
    source, shown = resolve_model_source(name_or_path)
    budget.limit_torch_threads()
    try:
        budget.check_hub_size(source, shown, max_model_bytes)
        config = read_config(source)
        check_architecture(config)
        budget.check_config(config, shown, max_model_bytes)
        report("Starting TransformerLens", None)
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        if not Path(source).is_dir():
            source = download_snapshot(source, progress)
        report(f"Reading the tokenizer and weights of {shown}", None)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        kwargs = {"device_map": device_map} if device_map is not None else {"device": device}
        bridge = TransformerBridge.boot_transformers(
            source, tokenizer=tokenizer, dtype=dtype, trust_remote_code=False, **kwargs
        )
    except LensError:
        raise
    except Exception as exc:  # the libraries raise many types; people need one line
        if _pickled_weights_only(source):
            raise LensError(
                f"Could not load model '{shown}': its weights are a pickled .bin file that could not be read "
                "safely; the lens needs safetensors."
            ) from exc
        raise LensError(f"Could not load model '{shown}': {_first_line(exc)}") from exc
    bridge.eval()
    if fast_attention:
        use_fast_attention(bridge)
    report(f"{shown} is ready", 1.0)
    return LensModel(bridge=bridge, tokenizer=tokenizer, name=shown)


def _pickled_weights_only(source: str) -> bool:
    folder = Path(source)
    return folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    if "not a valid model identifier" in text or "Repository Not Found" in text or "404" in text:
        return "no such model on the Hugging Face hub."
    return line[:300]
