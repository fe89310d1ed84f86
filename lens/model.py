"""The TransformerLens backend: a booted TransformerBridge and the handle every lens run goes through.

``run_with_cache`` adds hooks to the one shared model while it runs, so two runs at once
would read each other's activations. :class:`LensModel` carries the lock that serialises
them, next to the bridge and its tokenizer. Where a model comes from and the guards
before a load are lens.sources' and lens.loading's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from lens import sources
from lens.backend import (
    BlockWrites,
    Capabilities,
    ComponentWrites,
    OutputTransform,
    Patch,
    Progress,
    Readout,
    Row,
    prefer_sdpa,
)
from lens.errors import LensError
from lens.tokens import TokenNamer, tokenizer_prepends_bos

_TRANSFORMER_LENS_CAPABILITIES = Capabilities(
    local_weights=True, after_attention=True, per_head=True, attention_patterns=True, gradients=True, patching=True
)


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
        return self._run_hooked(tokens, hooks, stop_at_layer, [])

    def capture_patched(self, tokens: torch.Tensor, hooks: Sequence[str], patches: Mapping[str, Patch]) -> dict:
        """:meth:`capture` with clean activations written into the run first: each batch item its own patch.

        ``patches`` maps a hook name to the (item, position) cells it replaces, so one forward
        pass carries many patched runs. Call it holding :attr:`lock`.
        """
        missing = [name for name in patches if name not in self.bridge.hook_dict]
        if missing:
            raise LensError(f"Model '{self.name}' has no {missing[0]} point to patch.")
        return self._run_hooked(tokens, hooks, None, [(name, patch.write) for name, patch in patches.items()])

    def component_writes(self, tokens: torch.Tensor, row: Row, position: int) -> ComponentWrites:
        """Every write below (``row``, ``position``) from the bridge's hooks: z and W_O per head. Hold :attr:`lock`."""
        last = row.layer  # the last block with any write below the row (-1: embeddings only)
        hooks = ["blocks.0.hook_resid_pre", row.hook]
        if getattr(self.cfg, "positional_embedding_type", "") == "standard":
            hooks.append("hook_pos_embed")
        for i in range(last + 1):
            hooks += [f"blocks.{i}.hook_attn_out", f"blocks.{i}.attn.hook_z"]
            if i < last or row.hook.endswith("hook_resid_post"):
                hooks.append(f"blocks.{i}.hook_mlp_out")
        hooks = [h for h in dict.fromkeys(hooks) if h in self.bridge.hook_dict or h == row.hook]
        try:
            cache = self.capture(tokens, hooks, stop_at_layer=max(last + 1, 1))
        except (ValueError, KeyError) as exc:
            raise LensError(f"Model '{self.name}' cannot provide the points attribution needs: {exc}") from exc
        if row.hook not in cache:
            raise LensError(
                f"Model '{self.name}' has no {row.label} point (its blocks run attention and MLP in parallel)."
            )
        acts = {name: cache[name][0, position].float() for name in hooks if name in cache}
        blocks = []
        for i in range(last + 1):
            block = self.bridge.blocks[i]
            blocks.append(
                BlockWrites(
                    attention=acts[f"blocks.{i}.hook_attn_out"],
                    heads_input=acts.get(f"blocks.{i}.attn.hook_z"),
                    head_weights=getattr(block.attn, "W_O", None),
                    head_bias=getattr(block.attn, "b_O", None),
                    post_norm=getattr(block, "ln1_post", None),
                    mlp=acts.get(f"blocks.{i}.hook_mlp_out"),
                )
            )
        embedded, positions = acts["blocks.0.hook_resid_pre"], acts.get("hook_pos_embed")
        return ComponentWrites(
            embed=embedded if positions is None else embedded - positions,
            pos_embed=positions,
            blocks=blocks,
            residual=acts[row.hook],
            dtype=next(self.bridge.parameters()).dtype,
        )

    def attention_pattern(self, tokens: torch.Tensor, layer: int, position: int) -> torch.Tensor:
        """Every head's attention weights from ``position`` in block ``layer``, [heads, position + 1]; hold the lock."""
        hook = f"blocks.{layer}.attn.hook_pattern"
        cache = self.capture(tokens, [hook], stop_at_layer=layer + 1)
        if hook not in cache:
            raise LensError(f"Model '{self.name}' does not expose attention patterns.")
        return cache[hook][0, :, position, : position + 1]

    def _run_hooked(
        self, tokens: torch.Tensor, hooks: Sequence[str], stop_at_layer: int | None, writers: list[tuple[str, Callable]]
    ) -> dict:
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        stop_point = "ln_final.hook_in"
        hook_dict = self.bridge.hook_dict
        if stop_at_layer is not None and stop_at_layer < self.n_layers or stop_point not in hook_dict:
            with self.bridge.hooks(fwd_hooks=writers):
                _, cache = self.bridge.run_with_cache(tokens, names_filter=list(hooks), stop_at_layer=stop_at_layer)
            return cache
        waiting = {name for name in hooks if name in hook_dict}

        def fired(name: str) -> Callable:
            return lambda tensor, hook: waiting.discard(name)

        def stop(tensor: torch.Tensor, hook) -> None:
            if not waiting:
                raise StopAtLayerException(tensor)

        fwd_hooks = [*writers, *((name, fired(name)) for name in waiting), (stop_point, stop)]
        with self.bridge.hooks(fwd_hooks=fwd_hooks):
            _, cache = self.bridge.run_with_cache(tokens, names_filter=list(hooks))
        return cache


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

    if not prefer_sdpa(bridge.original_model):
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


def load_transformer_lens(
    source: str,
    shown: str,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    progress: Progress | None = None,
    fast_attention: bool = True,
) -> LensModel:
    """Boot a checked source (lens.loading ran the guards) in TransformerLens, with its own tokenizer.

    Remote code is never trusted. ``device`` and ``device_map`` go straight to
    TransformerLens (``device_map="auto"`` spreads a large model over several GPUs).
    ``progress(message, fraction_or_None)`` hears what is happening, for a UI to show.
    ``fast_attention`` runs attention on SDPA while nothing hooks it (:func:`use_fast_attention`).
    """
    report = progress or (lambda message, fraction: None)
    try:
        report("Starting TransformerLens", None)
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        if not Path(source).is_dir():
            source = sources.download_snapshot(source, progress)
        report(f"Reading the tokenizer and weights of {shown}", None)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        sources.check_tokenizer(tokenizer, shown)
        kwargs = {"device_map": device_map} if device_map is not None else {"device": device}
        bridge = TransformerBridge.boot_transformers(
            source, tokenizer=tokenizer, dtype=dtype, trust_remote_code=False, **kwargs
        )
    except LensError:
        raise
    except Exception as exc:  # the libraries raise many types; people need one line
        raise sources.load_failure(exc, shown, source) from exc
    bridge.eval()
    if fast_attention:
        use_fast_attention(bridge)
    report(f"{shown} is ready", 1.0)
    return LensModel(bridge=bridge, tokenizer=tokenizer, name=shown)
