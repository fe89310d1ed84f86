"""Which model architectures the lens reads exactly, and why the others are refused.

The lens is only as good as its parity with the model's own output, so an architecture
is offered only once ``tests/test_architectures.py`` has proven a tiny random model of it
against an independent Hugging Face computation. The app and the CLI read this table
before downloading any weights, and the README's table is rendered from the tests'
measured outcomes by ``scripts/architecture_table.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lens.errors import LensError

EXACT_STATUS = "exact"
APPROXIMATE_STATUS = "approximate"
UNSUPPORTED_STATUS = "unsupported"
TABLE_POINTER = "see the supported architectures in the README or `python -m lens --list-architectures`"


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face architecture class name (config.json's ``architectures[0]``)."""

    name: str
    family: str
    example: str
    status: str = EXACT_STATUS
    reason: str = ""
    # Whether TransformerLens has an after-attention point (resid_mid) for it to read.
    after_attention: bool = True


def _exact(name: str, family: str, example: str, *, after_attention: bool = True) -> Architecture:
    return Architecture(name, family, example, after_attention=after_attention)


def _unsupported(name: str, family: str, example: str, reason: str) -> Architecture:
    return Architecture(name, family, example, UNSUPPORTED_STATUS, reason, after_attention=False)


NOT_DECODER = "not a decoder-only causal language model (no next-token distribution after each layer)"
MULTIMODAL = "a multimodal wrapper; not proven here (its text-only *ForCausalLM sibling is)"

_TABLE = [
    _exact("GPT2LMHeadModel", "GPT-2", "openai-community/gpt2"),
    _unsupported(
        "OpenAIGPTLMHeadModel",
        "GPT-1",
        "openai-community/openai-gpt",
        "TransformerLens 4.3's GPT-1 bridge has no final norm and no hook_resid_post points to read",
    ),
    _exact("GPTNeoForCausalLM", "GPT-Neo", "EleutherAI/gpt-neo-125m"),
    _exact("GPTJForCausalLM", "GPT-J", "EleutherAI/gpt-j-6b", after_attention=False),
    _exact("GPTNeoXForCausalLM", "GPT-NeoX / Pythia", "EleutherAI/pythia-70m", after_attention=False),
    _exact("OPTForCausalLM", "OPT", "facebook/opt-125m"),
    _exact("BloomForCausalLM", "BLOOM", "bigscience/bloom-560m"),
    _unsupported(
        "CodeGenForCausalLM",
        "CodeGen",
        "Salesforce/codegen-350M-mono",
        "TransformerLens 4.3's CodeGen bridge reads `embed_positions` from the attention module, "
        "which transformers 5 moved to a rotary module: the model does not run",
    ),
    _exact("GPTBigCodeForCausalLM", "GPTBigCode / SantaCoder", "bigcode/gpt_bigcode-santacoder"),
    _exact("MptForCausalLM", "MPT", "hf-internal-testing/tiny-random-MptForCausalLM"),
    _exact("FalconForCausalLM", "Falcon", "tiiuae/falcon-rw-1b", after_attention=False),
    _exact("XGLMForCausalLM", "XGLM", "facebook/xglm-564M"),
    _exact("LlamaForCausalLM", "Llama", "HuggingFaceTB/SmolLM2-135M"),
    _exact("Llama4ForCausalLM", "Llama 4 (text)", "facebook/MobileLLM-R1.5-950M"),
    _exact("MistralForCausalLM", "Mistral", "mistralai/Mistral-7B-v0.1"),
    _exact("Ministral3ForCausalLM", "Ministral 3", "mistralai/Ministral-3-3B-Reasoning-2512"),
    _exact("MixtralForCausalLM", "Mixtral (MoE)", "mistralai/Mixtral-8x7B-v0.1"),
    _exact("Qwen2ForCausalLM", "Qwen2 / Qwen2.5", "Qwen/Qwen2.5-0.5B"),
    _exact("Qwen2MoeForCausalLM", "Qwen2-MoE", "Qwen/Qwen1.5-MoE-A2.7B"),
    _exact("Qwen3ForCausalLM", "Qwen3", "Qwen/Qwen3-0.6B"),
    _exact("Qwen3MoeForCausalLM", "Qwen3-MoE", "Qwen/Qwen3-30B-A3B"),
    _exact("Qwen3NextForCausalLM", "Qwen3-Next (hybrid MoE)", "Qwen/Qwen3-Next-80B-A3B-Instruct"),
    _exact("Qwen3_5ForCausalLM", "Qwen3.5 (text)", "Evelyn67/Qwen3.5-2B-Her"),
    _exact("Qwen3_5MoeForCausalLM", "Qwen3.5-MoE (text)", "Qwen/Qwen3.5-35B-A3B"),
    _exact("GemmaForCausalLM", "Gemma", "google/gemma-2b"),
    _exact("Gemma2ForCausalLM", "Gemma 2", "google/gemma-2-2b"),
    _exact("Gemma3ForCausalLM", "Gemma 3 (text)", "google/gemma-3-1b-pt"),
    _exact("Gemma4ForCausalLM", "Gemma 4 (text)", "zentropi-ai/cope-b-a4b"),
    _exact("VaultGemmaForCausalLM", "VaultGemma", "google/vaultgemma-1b"),
    _exact("PhiForCausalLM", "Phi", "microsoft/phi-1_5", after_attention=False),
    _exact("Phi3ForCausalLM", "Phi-3", "microsoft/Phi-3-mini-4k-instruct"),
    _exact("OlmoForCausalLM", "OLMo", "allenai/OLMo-1B-hf"),
    _exact("Olmo2ForCausalLM", "OLMo 2", "allenai/OLMo-2-0425-1B"),
    _exact("Olmo3ForCausalLM", "OLMo 3", "allenai/Olmo-3-1025-7B"),
    _exact("OlmoeForCausalLM", "OLMoE (MoE)", "allenai/OLMoE-1B-7B-0924"),
    _exact("OlmoHybridForCausalLM", "OLMo Hybrid", "allenai/Olmo-Hybrid-7B"),
    _exact("FlexOlmoForCausalLM", "FlexOlmo (MoE)", "allenai/Flex-math-2x7B-1T"),
    _exact("StableLmForCausalLM", "StableLM", "stabilityai/stablelm-2-1_6b"),
    _exact("Starcoder2ForCausalLM", "StarCoder2", "bigcode/starcoder2-3b"),
    _exact("CohereForCausalLM", "Cohere (Command R)", "CohereLabs/c4ai-command-r-v01", after_attention=False),
    _exact("Cohere2ForCausalLM", "Cohere 2", "CohereLabs/c4ai-command-r7b-12-2024", after_attention=False),
    _exact("GraniteForCausalLM", "Granite", "ibm-granite/granite-3.0-2b-instruct"),
    _exact("GraniteMoeForCausalLM", "Granite MoE", "ibm-granite/granite-3.0-1b-a400m-base"),
    _exact("GraniteMoeHybridForCausalLM", "Granite 4 (hybrid)", "ibm-granite/granite-4.0-1b"),
    _exact("NemotronForCausalLM", "Nemotron", "nvidia/Minitron-4B-Base"),
    _exact("NemotronHForCausalLM", "Nemotron-H (hybrid)", "nvidia/NVIDIA-Nemotron-Nano-9B-v2", after_attention=False),
    _exact("GlmForCausalLM", "GLM", "zai-org/glm-edge-1.5b-chat"),
    _exact("Glm4ForCausalLM", "GLM-4", "zai-org/GLM-4-9B-0414"),
    _exact("Glm4MoeForCausalLM", "GLM-4 MoE", "zai-org/GLM-4.5-Air"),
    _exact("Glm4MoeLiteForCausalLM", "GLM-4.7 Flash", "zai-org/GLM-4.7-Flash"),
    _exact("DeepseekV2ForCausalLM", "DeepSeek-V2", "deepseek-ai/DeepSeek-V2-Lite"),
    _exact("DeepseekV3ForCausalLM", "DeepSeek-V3", "deepseek-ai/DeepSeek-V3"),
    _exact("GptOssForCausalLM", "gpt-oss (MoE)", "openai/gpt-oss-20b"),
    _exact("Ernie4_5ForCausalLM", "ERNIE 4.5", "baidu/ERNIE-4.5-0.3B-PT"),
    _exact("Ernie4_5_MoeForCausalLM", "ERNIE 4.5 MoE", "baidu/ERNIE-4.5-21B-A3B-PT"),
    _exact("Exaone4ForCausalLM", "EXAONE 4", "LGAI-EXAONE/EXAONE-4.0-1.2B"),
    _exact("SmolLM3ForCausalLM", "SmolLM3", "HuggingFaceTB/SmolLM3-3B"),
    _exact("SeedOssForCausalLM", "Seed-OSS", "ByteDance-Seed/Seed-OSS-36B-Base"),
    _exact("ApertusForCausalLM", "Apertus", "swiss-ai/Apertus-8B-2509"),
    _exact("ArceeForCausalLM", "Arcee (AFM)", "arcee-ai/AFM-4.5B-Base"),
    _exact("AfmoeForCausalLM", "AFMoE (Trinity)", "arcee-ai/Trinity-Nano-Base"),
    _exact("BitNetForCausalLM", "BitNet", "microsoft/bitnet-b1.58-2B-4T-bf16"),
    _exact("Jais2ForCausalLM", "Jais 2", "inceptionai/Jais-2-8B-Chat"),
    _exact("JetMoeForCausalLM", "JetMoE", "jetmoe/jetmoe-8b"),
    _exact("LagunaForCausalLM", "Laguna", "poolside/Laguna-XS-2.1"),
    _exact("MiniMaxM2ForCausalLM", "MiniMax-M2", "MiniMaxAI/MiniMax-M2"),
    _exact("NanoChatForCausalLM", "nanochat", "nanochat-students/nanochat-d20"),
    _exact("HunYuanDenseV1ForCausalLM", "Hunyuan (dense)", "tencent/Hunyuan-0.5B-Instruct"),
    _exact("YoutuForCausalLM", "Youtu-LLM", "tencent/Youtu-LLM-2B-Base"),
    _exact("Lfm2ForCausalLM", "LFM2 (hybrid)", "LiquidAI/LFM2-350M"),
    _exact("Lfm2MoeForCausalLM", "LFM2-MoE (hybrid)", "LiquidAI/LFM2-8B-A1B"),
    _exact("FalconH1ForCausalLM", "Falcon-H1 (hybrid)", "tiiuae/Falcon-H1-0.5B-Base"),
    _exact("BambaForCausalLM", "Bamba (hybrid)", "ibm-ai-platform/Bamba-9B-v1"),
    _exact("JambaForCausalLM", "Jamba (hybrid)", "ai21labs/AI21-Jamba-Reasoning-3B"),
    _exact("Zamba2ForCausalLM", "Zamba2 (hybrid)", "Zyphra/Zamba2-1.2B", after_attention=False),
    _exact("RecurrentGemmaForCausalLM", "RecurrentGemma", "google/recurrentgemma-2b", after_attention=False),
    _exact("MambaForCausalLM", "Mamba", "state-spaces/mamba-130m-hf", after_attention=False),
    _exact("Mamba2ForCausalLM", "Mamba-2", "AntonV/mamba2-130m-hf", after_attention=False),
    _exact("FalconMambaForCausalLM", "Falcon-Mamba", "tiiuae/falcon-mamba-7b", after_attention=False),
    _exact("RwkvForCausalLM", "RWKV-4", "RWKV/rwkv-4-169m-pile"),
    _unsupported(
        "ModernBertDecoderForCausalLM",
        "ModernBERT decoder (Ettin)",
        "jhu-clsp/ettin-decoder-17m",
        "a prediction head (dense, GELU, LayerNorm) sits between the final norm and the unembedding; "
        "the lens skips it, so its last row is not the model's output",
    ),
    _exact("GlmMoeDsaForCausalLM", "GLM-5", "zai-org/GLM-5"),
]

_TABLE += [
    _unsupported("Gemma3ForConditionalGeneration", "Gemma 3 (multimodal)", "google/gemma-3-4b-it", MULTIMODAL),
    _unsupported("Qwen3_5ForConditionalGeneration", "Qwen3.5 (multimodal)", "Qwen/Qwen3.5-2B", MULTIMODAL),
    _unsupported("Mistral3ForConditionalGeneration", "Mistral 3 (multimodal)", "tiny-random/mistral-3", MULTIMODAL),
    _unsupported("LlavaForConditionalGeneration", "LLaVA", "llava-hf/llava-1.5-7b-hf", MULTIMODAL),
    _unsupported("T5ForConditionalGeneration", "T5", "google-t5/t5-small", NOT_DECODER),
    _unsupported("BartForConditionalGeneration", "BART", "facebook/bart-large-cnn", NOT_DECODER),
    _unsupported("BertForMaskedLM", "BERT", "google-bert/bert-base-cased", NOT_DECODER),
]

# Checkpoints whose config.json names the class differently from transformers' own.
ALIASES = {"MPTForCausalLM": "MptForCausalLM", "Gemma1ForCausalLM": "GemmaForCausalLM"}

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _TABLE}
EXACT = frozenset(n for n, a in ARCHITECTURES.items() if a.status == EXACT_STATUS)


def describe(name: str) -> Architecture:
    """This architecture's entry; one the table does not name reads as unsupported."""
    return ARCHITECTURES.get(ALIASES.get(name, name)) or _unsupported(
        name, name, "", "TransformerLens 4.3 has no bridge for it, or the lens has not been proven on it"
    )


def _causal_lm_of(model_type: object) -> str | None:
    """The class transformers' AutoModelForCausalLM builds for a model_type (what a load really builds)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None


def architecture_name(config: Mapping) -> str:
    """The architecture a config.json describes: its ``architectures`` field, else its model_type's causal LM.

    A config without the field (an old checkpoint, or a crafted one) is named by the class
    transformers builds for its ``model_type``, so ``model_type=bert`` reads as
    BertLMHeadModel and is refused, not loaded as a masked LM. When both are given they
    must agree: the class built is the one whose parity was proven.
    """
    names = config.get("architectures")
    model_type = config.get("model_type")
    built = _causal_lm_of(model_type)
    if names in (None, []):
        if model_type is None:
            raise LensError(f"The model's config.json names no architecture and no model_type ({TABLE_POINTER}).")
        if built is None:
            raise LensError(
                f"The model's config.json names no architecture, and its model_type {str(model_type)[:80]!r} "
                f"is no causal language model transformers knows ({TABLE_POINTER})."
            )
        return built
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LensError("The model's config.json gives 'architectures' that is not a list of class names.")
    named = ALIASES.get(names[0], names[0])
    if model_type is not None and built != named and describe(named).status != UNSUPPORTED_STATUS:
        raise LensError(
            f"The model's config.json names {named[:80]} but its model_type {str(model_type)[:80]!r} builds "
            f"{built or 'no causal language model'} in transformers; the lens reads only a proven pair."
        )
    return names[0]


def check_architecture(config: Mapping) -> Architecture:
    """Refuse a model whose config.json does not prove an architecture the lens reads exactly.

    Runs before any weights download, so an unsupported model costs one small file.
    """
    name = architecture_name(config)
    entry = describe(name)
    if entry.status == UNSUPPORTED_STATUS:
        raise LensError(f"Architecture {name[:80]} is not supported: {entry.reason} ({TABLE_POINTER}).")
    return entry


def model_class(config: Mapping) -> type:
    """The transformers class of a proven architecture (never remote code): for counting and building."""
    import transformers

    return getattr(transformers, check_architecture(config).name)


def status_text(entry: Architecture) -> str:
    """The status as people read it: exact, with what is missing, or why not."""
    if entry.status == EXACT_STATUS and not entry.after_attention:
        return "exact (no after-attention rows: attention and MLP in parallel, or recurrent blocks)"
    return entry.status + (f": {entry.reason}" if entry.reason else "")


def listing() -> str:
    """One line per architecture, for ``python -m lens --list-architectures``."""
    rows = [(a.name, a.family, a.example, status_text(a)) for a in _TABLE]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True)).rstrip() for row in rows]
    exact = sum(a.status == EXACT_STATUS for a in _TABLE)
    lines.append(f"{exact} exact. Any architecture not listed is refused before its weights download.")
    return "\n".join(lines)
