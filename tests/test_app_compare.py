"""Compare, Trajectories and Dataset under AppTest: targets across vocabularies, links, exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lens import run_lens
from lens.compare import token_text
from tests import test_app as base
from tests.conftest import STORIES, unescaped
from tests.test_app import STORY, assert_no_failure, chart_data, charts
from ui import exports

app = base.app  # the same fixtures: the real app.py on stories260K, lenses kept in a temporary folder
lens_cache = base.lens_cache

STORIES_LABEL = "stories260K (local folder)"
DEMO_LABEL = "Demo (offline)"


@pytest.fixture(scope="module")
def demo():
    from lens import load_model

    return load_model("demo", device="cpu")


def _compare_models(app, first: str, second: str, target: str | None, follow: str | None = None):
    app.switch_page("pages/compare.py")
    app.query_params.update({"compare_mode": "One prompt, two models", "model": first, "model_b": second})
    if target:
        app.query_params["target"] = target
    if follow:
        app.query_params["compare_follow"] = follow
    app.run()
    assert_no_failure(app)
    return chart_data(charts(app)[2])  # heatmap, heatmap, target lines (no difference across depths)


@pytest.mark.parametrize("first", [DEMO_LABEL, STORIES_LABEL])
def test_two_models_with_different_vocabularies_follow_one_answer_as_text(app, stories, demo, first):
    """The demo's answer id is far outside stories260K's 512 tokens: it must be re-tokenized, not reused."""
    second = STORIES_LABEL if first == DEMO_LABEL else DEMO_LABEL
    lines = _compare_models(app, first, second, None)
    models = {DEMO_LABEL: demo, STORIES_LABEL: stories}
    answer = int(run_lens(models[first], STORY, top_k=1).top_ids[-1, -1, 0])
    text = token_text(models[first], answer)
    for label, model in models.items():
        expected = run_lens(model, STORY, top_k=1, targets=[answer if label == first else text])
        got = lines[lines.source == label].sort_values("row").value.to_numpy()
        assert np.allclose(got, expected.target_probs[0, :, -1], atol=1e-6), label
    assert not set(lines.depth) - {d for d in lines.depth if 0 < d <= 1}  # relative depth: outputs at 1
    assert lines.groupby("source").depth.max().eq(1.0).all()


def test_two_models_each_follow_their_own_answer(app, stories, demo):
    lines = _compare_models(app, DEMO_LABEL, STORIES_LABEL, None, follow="each model's own answer")
    for label, model in {DEMO_LABEL: demo, STORIES_LABEL: stories}.items():
        final = lines[lines.source == label].sort_values("row").value.iloc[-1]
        assert np.isclose(final, run_lens(model, STORY, top_k=1).top_probs[-1, -1, 0], atol=1e-6)


def test_two_models_with_a_typed_target(app, stories, demo):
    lines = _compare_models(app, DEMO_LABEL, STORIES_LABEL, " Lily")
    for label, model in {DEMO_LABEL: demo, STORIES_LABEL: stories}.items():
        expected = run_lens(model, STORY, top_k=1, targets=[" Lily"]).target_probs[0, :, -1]
        assert np.allclose(lines[lines.source == label].sort_values("row").value.to_numpy(), expected, atol=1e-6)
    assert any(unescaped(m.value).startswith(DEMO_LABEL) for m in app.warning)  # " Lily" is several demo tokens


@pytest.mark.parametrize("target", [None, " Lily"])
def test_two_prompts_side_by_side_with_their_difference(app, stories, target):
    boy = "Once upon a time, there was a little boy named"
    app.switch_page("pages/compare.py")
    app.query_params["prompts"] = f"{STORY}\n{boy}"
    if target:
        app.query_params["target"] = target
    app.run()
    assert_no_failure(app)
    elements = charts(app)
    spec = json.loads(elements[0].proto.spec)
    assert spec["width"] == "container"  # drawn with width="stretch": fits its column
    difference = chart_data(elements[2])
    a, b = (run_lens(stories, p, top_k=1) for p in (STORY, boy))
    width = difference.column.nunique()
    expected = b.top_probs[:, -width:, 0] - a.top_probs[:, -width:, 0]
    assert np.allclose(np.sort(difference.value.to_numpy()), np.sort(expected.ravel()), atol=1e-6)
    scale = json.loads(elements[2].proto.spec)["layer"][0]["encoding"]["color"]["scale"]
    stops = scale["domain"]  # diverging stops, symmetric about 0 (the middle one)
    assert stops[len(stops) // 2] == 0 and stops[0] == -stops[-1]


def test_comparison_files_hold_every_run_and_its_target(stories):
    results = {
        "#1": run_lens(stories, STORY, top_k=2, targets=[" Lily"]),
        "#2": run_lens(stories, "Once upon a time", top_k=2, targets=[" there"]),
    }
    csv, json_text = exports.comparison_files(results)
    import io

    import pandas as pd

    table = pd.read_csv(io.BytesIO(csv))
    assert set(table.run) == {"#1", "#2"}
    assert set(table.target) == {"␣Lily", "␣there"}
    runs = json.loads(json_text)["runs"]
    assert [r["run"] for r in runs] == ["#1", "#2"] and runs[1]["result"]["targets"] == ["␣there"]


def test_trajectories_follow_the_position(app, stories):
    app.switch_page("pages/trajectories.py").run()
    assert_no_failure(app)
    expected = run_lens(stories, STORY, top_k=5)
    app.selectbox(key="position").set_value(3).run()
    assert_no_failure(app)
    lines = chart_data(charts(app)[0])
    assert set(lines.token) == set(expected.top_tokens[-1, 3])
    assert app.query_params["track"] == ",".join(str(int(i)) for i in expected.top_ids[-1, 3])


def test_trajectories_link_reproduces_every_followed_token(app, stories):
    ids = [int(i) for i in run_lens(stories, STORY, top_k=6).top_ids[-1, -1]]
    app.switch_page("pages/trajectories.py")
    app.query_params["track"] = ",".join(map(str, ids))
    app.run()
    assert_no_failure(app)
    lines = chart_data(charts(app)[0])
    assert set(lines.token) == set(stories.token_name.many(ids)) and lines.token.nunique() == 6
    spec = json.loads(charts(app)[0].proto.spec)
    encodings = [layer["encoding"] for layer in spec["layer"]]
    assert any("strokeDash" in e for e in encodings) and any("shape" in e for e in encodings)


def test_trajectories_cap_the_followed_tokens(app, stories):
    ids = list(range(3, 40))
    app.switch_page("pages/trajectories.py")
    app.query_params["track"] = ",".join(map(str, ids))
    app.run()
    assert_no_failure(app)
    assert chart_data(charts(app)[0]).token.nunique() == 8


def test_dataset_pasted_text_round_trips_through_the_link(app, monkeypatch):
    text = "One day, a little girl named Lily found a needle.\nShe was happy."
    app.switch_page("pages/dataset.py")
    app.query_params.update({"corpus_source": "Paste texts", "corpus_text": text})
    app.run()
    assert_no_failure(app)
    assert app.text_area(key="corpus_text").value == text
    assert app.query_params["corpus_text"] == text
    spec = json.loads(charts(app)[0].proto.spec)
    assert spec["layer"][0]["encoding"]["y"]["axis"]["format"] in (",~r", ".0%")
    long = "x" * 2500
    app.text_area(key="corpus_text").set_value(long).run()
    assert app.query_params["corpus_text"] == long[:2000]
    assert any("first 2,000 characters" in c.value for c in app.caption)


def test_logit_against_tuned_lens_with_a_target(app, stories, lens_cache):
    from lens.tuned import train_tuned_lens
    from ui import lenses

    trained = train_tuned_lens(stories, [STORY + " She had a red ball."] * 5, steps=20, window=16, seed=0)
    trained.save(lenses.trained_folder(stories.name, "test-lens"))
    app.switch_page("pages/compare.py")
    app.query_params.update({"compare_mode": "Logit, tuned and Jacobian lens", "target": " Lily"})
    app.run()
    assert_no_failure(app)
    lines = chart_data(charts(app)[3])
    tuned = run_lens(stories, STORY, top_k=1, targets=[" Lily"], lens=trained).target_probs[0, :, -1]
    assert np.allclose(lines[lines.source == "Tuned lens"].sort_values("row").value.to_numpy(), tuned, atol=1e-6)


def test_tuned_lens_page_lists_the_lens_it_just_trained(app, lens_cache):
    app.switch_page("pages/lenses.py").run()
    app.slider(key="train_steps").set_value(10)
    app.select_slider(key="train_window").set_value(32).run()
    app.button(key="train").click().run()
    assert_no_failure(app)
    assert any("Trained and saved" in m.value for m in app.success)
    assert not any("No tuned lens for this model yet" in m.value for m in app.info)
    assert any("Tuned lenses for this model" in m.value for m in app.markdown)


def test_compare_demo_button_sets_the_second_model_or_is_not_offered(app):
    app.switch_page("pages/compare.py")
    app.query_params.update({"compare_mode": "One prompt, two models", "model_b": "GPT-2 small (124M)"})
    app.run()  # offline: GPT-2 can't be fetched
    assert any("Could not" in e.value for e in app.error)
    app.button(key="use_demo").click().run()
    assert_no_failure(app)
    assert app.selectbox(key="model_b").value == "demo" and app.selectbox(key="model").value == str(STORIES)
    app.selectbox(key="model").set_value("demo").run()
    app.selectbox(key="model_b").set_value("openai-community/gpt2").run()
    assert any("Could not" in e.value for e in app.error)
    assert not [b for b in app.button if b.key == "use_demo"]  # the demo is already the first model
