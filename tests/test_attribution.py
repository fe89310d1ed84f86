"""Direct logit attribution against the lens itself and against Hugging Face forward hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lens import LensError, attribute, run_lens
from lens import attribution as attribution_module
from lens.attribution import cell_writes, freeze_norm, head_attention
from lens.backend import lens_rows
from lens.tuned import TunedLens
from tests.conftest import STORIES
from tests.test_app import app, assert_no_failure, chart_data, charts  # noqa: F401 - app is a fixture
from ui import cached

STORY = "Once upon a time, there was a little girl named"
PROMPT = "The quick brown fox jumps over the lazy dog because"
ALL_POINTS = ("resid_pre", "resid_mid", "resid_post")


@pytest.fixture(scope="module")
def gpt2_tiny(gpt2_tokenizer):
    """GPT-2's architecture (LayerNorm, learned positions, output bias) at a test-friendly size."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lens import LensModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=64, n_head=4, attn_implementation="eager")).eval()
    with torch.no_grad():  # non-zero biases, so their parts are tested too
        for block in hf.transformer.h:
            block.attn.c_proj.bias.normal_(0, 0.05)
        hf.transformer.ln_f.bias.normal_(0, 0.05)
    import copy

    reference = copy.deepcopy(hf)
    model = LensModel.from_hf(hf, gpt2_tokenizer, name="gpt2-tiny")
    # GPT-2 has no unembedding bias; families that do (GPT-J, Phi) get one here so its part is tested.
    model.readout.bias = torch.randn(model.d_vocab, generator=torch.Generator().manual_seed(2)) * 0.1
    return model, reference


@pytest.fixture(scope="module")
def stories_reference():
    return AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()


def _expected_logit(model, normed: np.ndarray, token: int) -> float:
    """The lens's own logit from its own final-norm output (pre-cap), in float64."""
    value = normed.astype(np.float64) @ model.readout.unembed_weight[:, token].double().numpy()
    if model.readout.bias is not None:
        value += float(model.readout.bias[token])
    return float(value)


def _check_exact_sums(model, prompt, skip_mid: bool = False):
    points = ("resid_pre", "resid_post") if skip_mid else ALL_POINTS
    result = run_lens(model, prompt, top_k=2, points=points, keep_unembed_input=True)
    n = result.n_positions
    checked = 0
    for row_index, label in enumerate(result.layers):
        for position in (0, n // 2, n - 1):
            writes = cell_writes(model, prompt, position=position, row=label)
            top1, top2 = (int(t) for t in result.top_ids[row_index, position, :2])
            normed = result.unembed_input[row_index, position]
            attribution = writes.attribute(model, top1)
            expected = _expected_logit(model, normed, top1)
            assert attribution.logit == pytest.approx(expected, rel=1e-4, abs=1e-6), (label, position)
            assert attribution.to_frame().contribution.sum() == pytest.approx(attribution.logit, rel=1e-9)
            difference = writes.attribute(model, top1, contrast=top2)
            assert difference.logit == pytest.approx(
                expected - _expected_logit(model, normed, top2), rel=1e-4, abs=1e-6
            )
            if model.readout.softcap is None:
                assert attribution.logit == pytest.approx(
                    float(np.log(result.top_probs[row_index, position, 0]))
                    + float(result.log_normalizer[row_index, position]),
                    rel=1e-4,
                )
            checked += 1
    return checked


def test_exact_sum_gpt2_layernorm_every_row(gpt2_tiny):
    model, _ = gpt2_tiny
    assert _check_exact_sums(model, PROMPT) == 3 * (1 + 2 * model.n_layers)
    frame = attribute(model, PROMPT, position=-1, target=" the").to_frame()
    assert {"embed", "pos_embed", "attn", "attn_bias", "mlp", "norm_bias", "unembed_bias"} <= set(frame.component)
    assert (frame[frame.component == "attn"]["head"] >= 0).all() and (
        frame[frame.component != "attn"]["head"] == -1
    ).all()


def test_exact_sum_llama_rmsnorm_grouped_kv(stories):
    assert stories.cfg.n_key_value_heads < stories.cfg.n_heads  # grouped key/value heads
    _check_exact_sums(stories, STORY)


def test_exact_sum_neox_parallel_attention_and_mlp(neox_random):
    model, _ = neox_random
    assert _check_exact_sums(model, PROMPT, skip_mid=True) == 3 * (1 + model.n_layers)
    # Parallel blocks have no "after attention" residual.
    with pytest.raises(LensError) as error:
        cell_writes(model, PROMPT, position=2, row="L1 attn")
    assert "\n" not in str(error.value) and "parallel" in str(error.value)


def test_exact_sum_gemma2_is_of_the_pre_cap_logit(gemma2_random):
    model, _ = gemma2_random
    _check_exact_sums(model, PROMPT)
    result = run_lens(model, PROMPT, top_k=1)
    target = int(result.top_ids[-1, -1, 0])
    attribution = attribute(model, PROMPT, position=-1, target=target)
    shown = float(np.log(result.top_probs[-1, -1, 0]) + result.log_normalizer[-1, -1])
    assert attribution.softcapped_logit == pytest.approx(shown, rel=1e-4)
    assert attribution.softcapped_logit == pytest.approx(5.0 * np.tanh(attribution.logit / 5.0), rel=1e-6)
    assert any("before the cap" in note for note in attribution.notes)
    assert attribution.writes.per_head  # per head through the frozen post-attention norm


def test_tuned_lens_writes_go_through_the_translator(stories):
    lens = TunedLens.for_model(stories)
    torch.manual_seed(0)
    with torch.no_grad():
        for translator in lens.translators:
            translator.weight.normal_(0, 0.05)
            translator.bias.normal_(0, 0.1)
    result = run_lens(stories, STORY, top_k=1, lens=lens, keep_unembed_input=True)
    row = 2  # block 2's output: translated
    target = int(result.top_ids[row, -1, 0])
    attribution = attribute(stories, STORY, position=-1, target=target, row=result.layers[row], lens=lens)
    assert attribution.logit == pytest.approx(_expected_logit(stories, result.unembed_input[row, -1], target), rel=1e-4)
    assert "lens_bias" in set(attribution.to_frame().component)
    assert attribution.writes.lens_kind == "tuned"


# --- parity with forward hooks on the Hugging Face modules --------------------------------------

FAMILY_MODULES = {
    # final norm, per-layer (attention write, MLP write, output projection, post-attention norm)
    "gpt2": (
        "transformer.ln_f",
        "transformer.h.{i}.attn",
        "transformer.h.{i}.mlp",
        "transformer.h.{i}.attn.c_proj",
        None,
    ),
    "llama": (
        "model.norm",
        "model.layers.{i}.self_attn",
        "model.layers.{i}.mlp",
        "model.layers.{i}.self_attn.o_proj",
        None,
    ),
    "neox": (
        "gpt_neox.final_layer_norm",
        "gpt_neox.layers.{i}.attention",
        "gpt_neox.layers.{i}.mlp",
        "gpt_neox.layers.{i}.attention.dense",
        None,
    ),
    "gemma2": (
        "model.norm",
        "model.layers.{i}.post_attention_layernorm",
        "model.layers.{i}.post_feedforward_layernorm",
        "model.layers.{i}.self_attn.o_proj",
        "model.layers.{i}.post_attention_layernorm",
    ),
}


def _hf_writes(hf, family: str, token_ids: list[int]) -> dict[str, object]:
    """Attention and MLP writes, o_proj inputs and the final norm's input, from forward hooks."""
    final, attn, mlp, o_proj, _ = FAMILY_MODULES[family]
    seen: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name, use_input=False):
        def hook(module, args, output):
            value = args[0] if use_input else (output[0] if isinstance(output, tuple) else output)
            seen[name] = value[0].detach().float()

        return hook

    for i in range(hf.config.num_hidden_layers):
        hooks.append(hf.get_submodule(attn.format(i=i)).register_forward_hook(keep(f"attn{i}")))
        hooks.append(hf.get_submodule(mlp.format(i=i)).register_forward_hook(keep(f"mlp{i}")))
        hooks.append(hf.get_submodule(o_proj.format(i=i)).register_forward_hook(keep(f"z{i}", use_input=True)))
        hooks.append(hf.get_submodule(o_proj.format(i=i)).register_forward_hook(keep(f"o{i}")))
    hooks.append(hf.get_submodule(final).register_forward_hook(keep("resid", use_input=True)))
    with torch.no_grad():
        hf(torch.tensor([token_ids]))
    for hook in hooks:
        hook.remove()
    return seen


def _reference_norm(hf, family: str, module_name: str, x: torch.Tensor):
    """The norm's frozen linear map at residual x, written out per family (not read from the lens)."""
    norm = hf.get_submodule(module_name)
    weight = norm.weight.detach().float()
    if family in ("gpt2", "neox"):
        scale = torch.sqrt((x - x.mean()).pow(2).mean() + norm.eps)
        return lambda w: (w - w.mean(-1, keepdim=True)) / scale * weight
    if family == "gemma2":
        scale = torch.sqrt(x.pow(2).mean() + norm.eps)
        return lambda w: w / scale * (1 + weight)
    scale = torch.sqrt(x.pow(2).mean() + norm.variance_epsilon)
    return lambda w: w / scale * weight


def _head_outputs(hf, family: str, layer: int, z_in: torch.Tensor) -> torch.Tensor:
    """[heads, d_model]: each head's slice of the output projection's input times its weight slice."""
    module = hf.get_submodule(FAMILY_MODULES[family][3].format(i=layer))
    weight = module.weight.detach().float()
    if family != "gpt2":  # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        weight = weight.t()
    n_heads = hf.config.num_attention_heads
    return torch.einsum("hd,hdm->hm", z_in.view(n_heads, -1), weight.view(n_heads, -1, weight.shape[1]))


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "gemma2"])
def test_layer_and_head_writes_match_hugging_face_hooks(family, request):
    fixture = {"gpt2": "gpt2_tiny", "llama": "stories", "neox": "neox_random", "gemma2": "gemma2_random"}[family]
    if family == "llama":
        model, hf = request.getfixturevalue("stories"), request.getfixturevalue("stories_reference")
    else:
        model, hf = request.getfixturevalue(fixture)
    prompt = STORY if family == "llama" else PROMPT
    position = 5
    writes = cell_writes(model, prompt, position=position)
    assert writes.per_head
    seen = _hf_writes(hf, family, writes.token_ids)
    final = _reference_norm(hf, family, FAMILY_MODULES[family][0], seen["resid"][position])
    labels, grouped = writes.grouped()
    for i in range(model.n_layers):
        for kind, label in (("attn", f"L{i} attn"), ("mlp", f"L{i} MLP")):
            expected = final(seen[f"{kind}{i}"][position]).numpy()
            np.testing.assert_allclose(grouped[labels.index(label)], expected, atol=1e-5, err_msg=f"{family} {label}")
        heads = _head_outputs(hf, family, i, seen[f"z{i}"][position])
        post_norm = FAMILY_MODULES[family][4]
        if post_norm is not None:
            heads = _reference_norm(hf, family, post_norm.format(i=i), seen[f"o{i}"][position])(heads)
        mine = writes.directions[(writes.layers == i) & (np.asarray(writes.components) == "attn")]
        np.testing.assert_allclose(mine, final(heads).numpy(), atol=1e-5, err_msg=f"{family} L{i} heads")
        with_bias = (writes.layers == i) & np.isin(writes.components, ["attn", "attn_bias"])
        np.testing.assert_allclose(writes.directions[with_bias].sum(0), grouped[labels.index(f"L{i} attn")], atol=1e-6)


def test_head_attention_matches_hugging_face(gpt2_tiny):
    model, hf = gpt2_tiny
    pattern = head_attention(model, PROMPT, layer=1, head=2, position=6)
    ids = cell_writes(model, PROMPT, position=0).token_ids
    with torch.no_grad():
        reference = hf(torch.tensor([ids]), output_attentions=True).attentions[1][0, 2, 6, :7].numpy()
    np.testing.assert_allclose(pattern.weight.to_numpy(), reference, atol=1e-6)
    assert list(pattern.position) == list(range(7)) and pattern.weight.sum() == pytest.approx(1.0, abs=1e-5)


def test_real_model_stories260k_lily(stories, capsys):
    attribution = attribute(stories, STORY, position=-1, target=" Lily")
    result = run_lens(stories, STORY, targets=[" Lily"])
    assert attribution.logit == pytest.approx(float(result.target_logits[0, -1, -1]), rel=1e-4)
    frame = attribution.to_frame()
    labels = attribution.writes.part_labels()
    ranked = frame.assign(part=labels).sort_values("contribution", ascending=False)
    with capsys.disabled():
        print(f"\nstories260K, ' Lily' at the last position: logit {attribution.logit:.3f}; largest parts:")
        for part, value in ranked[["part", "contribution"]].head(6).itertuples(index=False):
            print(f"  {part:14s} {value:+.3f}")
        print(
            "  most negative:", ", ".join(f"{p} {v:+.3f}" for p, v in ranked[["part", "contribution"]].tail(3).values)
        )
    exported = json.loads(attribution.to_json())
    assert sum(part["contribution"] for part in exported["parts"]) == pytest.approx(exported["logit"], rel=1e-12)
    assert exported["target"] == "␣Lily" and exported["row"] == "L4 (output)" and exported["position"] == 13
    # The final MLP writes most of ' Lily' (the top part), and it also promotes ' Lily' by itself.
    assert ranked.part.iloc[0] == "L4 MLP"
    promoted = attribution.writes.promoted(stories, k=5, parts=["L4 MLP"])
    assert "␣Lily" in promoted.promoted.iloc[0]


def test_retarget_costs_no_forward_pass(stories):
    calls = []
    handle = stories.bridge.embed.original_component.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = attribute(stories, STORY, position=-1, target=" Lily")
        assert len(calls) == 1
        other = first.retarget(stories, " the", contrast=" Lily")
        again = first.retarget(stories, " Lily", contrast=" the")
        promoted = first.writes.promoted(stories, k=3)
        assert len(calls) == 1
    finally:
        handle.remove()
    fresh = attribute(stories, STORY, position=-1, target=" the", contrast=" Lily")
    np.testing.assert_allclose(other.contributions, fresh.contributions, rtol=1e-9)
    assert again.logit == pytest.approx(-other.logit, rel=1e-9)
    assert len(promoted) == 1 + 2 * stories.n_layers


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: attribute(m, STORY, position=40, target=" Lily"), "Position 40 is out of range"),
        (lambda m: attribute(m, STORY, position=-1, target=" Lilyanna"), "attribution needs a single token"),
        (lambda m: attribute(m, STORY, position=-1, target=" Lily", contrast=" Sue"), "contrast ' Sue' is 3 tokens"),
        (lambda m: attribute(m, STORY, position=1, target=" Lily", row="L9"), "There is no row 'L9'"),
        (lambda m: head_attention(m, STORY, layer=0, head=8, position=3), "Head 8 is out of range"),
        (lambda m: head_attention(m, STORY, layer=5, head=0, position=3), "Layer 5 is out of range"),
    ],
)
def test_bad_input_is_one_line(stories, call, message):
    with pytest.raises(LensError) as error:
        call(stories)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unsupported_norm_is_refused_in_one_line():
    class PowerNorm(torch.nn.Module):  # a norm that is neither LayerNorm nor RMSNorm
        def forward(self, x):
            return x / x.abs().mean(-1, keepdim=True)

    with pytest.raises(LensError) as error:
        freeze_norm(PowerNorm(), torch.randn(16), "final norm")
    assert "PowerNorm" in str(error.value) and "\n" not in str(error.value)


def test_per_layer_fallback_still_adds_up(stories, monkeypatch):
    """A family without per-head writes falls back to one attention part per layer, and says so."""
    monkeypatch.setattr(attribution_module, "_head_writes", lambda *args: None)
    attribution = attribute(stories, STORY, position=-1, target=" Lily")
    result = run_lens(stories, STORY, targets=[" Lily"])
    assert attribution.logit == pytest.approx(float(result.target_logits[0, -1, -1]), rel=1e-4)
    frame = attribution.to_frame()
    assert (frame[frame.component == "attn"]["head"] == -1).all() and len(frame[frame.component == "attn"]) == 5
    assert not attribution.writes.per_head and any("per-head" in note for note in attribution.notes)


def test_rows_named_as_the_lens_shows_them(stories):
    labels = [row.label for row in lens_rows(stories, ALL_POINTS)]
    assert cell_writes(stories, STORY, position=3, row=labels[0]).components == ["embed"]
    by_index = cell_writes(stories, STORY, position=3, row=1)
    assert by_index.row == "L1" and set(by_index.layers) == {-1, 0, 1}
    mid = cell_writes(stories, STORY, position=3, row="L2 attn")
    assert "mlp" not in [c for c, layer in zip(mid.components, mid.layers, strict=True) if layer == 2]


# --- the page, under Streamlit's AppTest ---------------------------------------------------------


def _summary(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Explaining"))


def test_page_reached_by_why_this_token(app, stories):  # noqa: F811
    app.run()
    app.button(key="why").click().run()
    assert_no_failure(app)
    assert app.title[0].value == "Attribution: why this token?"
    assert "pushed this word up or down at this point" in app.markdown[0].value
    assert app.query_params["attr_target"] == " Lily"
    expected = attribute(stories, STORY, position=-1, target=" Lily")
    assert f"{expected.logit:+.3f}" in _summary(app)
    layer_bars, head_map, sources = (chart_data(c) for c in charts(app))
    assert layer_bars.contribution.sum() == pytest.approx(expected.logit, rel=1e-5)
    frame = expected.to_frame()
    heads = frame[frame.component == "attn"].sort_values(["layer", "head"])
    np.testing.assert_allclose(
        head_map.sort_values(["layer", "head"]).contribution.to_numpy(), heads.contribution.to_numpy(), rtol=1e-6
    )
    strongest = heads.loc[heads.contribution.abs().idxmax()]
    assert app.selectbox(key="attr_head").value == f"L{strongest.layer} H{strongest['head']}"
    reference = head_attention(stories, STORY, layer=int(strongest.layer), head=int(strongest["head"]), position=-1)
    np.testing.assert_allclose(sources.sort_values("position").weight.to_numpy(), reference.weight.to_numpy())
    table = app.dataframe[0].value
    assert table.part.iloc[0] == "embed" and table.promoted.str.contains("␣Lily").any()


def test_page_target_and_contrast_never_rerun_the_model(app, stories):  # noqa: F811
    app.switch_page("pages/attribution.py").run()
    assert_no_failure(app)
    runs = dict(cached.runs)
    app.text_input(key="attr_contrast").set_value(" the").run()
    assert_no_failure(app)
    difference = attribute(stories, STORY, position=-1, target=" Lily", contrast=" the")
    assert f"{difference.logit:+.3f}" in _summary(app) and "␣the" in _summary(app)
    app.text_input(key="attr_target").set_value(" a").run()
    app.selectbox(key="attr_head").set_value("L0 H0").run()
    assert_no_failure(app)
    assert cached.runs["attribution"] == runs["attribution"] and cached.runs["lens"] == runs["lens"]
    app.selectbox(key="attr_position").set_value("3 ␣a").run()
    assert cached.runs["attribution"] == runs["attribution"] + 1  # another cell is another forward pass


def test_page_bad_target_is_one_line_and_the_app_keeps_working(app):  # noqa: F811
    app.query_params.update({"attr_target": " Lilyanna"})
    app.switch_page("pages/attribution.py").run()
    assert not app.exception
    assert len(app.error) == 1 and "needs a single token" in app.error[0].value and "\n" not in app.error[0].value
    app.text_input(key="attr_target").set_value(" Lily").run()
    assert_no_failure(app)
    assert len(charts(app)) == 3
