"""Every decoder-only architecture the lens claims, proven on a tiny random model of it.

Each test builds a two-layer, width-64 model from the family's own transformers config
class (with the features that make the family special switched on: logit scaling, soft
caps, embedding multipliers, mixtures of experts), runs the lens through TransformerLens,
and checks it against the independent Hugging Face computation in ``tests/reference.py``.
Outcomes go to ``artifacts/architectures.json``; ``scripts/architecture_table.py``
renders the README's table from it.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from lens import LensError, LensModel, budget, run_lens
from lens.architectures import ARCHITECTURES, EXACT
from tests.conftest import ROOT, STORIES, require_shared, unescaped
from tests.reference import _blocks_and_norm, assert_top_ids_match, head_logits, reference_lens

PROMPT = "Once upon a time, there was a little girl named Lily."
TOP_K = 5
# Probabilities, entropy and KL within 1e-5; a log-normaliser sums 512 fp32 exps, so 1e-4.
TOLERANCES = {"output_log_normalizer": 1e-4}
OUTCOMES = ROOT / "artifacts" / "architectures.json"

# Every tiny model: 2 layers, width 64, the 512-token stories260K vocabulary.
BASE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    attn_implementation="eager",
)
NO_KV_HEADS = dict(num_key_value_heads=None)
# Multi-head latent attention (DeepSeek-V2/V3 and their descendants), with small experts.
MLA = dict(
    num_key_value_heads=4,
    kv_lora_rank=16,
    q_lora_rank=32,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
)
HYBRID = dict(layer_types=["linear_attention", "full_attention"])

# The config overrides that make each family build tiny, and switch on what sets it apart.
FAMILY_CONFIG: dict[str, dict] = {
    "GPT2LMHeadModel": NO_KV_HEADS,
    "OpenAIGPTLMHeadModel": NO_KV_HEADS,
    "GPTNeoForCausalLM": {**NO_KV_HEADS, "attention_types": [[["global", "local"], 1]]},
    "GPTJForCausalLM": {**NO_KV_HEADS, "rotary_dim": 8, "tie_word_embeddings": False},
    "GPTNeoXForCausalLM": {**NO_KV_HEADS, "use_parallel_residual": True, "rotary_pct": 0.5},
    "CodeGenForCausalLM": {**NO_KV_HEADS, "rotary_dim": 8, "n_ctx": 128},
    "GPTBigCodeForCausalLM": {**NO_KV_HEADS, "multi_query": True},
    "BloomForCausalLM": NO_KV_HEADS,
    "MptForCausalLM": NO_KV_HEADS,
    "OPTForCausalLM": {**NO_KV_HEADS, "ffn_dim": 128, "word_embed_proj_dim": 64},
    "FalconForCausalLM": {"num_key_value_heads": None, "parallel_attn": True, "multi_query": True},
    "PhiForCausalLM": {"partial_rotary_factor": 0.5},
    "CohereForCausalLM": {"logit_scale": 0.125},
    "Cohere2ForCausalLM": {"logit_scale": 0.125, "sliding_window": 4},
    "GraniteForCausalLM": {
        "logits_scaling": 4.0,
        "embedding_multiplier": 3.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.1,
    },
    "GraniteMoeForCausalLM": {"logits_scaling": 4.0, "embedding_multiplier": 3.0, "residual_multiplier": 0.5},
    "GemmaForCausalLM": {"head_dim": 16},
    "Gemma2ForCausalLM": {"head_dim": 16, "final_logit_softcapping": 5.0, "attn_logit_softcapping": 20.0},
    "Gemma3ForCausalLM": {"head_dim": 16, "final_logit_softcapping": 5.0, "sliding_window": 4},
    "VaultGemmaForCausalLM": {"head_dim": 16, "final_logit_softcapping": 5.0},
    "FalconH1ForCausalLM": {
        "lm_head_multiplier": 0.5,
        "embedding_multiplier": 2.0,
        "mamba_d_ssm": 64,
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_d_state": 8,
        "mamba_chunk_size": 16,
    },
    "MistralForCausalLM": {"sliding_window": 4},
    "MixtralForCausalLM": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "Qwen2MoeForCausalLM": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "Qwen3MoeForCausalLM": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "OlmoeForCausalLM": {"num_experts": 4, "num_experts_per_tok": 2},
    "DeepseekV2ForCausalLM": MLA,
    "DeepseekV3ForCausalLM": MLA,
    "Glm4MoeLiteForCausalLM": MLA,
    "Qwen3NextForCausalLM": {**HYBRID, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "Qwen3_5ForCausalLM": HYBRID,
    "Qwen3_5MoeForCausalLM": {**HYBRID, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "BambaForCausalLM": {"attn_layer_indices": [1]},
    "JambaForCausalLM": {"attn_layer_period": 2, "attn_layer_offset": 1, "num_experts": 2, "expert_layer_period": 2},
    "MambaForCausalLM": {"state_size": 8},
    "Mamba2ForCausalLM": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "state_size": 8},
    "GraniteMoeHybridForCausalLM": {"layer_types": ["mamba", "attention"], "position_embedding_type": "rope"},
    "Lfm2MoeForCausalLM": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1, "num_experts": 4},
    "RecurrentGemmaForCausalLM": {"block_types": ["recurrent", "attention"], "head_dim": 16},
    "Zamba2ForCausalLM": {"layers_block_type": ["mamba", "hybrid"], "mamba_d_state": 8},
    "YoutuForCausalLM": MLA,
    "HunYuanDenseV1ForCausalLM": {"head_dim": 16},
    "GlmMoeDsaForCausalLM": MLA,
    "FalconMambaForCausalLM": {"state_size": 8},
}


@pytest.fixture(scope="module")
def tokenizer():
    require_shared()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture(scope="module")
def outcomes():
    """Each test's measured errors, written once for the README's table."""
    measured: dict[str, dict] = {}
    yield measured
    if measured:
        OUTCOMES.parent.mkdir(exist_ok=True)
        previous = json.loads(OUTCOMES.read_text()) if OUTCOMES.is_file() else {}
        OUTCOMES.write_text(json.dumps({**previous, **measured}, indent=1, sort_keys=True) + "\n")


def build_tiny(name: str):
    """A random two-layer model of this architecture, and an untouched copy for the reference."""
    model_class = getattr(transformers, name)
    overrides = {**BASE, "architectures": [name], **FAMILY_CONFIG.get(name, {})}
    config = model_class.config_class(**{k: v for k, v in overrides.items() if v is not None})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = model_class(config).eval()
    return hf_model, copy.deepcopy(hf_model)


# The module whose input is the residual stream after attention (resid_mid): the norm in
# front of the MLP, or the MLP itself where the block norms sub-layer outputs instead (OLMo 2).
MLP_INPUT = {
    **dict.fromkeys(["GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTBigCodeForCausalLM"], "ln_2"),
    **dict.fromkeys(["OPTForCausalLM", "XGLMForCausalLM"], "final_layer_norm"),
    **dict.fromkeys(
        ["Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma4ForCausalLM", "VaultGemmaForCausalLM"],
        "pre_feedforward_layernorm",
    ),
    **dict.fromkeys(["BambaForCausalLM", "JambaForCausalLM", "FalconH1ForCausalLM"], "pre_ff_layernorm"),
    **dict.fromkeys(["Lfm2ForCausalLM", "Lfm2MoeForCausalLM"], "ffn_norm"),
    **dict.fromkeys(
        ["Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoHybridForCausalLM", "FlexOlmoForCausalLM", "Exaone4ForCausalLM"],
        "mlp",
    ),
    "ApertusForCausalLM": "feedforward_layernorm",
    "AfmoeForCausalLM": "pre_mlp_layernorm",
    "MptForCausalLM": "norm_2",
    "RwkvForCausalLM": "ln2",
}


def sublayer_rows(reference, name: str, token_ids) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The embedding row and, where the family has them, the after-attention rows, read as the model's output.

    The embedding row is the input of block 0 (after any embedding scale); an
    after-attention row is the input of the block's MLP side (see MLP_INPUT).
    """
    blocks, _ = _blocks_and_norm(reference)
    embedding, after_attention = [], []

    def grab_into(seen):
        return lambda _module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"])

    handles = [blocks[0].register_forward_pre_hook(grab_into(embedding), with_kwargs=True)]
    if ARCHITECTURES[name].after_attention:
        mlp_input = MLP_INPUT.get(name, "post_attention_layernorm")
        handles += [
            getattr(b, mlp_input).register_forward_pre_hook(grab_into(after_attention), with_kwargs=True)
            for b in blocks
        ]
    try:
        with torch.no_grad():
            reference(torch.tensor([token_ids]))
            # OPT flattens positions before its MLP norm: put the batch axis back.
            rows = [head_logits(reference, h.reshape(1, -1, h.shape[-1])) for h in after_attention]
            return head_logits(reference, embedding[0]), rows
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_architecture(name, tokenizer, outcomes):
    """The lens equals the independent computation, and its last row is the model's own output.

    The embedding row and the after-attention rows are checked against the same
    independent computation; where a family has no after-attention point (attention and
    MLP in parallel, state-space blocks), asking for one is refused in one line.
    """
    hf_model, reference = build_tiny(name)
    # The size guard's meta-device count is the real model's, tied weights once.
    assert budget.count_parameters(reference.config.to_dict(), name) == (
        sum(p.numel() for p in reference.parameters()),
        reference.config.num_hidden_layers,
    )
    model = LensModel.from_hf(hf_model, tokenizer, name=name)
    entry = ARCHITECTURES[name]
    if not entry.after_attention:
        with pytest.raises(LensError) as refused:
            run_lens(model, PROMPT, points=("resid_mid", "resid_post"))
        assert "\n" not in str(refused.value) and "resid_mid" in str(refused.value)
    points = ("resid_pre", "resid_mid", "resid_post") if entry.after_attention else ("resid_pre", "resid_post")
    result = run_lens(model, PROMPT, top_k=TOP_K, points=points)
    post = [i for i, hook in enumerate(result.points) if hook.endswith("hook_resid_post")]
    assert len(post) == model.n_layers
    ref = reference_lens(reference, result.token_ids, TOP_K)

    assert_top_ids_match(result.top_ids[post], ref)
    errors = {
        "top_probs": float(np.abs(result.top_probs[post] - ref["top_probs"]).max()),
        "entropy": float(np.abs(result.entropy[post] - ref["entropy"]).max()),
        "kl_to_final": float(np.abs(result.kl_to_final[post] - ref["kl_to_final"]).max()),
    }
    # The lens's output row is the model's own: same probabilities, same logit scale.
    model_logits = _model_logits(reference, result.token_ids)
    model_log_probs = torch.log_softmax(torch.from_numpy(model_logits), -1).numpy()
    top_model_probs = np.exp(np.take_along_axis(model_log_probs, result.top_ids[-1], -1))
    errors["output_top_probs"] = float(np.abs(result.top_probs[-1] - top_model_probs).max())
    output, last = ref["output_log_probs"], ref["log_probs"][-1]
    errors["output_kl"] = float((np.exp(output) * (output - last)).sum(-1).max())
    errors["output_log_normalizer"] = float(np.abs(result.log_normalizer[-1] - _logsumexp(model_logits)).max())
    assert result.layers[0] == "embed" and len(result.layers) == 1 + len(points[1:]) * model.n_layers
    assert entry.after_attention == (result.layers[1] == "L0 attn")
    embedding, after_attention = sublayer_rows(reference, name, result.token_ids)
    errors["embedding_top1"] = _top1_error(result.top_probs[0], embedding)
    if entry.after_attention:
        mid = [i for i, hook in enumerate(result.points) if hook.endswith("hook_resid_mid")]
        assert len(mid) == len(after_attention) == model.n_layers
        gaps = [_top1_error(result.top_probs[i], h) for i, h in zip(mid, after_attention, strict=True)]
        errors["after_attention_top1"] = max(gaps)
    within = {metric: error < TOLERANCES.get(metric, 1e-5) for metric, error in errors.items()}
    outcomes[name] = {"errors": errors, "within_tolerance": all(within.values())}
    for metric, ok in within.items():
        assert ok, f"{name}: {metric} off by {errors[metric]:.2e}"


def _top1_error(top_probs: np.ndarray, logits: torch.Tensor) -> float:
    """Largest gap between the lens's top-1 probabilities [positions, k] and the reference's."""
    return float(np.abs(top_probs[:, 0] - torch.softmax(logits, -1).numpy().max(-1)).max())


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    return torch.logsumexp(torch.from_numpy(logits), -1).numpy()


def _model_logits(reference, token_ids) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.tensor([token_ids])).logits[0].double().numpy()


def test_enough_architectures_are_proven():
    assert len(EXACT) >= 40, sorted(EXACT)


class WeightsDownloaded(Exception):
    """Raised by the fake download: reaching it means the architecture check let the model through."""


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A reachable hub whose repos' config.json says what the test wants; weights never download."""
    import huggingface_hub

    from lens import sources

    configs: dict[str, dict] = {}

    def fetch_config(repo_id, filename, **_):
        path = tmp_path / repo_id.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(configs[repo_id]))
        return str(path)

    def download(repo_id, progress=None):
        raise WeightsDownloaded(repo_id)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch_config)
    monkeypatch.setattr(sources, "hub_offline", lambda: False)
    monkeypatch.setattr(sources, "cached_snapshot", lambda repo_id: None)
    monkeypatch.setattr(sources, "download_snapshot", download)
    monkeypatch.setattr(budget, "hub_parameters", lambda repo_id: None)  # no size metadata: the config decides
    return configs


def test_unsupported_hub_model_is_refused_before_its_weights(fake_hub):
    from lens import load_model

    fake_hub["someone/t5-small"] = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}
    with pytest.raises(LensError) as refused:
        load_model("someone/t5-small")
    message = str(refused.value)
    assert "\n" not in message
    assert "T5ForConditionalGeneration" in message and "--list-architectures" in message


def test_unknown_hub_architecture_is_refused_and_a_proven_one_goes_on_to_download(fake_hub):
    from lens import load_model

    fake_hub["someone/new-thing"] = {"architectures": ["BrandNewForCausalLM"]}
    with pytest.raises(LensError, match="BrandNewForCausalLM is not supported"):
        load_model("someone/new-thing")
    fake_hub["someone/cohere"] = {  # small: the config's own size is counted too
        "architectures": ["CohereForCausalLM"],
        "model_type": "cohere",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 1000,
    }
    with pytest.raises(LensError) as passed_check:
        load_model("someone/cohere")
    assert isinstance(passed_check.value.__cause__, WeightsDownloaded)


def test_local_folder_of_unsupported_architecture_is_refused(tmp_path):
    from lens import load_model

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ModernBertDecoderForCausalLM"]}))
    with pytest.raises(LensError, match="ModernBertDecoderForCausalLM is not supported: a prediction head"):
        load_model(str(tmp_path))


def test_cli_lists_every_architecture_with_status_and_example(capsys):
    from lens.cli import main

    assert main(["--list-architectures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, entry in ARCHITECTURES.items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert entry.example in line and entry.status in line
    assert main([]) == 2
    assert "Give the prompt" in capsys.readouterr().err


def test_curated_models_are_of_exact_families():
    """Each curated hub model's architecture, as TransformerLens's own model registry records it, is proven here."""
    import transformer_lens

    from ui.config import CURATED_MODELS

    registry = Path(transformer_lens.__file__).parent / "tools" / "model_registry" / "data" / "supported_models.json"
    architecture = {m["model_id"]: m["architecture_id"] for m in json.loads(registry.read_text())["models"]}
    hub_models = [m for m in CURATED_MODELS if m != "demo"]
    assert {architecture[m] for m in hub_models} <= EXACT
    assert len({architecture[m] for m in hub_models}) == len(hub_models), "one model per family"


def test_app_refuses_an_unsupported_architecture_in_one_line(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    require_shared()
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(STORIES))
    monkeypatch.setenv("LENS_ALLOW_LOCAL", "1")
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    app.query_params.update({"prompt": PROMPT, "model": "Other model id…", "model_id": str(tmp_path)})
    app.run()
    assert not app.exception
    refusals = [unescaped(e.value) for e in app.error if "T5ForConditionalGeneration is not supported" in e.value]
    assert len(refusals) == 1 and "\n" not in refusals[0] and "--list-architectures" in refusals[0]
    assert len(app.sidebar.text_area) == 1  # the rest of the app is still there


def test_loaded_from_a_folder_cohere_keeps_its_logit_scale(tmp_path, tokenizer):
    """The app's path (load_model on a saved checkpoint) reads the scale the same way as from_hf."""
    from lens import load_model

    hf_model, reference = build_tiny("CohereForCausalLM")
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.logit_scale == pytest.approx(FAMILY_CONFIG["CohereForCausalLM"]["logit_scale"])
    result = run_lens(model, PROMPT, top_k=TOP_K)
    ref = reference_lens(reference, result.token_ids, TOP_K)
    np.testing.assert_allclose(result.top_probs, ref["top_probs"], atol=1e-5)
    np.testing.assert_allclose(result.entropy, ref["entropy"], atol=1e-5)
