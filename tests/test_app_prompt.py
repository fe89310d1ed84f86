"""Prompt and target under AppTest: a target's two spellings, whitespace, token chips, Attribution's one target."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from lens import load_model, run_lens
from tests import test_app as base
from tests.conftest import GPT2_TOKENIZER, ROOT, require_shared, shown
from tests.test_app import assert_no_failure

app = base.app  # stories260K

PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory):
    """Two layers of GPT-2's shape, random weights, the real GPT-2 tokenizer (Paris is 40313, ' Paris' 6342)."""
    require_shared()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("small-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2)).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(folder)
    return folder


@pytest.fixture
def gpt2_app(monkeypatch, small_gpt2, tmp_path):
    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(small_gpt2))
    monkeypatch.setenv("LENS_CACHE_DIR", str(tmp_path))
    for name in ("LENS_ALLOW_LOCAL", "LENS_MODEL_ALLOWLIST", "LENS_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["prompt"] = PROMPT
    return at


def _sidebar_captions(at: AppTest) -> list[str]:
    return [shown(c.value) for c in at.sidebar.caption]


def test_bare_target_says_which_spelling_it_follows_and_switches_in_one_click(gpt2_app, small_gpt2):
    gpt2_app.query_params["target"] = "Paris"
    gpt2_app.run()
    assert_no_failure(gpt2_app)
    model = load_model(str(small_gpt2))
    spaced = run_lens(model, PROMPT, top_k=1, targets=[6342])
    p = float(spaced.target_probs[0, -1, -1])
    expected = f"{p:.1%}" if p >= 0.001 else f"{100 * p:.2g}%"
    line = next(c for c in _sidebar_captions(gpt2_app) if "Following" in c)
    assert "id 40313" in line and "id 6342" in line and expected in line, line
    button = next(b for b in gpt2_app.sidebar.button if b.key == "follow_twin")
    button.click().run()
    assert_no_failure(gpt2_app)
    assert gpt2_app.sidebar.text_input(key="target").value == " Paris"
    line = next(c for c in _sidebar_captions(gpt2_app) if "Following" in c)
    assert line.startswith("Following ␣Paris (id 6342)"), line


def test_whitespace_at_either_end_is_named_and_trimmed_in_one_click(gpt2_app):
    gpt2_app.query_params["prompt"] = PROMPT + " "
    gpt2_app.run()
    assert_no_failure(gpt2_app)
    assert any("ends with whitespace" in w.value for w in gpt2_app.sidebar.warning)
    gpt2_app.sidebar.button(key="trim_prompt").click().run()
    assert_no_failure(gpt2_app)
    assert gpt2_app.sidebar.text_area(key="prompt").value == PROMPT
    assert not any("whitespace" in w.value for w in gpt2_app.sidebar.warning)


def test_prompt_tokens_show_as_escaped_chips(gpt2_app, small_gpt2):
    prompt = "A <b>bold</b> & plain city of"
    gpt2_app.query_params["prompt"] = prompt
    gpt2_app.run()
    assert_no_failure(gpt2_app)
    chips = [h.proto.body for h in gpt2_app.sidebar.get("html") if "lens-chip" in h.proto.body]
    assert len(chips) == 1
    expected = run_lens(load_model(str(small_gpt2)), prompt, top_k=1)
    assert chips[0].count('class="lens-chip"') == expected.n_positions
    assert "<b>" not in chips[0] and "</b>" not in chips[0] and "&lt;" in chips[0] and "&amp;" in chips[0]
    for token_id in expected.token_ids:
        assert f"id {token_id}" in chips[0]


def test_attribution_explains_the_sidebars_target_unless_its_own_box_says_otherwise(app):
    app.switch_page("pages/attribution.py")
    app.query_params.update({"target": " Lily", "attr_row": "L2", "attr_position": "5 ␣time"})
    app.run()
    assert_no_failure(app)
    assert any("of ␣Lily at row" in shown(m.value) for m in app.markdown)
    assert not any("its own box" in c.value for c in app.caption)
    app.text_input(key="attr_target").set_value(" a").run()
    assert_no_failure(app)
    assert any("of ␣a at row" in shown(m.value) for m in app.markdown)
    assert any("its own box" in c.value for c in app.caption)


TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_gpt2(small_gpt2, tmp_path_factory):
    """The small model with a chat template in its tokenizer."""
    import shutil

    from transformers import GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("chat-gpt2")
    shutil.copytree(small_gpt2, folder, dirs_exist_ok=True)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(small_gpt2))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_chat_template_is_offered_only_with_one_and_said_on_the_page_when_on(gpt2_app, chat_gpt2, monkeypatch):
    gpt2_app.run()
    assert_no_failure(gpt2_app)
    assert not [t for t in gpt2_app.sidebar.toggle if t.key == "chat_template"]  # GPT-2's tokenizer has none
    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(chat_gpt2))
    chat_app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    chat_app.query_params.update({"prompt": PROMPT, "chat_template": "true"})
    chat_app.run()
    assert_no_failure(chat_app)
    assert chat_app.sidebar.toggle(key="chat_template").value
    assert any("Chat template on" in i.value for i in chat_app.info)
    expected = run_lens(load_model(str(chat_gpt2)), f"<|user|>{PROMPT}<|bot|>", top_k=1)
    chips = next(h.proto.body for h in chat_app.sidebar.get("html") if "lens-chip" in h.proto.body)
    assert chips.count('class="lens-chip"') == expected.n_positions
    assert "&lt;" in chips and "bot" in chips
