"""Hosting-safe input, round two (issue 23): each numbered defect, in the API and in the app.

1. the size guard counts every parameter (meta-device build); 2. user text never renders
as markdown; 3. the architecture is proven from model_type too; 4. odd ids and folders;
5. lens files are checked from their headers; 6. text and input bounds; 7. API argument
types; 8. the default budget leaves room; 9. the window slider logs no warning.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

import lens
import lens.sources
from lens import LensError, budget, corpus_stats, load_model, retarget, run_lens
from lens.attribution import attribute, cell_writes
from lens.cli import main
from lens.tuned import TunedLens, train_tuned_lens
from tests.conftest import ROOT, STORIES, require_shared, unescaped

STORY = "Once upon a time, there was a little girl named"
LONG = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog."
DEMO = ROOT / "models" / "demo"
DEMO_CONFIG = json.loads((DEMO / "config.json").read_text())
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
)


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def config_folder(tmp_path: Path, config: dict, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def demo_copy(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "demo-copy"
    shutil.copytree(DEMO, folder)
    config = {k: v for k, v in {**DEMO_CONFIG, **changes}.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _attention(d: int, heads: int, kv_heads: int, head_dim: int) -> int:
    return d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d


# 1. The size guard counts every parameter --------------------------------------------------------

# Each hostile config, and its parameter count by hand (embeddings, final norm, per layer).
THIN_DEEP = {**DEMO_CONFIG, "n_layer": 200_000, "n_embd": 4, "n_head": 1}
_D, _F = 4, DEMO_CONFIG["n_inner"]
THIN_DEEP_COUNT = (
    DEMO_CONFIG["vocab_size"] * _D
    + DEMO_CONFIG["n_positions"] * _D
    + 2 * _D
    + 200_000 * (2 * _D + (3 * _D * _D + 3 * _D) + (_D * _D + _D) + 2 * _D + (_D * _F + _F) + (_F * _D + _D))
)
MANY_EXPERTS = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **SMALL, "num_local_experts": 100_000}
MANY_EXPERTS_COUNT = 2 * 512 * 64 + 64 + 2 * (_attention(64, 4, 2, 16) + 64 * 100_000 + 100_000 * 3 * 64 * 128 + 128)
HUGE_HEAD = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SMALL, "head_dim": 10**6}
HUGE_HEAD_COUNT = 2 * 512 * 64 + 64 + 2 * (_attention(64, 4, 2, 10**6) + 3 * 64 * 128 + 128)
HOSTILE = {
    "thin-deep": (THIN_DEEP, THIN_DEEP_COUNT),
    "many-experts": (MANY_EXPERTS, MANY_EXPERTS_COUNT),
    "huge-head-dim": (HUGE_HEAD, HUGE_HEAD_COUNT),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_config_is_counted_exactly_and_refused_fast_and_small(name, tmp_path):
    """Refused before any allocation: under 2 s and 50 MB, with the exact count in the message."""
    config, expected = HOSTILE[name]
    budget.count_parameters({**config, "num_hidden_layers": 1, "n_layer": 1}, "warm-up")  # the class's import
    assert budget.count_parameters(config, name)[0] == expected
    folder = config_folder(tmp_path, config)
    before, started = rss_mb(), time.monotonic()
    with pytest.raises(LensError) as refused:
        load_model(str(folder), max_model_bytes=2_000_000_000)
    elapsed, grown = time.monotonic() - started, rss_mb() - before
    message = str(refused.value)
    assert elapsed < 2 and grown < 50, (elapsed, grown)
    assert one_line(message) and "GB in fp32); this server loads at most 2.0 GB (LENS_MAX_MODEL_GB)" in message


def test_deep_configs_extrapolate_exactly_where_layers_repeat(monkeypatch):
    """The one- and two-layer extrapolation equals a real three-layer model, first dense layer included."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, GPT2Config, GPT2LMHeadModel

    monkeypatch.setattr(budget, "DEEP_LAYERS", 1)
    deepseek = DeepseekV3Config(
        **{**SMALL, "num_hidden_layers": 3, "num_key_value_heads": 4},
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
    )
    for model in (GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2)), DeepseekV3ForCausalLM(deepseek)):
        config = model.config.to_dict()
        assert budget.count_parameters(config, "x") == (sum(p.numel() for p in model.parameters()), 3)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A reachable hub that answers 1M parameters for any repo; downloading weights fails the test."""
    from huggingface_hub import HfApi

    config = {}
    monkeypatch.setattr(lens.sources, "hub_offline", lambda: False)
    monkeypatch.setattr(lens.sources, "cached_snapshot", lambda repo_id: None)
    answer = SimpleNamespace(safetensors=SimpleNamespace(total=1_000_000), siblings=[])
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: answer)

    def fetch(repo_id, filename, **kwargs):
        path = tmp_path / "hub" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(config["config"]))
        return str(path)

    def no_download(*args, **kwargs):
        raise AssertionError("weights were downloaded")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fetch)
    monkeypatch.setattr(lens.sources, "download_snapshot", no_download)
    return config


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_small_hub_answer_does_not_let_a_huge_config_through(fake_hub, name):
    fake_hub["config"] = HOSTILE[name][0]
    with pytest.raises(LensError, match="GB in fp32") as refused:
        load_model("someone/small-looking", max_model_bytes=2_000_000_000)
    assert refused.value.__cause__ is None  # refused by the count, not by the failing download


def test_the_shared_size_check_takes_another_limit():
    """The nnsight loader calls the same function with NDIF's own limit and its name."""
    with pytest.raises(LensError, match=r"at most 0\.0 GB \(NDIF's limit\)"):
        budget.check_config(DEMO_CONFIG, "demo", limit_bytes=1000, limit_name="NDIF's limit")
    from transformers import GPT2LMHeadModel

    n_parameters = budget.check_config(DEMO_CONFIG, "demo", limit_bytes=10**9)
    assert n_parameters == sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(DEMO).parameters())


# 3. The architecture is proven from model_type too -------------------------------------------------


def test_model_type_without_architectures_is_refused_unless_proven(tmp_path):
    with pytest.raises(LensError, match="Architecture BertLMHeadModel is not supported") as refused:
        load_model(str(config_folder(tmp_path, {"model_type": "bert"})))
    assert one_line(str(refused.value))
    with pytest.raises(LensError, match="names GPT2LMHeadModel but its model_type 'llama' builds LlamaForCausalLM"):
        load_model(str(demo_copy(tmp_path / "mismatch", model_type="llama")))
    unnamed = load_model(str(demo_copy(tmp_path / "unnamed", architectures=None)))  # gpt2 is proven
    expected = run_lens(load_model("demo"), STORY, top_k=3)
    assert (run_lens(unnamed, STORY, top_k=3).top_ids == expected.top_ids).all()


# 4. Odd ids and folders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * 10_000, "10,000 characters long"),
        ("org/model\nINFO: all good", "control character ('\\n' at character 10)"),
    ],
)
def test_odd_ids_are_one_line_in_the_api(name, message):
    for call in (load_model, TunedLens.load):
        with pytest.raises(LensError) as refused:
            call(name)
        assert message in str(refused.value) and one_line(str(refused.value))


def test_zero_layers_and_a_missing_tokenizer_are_refused_at_load(tmp_path):
    with pytest.raises(LensError, match="has 0 layers in its config.json; the lens needs at least one"):
        load_model(str(demo_copy(tmp_path / "a", n_layer=0)))
    folder = demo_copy(tmp_path / "b")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(LensError, match="has no usable tokenizer .*tokenizer.json") as refused:
        load_model(str(folder))
    assert one_line(str(refused.value))


@pytest.fixture
def app(monkeypatch, tmp_path):
    require_shared()
    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(STORIES))
    monkeypatch.setenv("LENS_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("LENS_ALLOW_LOCAL", "LENS_MODEL_ALLOWLIST", "LENS_MAX_TOKENS", "LENS_MAX_TRAIN_STEPS"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["prompt"] = STORY
    return at


def test_odd_ids_are_one_line_in_the_app(app, monkeypatch):
    app.query_params.update({"model": "Other model id…", "model_id": "a" * 10_000})
    app.run()
    assert not app.exception
    assert [e for e in app.error if "10,000 characters long" in e.value and one_line(e.value)]
    for default in ("a" * 10_000, "org/model\nsecond line"):  # offline, the app opens on the demo with a note
        monkeypatch.setenv("LENS_DEFAULT_MODEL", default)
        fresh = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        fresh.query_params["prompt"] = STORY
        fresh.run()
        assert not fresh.exception and fresh.selectbox(key="model").value == "demo"
        assert all(one_line(e.value) for kind in ("error", "warning", "info") for e in fresh.get(kind))


# 5. Lens files are checked from their headers ---------------------------------------------------------


@pytest.fixture
def lens_folder(stories, tmp_path) -> Path:
    return TunedLens.for_model(stories).save(tmp_path / "lens")


def _rewrite_params(folder: Path, state: dict, compress: bool = False) -> None:
    torch.save(state, folder / "params.pt")
    if compress:  # what torch.load would inflate, byte for byte, before any check
        buffer = io.BytesIO()
        with zipfile.ZipFile(folder / "params.pt") as source, zipfile.ZipFile(buffer, "w") as target:
            for entry in source.infolist():
                target.writestr(entry.filename, source.read(entry), compress_type=zipfile.ZIP_DEFLATED)
        (folder / "params.pt").write_bytes(buffer.getvalue())


def test_an_inflating_params_file_is_refused_from_its_headers(lens_folder):
    state = torch.load(lens_folder / "params.pt", weights_only=True)
    _rewrite_params(lens_folder, {**state, "0.weight": torch.zeros(4096, 4096)}, compress=True)
    assert (lens_folder / "params.pt").stat().st_size < 1_000_000  # 64 MB of zeros, deflated
    before = rss_mb()
    with pytest.raises(LensError, match="params.pt holds a compressed or oversized record") as refused:
        TunedLens.load(lens_folder)
    assert rss_mb() - before < 20 and one_line(str(refused.value))
    _rewrite_params(lens_folder, {**state, "0.weight": torch.zeros(4096, 4096)})
    with pytest.raises(LensError, match="params.pt is [0-9,]+ bytes; tensors of this lens's shapes take at most"):
        TunedLens.load(lens_folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"1.weight": torch.zeros(64, 63)}, "tensor '1.weight' has shape [64, 63]; this lens needs [64, 64]"),
        ({"2.bias": torch.full((64,), float("nan"))}, "params.pt's tensor '2.bias' holds NaN or infinite values"),
        ({"0.bias": torch.full((64,), float("inf"))}, "params.pt's tensor '0.bias' holds NaN or infinite values"),
        ({"3.weight": torch.zeros(64, 64, dtype=torch.int64)}, "'3.weight' holds torch.int64, not floating-point"),
        ({"9.weight": torch.zeros(64, 64)}, "params.pt has a tensor '9.weight' this lens does not"),
    ],
)
def test_a_wrong_tensor_is_named_with_why(lens_folder, change, message):
    state = torch.load(lens_folder / "params.pt", weights_only=True)
    _rewrite_params(lens_folder, {**state, **change})
    with pytest.raises(LensError) as refused:
        TunedLens.load(lens_folder)
    assert message in str(refused.value) and one_line(str(refused.value))


def test_a_lens_config_of_a_million_thin_layers_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"base_model_name_or_path": "gpt2", "d_model": 1, "num_hidden_layers": 10**6})
    )
    started = time.monotonic()
    with pytest.raises(LensError, match="This tuned lens has about 2.0M parameters in 1,000,000 layers"):
        TunedLens.load(tmp_path)
    assert time.monotonic() - started < 1


# 6. Text and input bounds -----------------------------------------------------------------------------


def test_a_ten_megabyte_prompt_is_refused_before_tokenizing(stories):
    started = time.monotonic()
    with pytest.raises(LensError, match="10,000,000 characters long; model .* reads at most 512 tokens, which hold"):
        run_lens(stories, "a" * 10_000_000)
    assert time.monotonic() - started < 1


class _Endless(io.RawIOBase):
    """An endless stream of zero bytes, like /dev/zero or a pipe that never closes."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_the_cli_reads_an_endless_input_only_up_to_its_bound(monkeypatch, capsys):
    for argv, stdin in (
        (["--prompt-file", "/dev/zero", "--model", "demo"], None),
        (["-", "--model", "demo"], SimpleNamespace(buffer=io.BufferedReader(_Endless()))),
    ):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", stdin)
        before, started = rss_mb(), time.monotonic()
        assert main(argv) == 2
        assert time.monotonic() - started < 1 and rss_mb() - before < 50
        error = capsys.readouterr().err
        assert "longer than 4,000,000 bytes" in error and one_line(error)


# 7. API argument types: one LensError naming the argument ------------------------------------------------


def _writes(m):
    return cell_writes(m, STORY, position=-1)


API_CASES = [
    (lambda m: run_lens("demo", STORY), "model must be a loaded model"),
    (lambda m: run_lens(None, STORY), "model must be a loaded model"),
    (lambda m: run_lens(5, STORY), "model must be a loaded model"),
    (lambda m: corpus_stats("demo", [STORY]), "model must be a loaded model"),
    (lambda m: train_tuned_lens(None, [STORY]), "model must be a loaded model"),
    (lambda m: attribute(5, STORY, position=-1, target=" Lily"), "model must be a loaded model"),
    (lambda m: run_lens(m, STORY, targets=b" the"), "targets must be a token (str), a token id (int)"),
    (lambda m: run_lens(m, STORY, targets=True), "targets must be a token (str), a token id (int)"),
    (lambda m: run_lens(m, STORY, targets=None), "targets must be a token (str), a token id (int)"),
    (lambda m: run_lens(m, STORY, targets=[True]), "A target is a token (str) or a token id (int), not True"),
    (lambda m: run_lens(m, STORY, points=None), "points must be a residual point or a list of them"),
    (lambda m: run_lens(m, STORY, points=["resid_post", 5]), "Unknown residual point '5'"),
    (lambda m: run_lens(m, STORY, prepend_bos="yes"), "prepend_bos must be True, False or None, not str 'yes'"),
    (lambda m: run_lens(m, STORY, prepend_bos=1), "prepend_bos must be True, False or None, not int 1"),
    (lambda m: run_lens(m, STORY, keep_unembed_input="no"), "keep_unembed_input must be True or False"),
    (lambda m: run_lens(m, STORY, lens="x"), "lens must be a lens object"),
    (lambda m: run_lens(m, STORY, top_k=2.0), "top_k must be a whole number, not float 2.0"),
    (lambda m: run_lens(m, STORY, progress=5), "progress must be a function or None"),
    (lambda m: corpus_stats(m, 5), "texts must be a text or a list"),
    (lambda m: corpus_stats(m, b"Once upon"), "texts must be a text or a list"),
    (lambda m: corpus_stats(m, ["Once \udcff upon a time"]), "Text 1 is not valid text: character 6 is a lone"),
    (lambda m: corpus_stats(m, [STORY], lens="x"), "lens must be a lens object"),
    (lambda m: corpus_stats(m, [STORY], prepend_bos="yes"), "prepend_bos must be True, False or None"),
    (lambda m: corpus_stats(m, [STORY], progress="x"), "progress must be a function or None"),
    (lambda m: retarget(m, 5, [" Lily"]), "result must be a LensResult"),
    (lambda m: retarget(m, run_lens(m, STORY, keep_unembed_input=True), b" Lily"), "targets must be a token"),
    (lambda m: train_tuned_lens(m, [STORY], steps=1, seed=2**70), "seed must be a whole number from 0 to"),
    (lambda m: train_tuned_lens(m, [STORY], steps=1, seed="x"), "seed must be a whole number, not str"),
    (lambda m: train_tuned_lens(m, ["Once \udcff upon a time"], steps=1), "Text 1 is not valid text"),
    (lambda m: train_tuned_lens(m, 5, steps=1), "texts must be a text or a list of texts"),
    (lambda m: TunedLens.load(5), "A tuned lens is named by a string"),
    (lambda m: load_model("demo", backend="nnsight", remote=True, api_key=5), "api_key must be a string or None"),
    (lambda m: load_model("demo", device=5), "device must be a string or None"),
    (lambda m: load_model("demo", dtype="x"), "dtype must be a torch dtype"),
    (lambda m: load_model("demo", remote="yes"), "remote must be True or False"),
    (lambda m: load_model("demo", fast_attention="no"), "fast_attention must be True or False"),
    (lambda m: _writes(m).promoted(m, k=-1), "k must be a whole number of at least 1, not -1"),
    (lambda m: _writes(m).promoted(m, k=True), "k must be a whole number, not bool True"),
    (lambda m: _writes(m).promoted(m, parts=5), "parts must be a part label or a list of them"),
]


@pytest.mark.parametrize(("call", "message"), API_CASES)
def test_api_arguments_are_one_line_naming_the_argument(stories, call, message):
    with pytest.raises(LensError) as refused:
        call(stories)
    assert message in str(refused.value) and one_line(str(refused.value))


# 8. The default budget leaves room for the server and a second session ------------------------------------


def test_default_budget_is_half_of_what_is_free_after_working_room(monkeypatch, tmp_path):
    monkeypatch.setattr(budget, "available_memory_bytes", lambda: 22 * 10**9)
    assert budget.model_budget_bytes() == (22 * 10**9 - budget.WORKING_BYTES) // 2
    (tmp_path / "config.json").write_text(  # 16.6 GB in fp32: all free memory took it
        json.dumps({"base_model_name_or_path": "gpt2", "d_model": 20_000, "num_hidden_layers": 10})
    )
    with pytest.raises(LensError, match=r"\(16\.0 GB in fp32\); this server loads at most 10\.5 GB"):
        TunedLens.load(tmp_path)


# 2 and 9. The app: user text as typed, and a quiet server log ---------------------------------------------

HOSTILE_TEXT = [
    "[Download the update](https://evil.example/update.exe)",
    "![x](https://evil.example/pixel.png)",
    ":red[**Security alert**] https://evil.example www.evil.example",
]
MESSAGES = ("error", "warning", "info", "caption", "markdown", "success")


def messages(at: AppTest) -> list[str]:
    return [element.value for kind in MESSAGES for element in at.get(kind)]


def assert_nothing_rendered(at: AppTest) -> None:
    """No link or image in any message as CommonMark renders it, and no bare URL or email GFM would link.

    GFM finds bare URLs in the text after its escapes are undone, outside code spans.
    """
    parser = MarkdownIt("commonmark")
    for markdown in messages(at):
        html = parser.render(markdown)
        assert "<a " not in html and "<img" not in html, markdown
        text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", re.sub(r"(`+).*?\1", "", markdown))
        assert not re.search(r"(?i)https?://|www\.|[-.+\w]+@[-\w]+\.", text), markdown


@pytest.mark.parametrize("value", HOSTILE_TEXT)
@pytest.mark.parametrize(
    ("page", "key"),
    [
        (None, "lens_kind"),
        (None, "metric"),
        (None, "cell"),
        (None, "target"),
        (None, "bos"),
        ("pages/attribution.py", "attr_target"),
        ("pages/trajectories.py", "measure"),
    ],
)
def test_link_values_show_as_typed_and_never_as_markdown(app, page, key, value):
    if page is not None:
        app.switch_page(page)
    app.query_params[key] = value
    app.run()
    assert not app.exception
    assert_nothing_rendered(app)
    assert any(value in unescaped(markdown) for markdown in messages(app)), messages(app)


@pytest.mark.parametrize("value", HOSTILE_TEXT[:2])
def test_a_hostile_model_id_shows_as_typed(app, value):
    app.query_params.update({"model": "Other model id…", "model_id": value})
    app.run()
    assert not app.exception
    assert_nothing_rendered(app)
    assert [e for e in app.error if value in unescaped(e.value)]


def test_window_slider_writes_no_warning_to_the_server_log(app, monkeypatch, caplog):
    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)  # Streamlit logs it once a process
    app.query_params["prompt"] = LONG
    with caplog.at_level(logging.WARNING):
        app.run()
        app.text_area(key="prompt").set_value(LONG + " Then it rained.").run()
    assert not app.exception
    assert not [r for r in caplog.records if "Session State API" in r.getMessage()]
