"""The dashboard under Streamlit's AppTest, on the real stories260K model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from lens import run_lens
from tests.conftest import ROOT, STORIES, require_shared, unescaped
from ui import cached

STORY = "Once upon a time, there was a little girl named"


@pytest.fixture
def app(monkeypatch):
    require_shared()
    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(STORIES))
    monkeypatch.delenv("LENS_ALLOW_LOCAL", raising=False)
    monkeypatch.delenv("LENS_MODEL_ALLOWLIST", raising=False)
    monkeypatch.delenv("LENS_MAX_TOKENS", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["prompt"] = STORY
    return at


def charts(at: AppTest):
    """The page's charts, less the Lens heatmap's colour legend and layer names (charts of their own,
    drawn outside the heatmap's scrolling frame): the heatmap comes first, as before."""
    return [c for c in at.get("vega_lite_chart") if not _axis_or_legend(c)]


def _axis_or_legend(element) -> bool:
    datasets = element.proto.datasets
    return len(datasets) == 1 and set(chart_data(element).columns) in ({"value"}, {"layer"})


def chart_data(element):
    return convert_arrow_bytes_to_pandas_df(element.proto.datasets[0].data.data)


def assert_no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_lens_page_heatmap_holds_the_engine_top1(app, stories):
    app.run()
    assert_no_failure(app)
    heatmap = chart_data(charts(app)[0])
    expected = run_lens(stories, STORY, top_k=5)
    for row, position, top1 in heatmap[["row", "position", "top1"]].itertuples(index=False):
        assert top1 == expected.top_tokens[row, position, 0]
    assert set(heatmap.position) == set(range(expected.n_positions))  # 14 tokens: all shown, no window
    top_bars = chart_data(charts(app)[1])
    assert top_bars.token.iloc[0] == "␣Lily"


LONG_STORY = STORY + " Lily. She had a big red ball and a little dog named Max."


def test_switching_metric_window_and_target_never_reruns_the_model(app, stories):
    app.query_params["prompt"] = LONG_STORY
    app.run()
    runs_before = cached.runs["lens"]
    app.selectbox(key="metric").set_value("entropy").run()
    assert_no_failure(app)
    heatmap = chart_data(charts(app)[0])
    expected = run_lens(stories, LONG_STORY)
    assert expected.n_positions > 16  # long enough for the window
    for row, position, value in heatmap[["row", "position", "value"]].itertuples(index=False):
        assert np.isclose(value, expected.entropy[row, position], atol=1e-6)
    app.slider(key="window").set_value((0, 11)).run()
    app.text_input(key="target").set_value(" Lily").run()
    app.selectbox(key="metric").set_value("target_rank").run()
    assert_no_failure(app)
    ranks = chart_data(charts(app)[0])
    last = ranks[(ranks.row == ranks.row.max())]
    assert set(last.position) == set(range(12))
    assert cached.runs["lens"] == runs_before
    spec = json.loads(charts(app)[0].proto.spec)
    assert spec["layer"][0]["encoding"]["color"]["scale"]["type"] == "log"


def test_query_params_reproduce_the_view(app):
    app.query_params.update({"target": " Lily", "top_k": "3", "metric": "Target probability", "bos": "off"})
    app.run()
    assert_no_failure(app)
    assert app.text_input(key="target").value == " Lily"
    assert app.slider(key="top_k").value == 3
    assert app.selectbox(key="metric").value == "target_prob"
    heatmap = chart_data(charts(app)[0])
    assert {"top 1", "top 2", "top 3"} <= set(heatmap.columns) and "top 4" not in heatmap.columns
    assert heatmap.token.iloc[0] != "<s>"  # BOS off
    assert np.isclose(heatmap.value.max(), heatmap[heatmap.top1 == "␣Lily"].value.max())


def test_trajectories_page(app, stories):
    app.switch_page("pages/trajectories.py").run()
    assert_no_failure(app)
    lines = chart_data(charts(app)[0])
    expected = run_lens(stories, STORY, top_k=5)
    assert set(lines.token) == set(expected.top_tokens[-1, -1])
    lily = lines[(lines.token == "␣Lily")].sort_values("row").value.to_numpy()
    final_index = list(expected.top_tokens[-1, -1]).index("␣Lily")
    assert np.isclose(lily[-1], expected.top_probs[-1, -1, final_index], atol=1e-6)
    app.radio(key="measure").set_value("rank").run()
    ranks = chart_data(charts(app)[0])
    assert ranks[(ranks.token == "␣Lily") & (ranks.row == ranks.row.max())].value.iloc[0] == 1


def test_compare_page_two_prompts(app):
    app.switch_page("pages/compare.py")
    app.query_params["prompts"] = f"{STORY}\nOnce upon a time, there was a little boy named"
    app.run()
    assert_no_failure(app)
    elements = charts(app)
    assert len(elements) == 5  # two heatmaps, their difference, the target chart, the divergence chart
    divergence = chart_data(elements[4])
    assert (divergence.value >= 0).all() and (divergence.value <= 1).all()
    assert divergence.sort_values("layer").value.iloc[-1] > 0.5  # Lily vs a boy's name at the output


def test_compare_page_two_models_with_other_depth_explains(app):
    app.switch_page("pages/compare.py")
    app.query_params["compare_mode"] = "One prompt, two models"
    app.run()
    assert_no_failure(app)
    assert app.selectbox(key="model_b").value == "demo"  # the offline second model: 6 layers against 5
    assert len(charts(app)) == 3  # two heatmaps and the target chart; no divergence across depths
    assert any("different numbers of layers" in i.value for i in app.info)


@pytest.mark.parametrize(
    ("params", "env", "message"),
    [
        ({"prompt": " "}, {}, "prompt is empty"),
        ({}, {"LENS_MAX_TOKENS": "8"}, "at most 8"),
        ({"model": "Other model id…", "model_id": "nobody/no-such-model"}, {}, "Could not download"),
        ({"model": "Other model id…", "model_id": "/tmp"}, {}, "LENS_ALLOW_LOCAL"),
        (
            {"model": "Other model id…", "model_id": "EleutherAI/pythia-70m"},
            {"LENS_MODEL_ALLOWLIST": "openai-community/gpt2"},
            "only offers",
        ),
    ],
)
def test_bad_input_shows_one_friendly_error(app, monkeypatch, params, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app.query_params.update(params)
    app.run()
    assert not app.exception
    assert any(message in unescaped(e.value) for e in app.error), [e.value for e in app.error]
    assert len(app.sidebar.text_area) == 1  # the rest of the app is still there


def test_unreachable_model_offers_the_demo_in_one_click(app):
    app.query_params.update({"model": "Other model id…", "model_id": "nobody/no-such-model"})
    app.run()
    assert app.button(key="use_demo")
    app.button(key="use_demo").click().run()
    assert app.selectbox(key="model").value == "demo"


def test_several_token_target_warns(app):
    app.query_params.update({"target": "Lilyanna", "metric": "Target probability"})
    app.run()
    assert not app.exception
    assert any("first token" in w.value for w in app.warning)


def test_dataset_page_with_the_bundled_sample(app):
    app.switch_page("pages/dataset.py").run()
    assert_no_failure(app)
    elements = charts(app)
    assert len(elements) == 6
    for element in elements:
        points = chart_data(element)
        assert len(points) == 5 and points.layer.iloc[-1] == "L4 (output)"  # one point per layer
    loss = chart_data(elements[0])
    assert loss.cross_entropy.iloc[-1] < loss.cross_entropy.iloc[0]


@pytest.mark.parametrize(
    ("upload", "env", "message"),
    [
        (("empty.txt", b"", "text/plain"), {}, "is empty"),
        (("latin1.txt", "café au lait\n".encode("latin-1"), "text/plain"), {}, "not UTF-8"),
        (("stories.csv", b"title,body\nA,Once upon a time\n", "text/csv"), {}, "no column named 'text'"),
        (
            ("big.txt", ("Once upon a time there was a cat.\n" * 400).encode(), "text/plain"),
            {"LENS_MAX_CORPUS_TOKENS": "50"},
            "only the first 50 tokens",
        ),
    ],
)
def test_dataset_page_bad_files_get_a_message(app, monkeypatch, upload, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app.switch_page("pages/dataset.py")
    app.query_params["corpus_source"] = "Upload a file"
    app.run()
    app.get("file_uploader")[0].set_value(upload).run()
    assert not app.exception
    shown = [unescaped(e.value) for e in app.error] + [unescaped(w.value) for w in app.warning]
    assert any(message in text for text in shown), shown
    assert len(app.sidebar.text_area) == 1


def test_dataset_page_csv_column_choice(app):
    app.switch_page("pages/dataset.py")
    app.query_params["corpus_source"] = "Upload a file"
    app.run()
    data = b"title,body\nA,Once upon a time there was a girl.\nB,Tom had a big red ball.\n"
    app.get("file_uploader")[0].set_value(("stories.csv", data, "text/csv")).run()
    app.selectbox(key="corpus_column").set_value("body").run()
    assert_no_failure(app)
    assert len(charts(app)) == 6


@pytest.fixture
def lens_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LENS_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_lens_selector_uses_a_tuned_lens_found_on_disk(app, stories, lens_cache):
    from lens.tuned import train_tuned_lens
    from ui import lenses

    trained = train_tuned_lens(stories, [STORY + " She had a red ball."] * 5, steps=20, window=16, seed=0)
    trained.save(lenses.trained_folder(stories.name, "test-lens"))
    app.query_params.update({"lens_kind": "Tuned lens"})
    app.run()
    assert_no_failure(app)
    assert app.selectbox(key="tuned_lens").value == "Trained here: test-lens"
    heatmap = chart_data(charts(app)[0])
    expected = run_lens(stories, STORY, top_k=5, lens=trained)
    plain = run_lens(stories, STORY, top_k=5)
    assert not np.array_equal(expected.top_tokens[..., 0], plain.top_tokens[..., 0])
    for row, position, top1 in heatmap[["row", "position", "top1"]].itertuples(index=False):
        assert top1 == expected.top_tokens[row, position, 0]
    app.switch_page("pages/compare.py")
    app.query_params["compare_mode"] = "Logit, tuned and Jacobian lens"
    app.run()
    assert_no_failure(app)
    assert len(charts(app)) == 6  # two heatmaps, their difference, the target chart, the divergence, KL per layer


def test_tuned_lens_page_trains_saves_and_reuses(app, lens_cache):
    app.switch_page("pages/lenses.py").run()
    assert_no_failure(app)
    app.slider(key="train_steps").set_value(10)
    app.select_slider(key="train_window").set_value(32).run()
    app.button(key="train").click().run()
    assert_no_failure(app)
    assert any("Trained and saved" in m.value for m in app.success)
    assert len(list(lens_cache.rglob("params.pt"))) == 1
    app.run()
    assert any("already trained" in m.value for m in app.success)
    assert len(charts(app)) == 1  # the loss curve


def test_tuned_lens_without_any_lens_explains(app, lens_cache):
    app.query_params.update({"lens_kind": "Tuned lens"})
    app.run()
    assert_no_failure(app)
    assert any("No tuned lens for this model yet" in c.value for c in app.sidebar.caption)


def test_offline_start_opens_on_the_demo_with_a_note(monkeypatch):
    """No LENS_DEFAULT_MODEL and no hub: the app opens on the demo at once and says why, with no error."""
    monkeypatch.delenv("LENS_DEFAULT_MODEL", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert_no_failure(at)
    assert at.selectbox(key="model").value == "demo"
    notes = [unescaped(i.value) for i in at.info if "couldn't be downloaded" in i.value]
    assert len(notes) == 1 and "GPT-2 small" in notes[0] and "LENS_DEFAULT_MODEL" in notes[0]
    heatmap = chart_data(charts(at)[0])
    assert heatmap.layer.nunique() == 6 and heatmap.top1.str.len().min() > 0


def test_new_prompt_drops_the_old_selection(app):
    """A cell picked on one prompt must not follow to the next: the details belong to the outlined cell."""
    app.run()
    app.selectbox(key="pick_row").set_value(2).run()
    app.selectbox(key="pick_position").set_value(3).run()
    assert _outlined(app) == (2, 3) and _bars_title(app).endswith("after 3 ␣a")
    assert app.query_params["cell"] == ["2,3"] or app.query_params["cell"] == "2,3"
    app.sidebar.text_area(key="prompt").set_value("One day, a little boy named Tom went to the park").run()
    assert_no_failure(app)
    heatmap = chart_data(charts(app)[0])
    rows, positions = heatmap.row.max(), heatmap.position.max()
    last_token = heatmap[heatmap.position == positions].token.iloc[0]
    assert _outlined(app) == (rows, positions)
    assert app.selectbox(key="pick_row").value == rows and app.selectbox(key="pick_position").value == positions
    assert _bars_title(app) == f"after {positions} {last_token}" and "␣p" in set(heatmap.token)


def _outlined(at: AppTest) -> tuple[int, int]:
    """The cell the heatmap draws outlined: its selection parameter's value in the spec."""
    spec = json.loads(charts(at)[0].proto.spec)
    params = spec.get("params", []) + [p for layer in spec["layer"] for p in layer.get("params", [])]
    value = next(p for p in params if p["name"] == "cell")["value"][0]
    return value["row"], value["position"]


def _bars_title(at: AppTest) -> str:
    title = json.loads(charts(at)[1].proto.spec)["title"]
    return title["subtitle"]


def test_link_with_ids_and_a_cell(app):
    """Hand-written ids (not display labels) and the selected cell are taken from the link."""
    app.query_params.update({"model": "demo", "metric": "target_prob", "target": " LORD", "cell": "3,2"})
    app.query_params["prompt"] = "Therefore thus saith the"
    app.run()
    assert_no_failure(app)
    assert not app.warning
    assert app.selectbox(key="model").value == "demo"
    assert app.selectbox(key="metric").value == "target_prob"
    heatmap = chart_data(charts(app)[0])
    assert heatmap.layer.nunique() == 6  # the demo, not the server's default model
    assert _outlined(app) == (3, 2)
    assert app.selectbox(key="pick_row").value == 3 and app.selectbox(key="pick_position").value == 2


@pytest.mark.parametrize(
    ("params", "shown"),
    [({"metric": "no_such_metric"}, "no_such_metric"), ({"bos": "sometimes"}, "sometimes"), ({"cell": "x"}, "'x'")],
)
def test_unusable_link_values_warn(app, params, shown):
    app.query_params.update(params)
    app.run()
    assert not app.exception
    assert any(shown in unescaped(w.value) and "link" in w.value for w in app.warning), [w.value for w in app.warning]
    assert charts(app)  # the page still draws, on the default


def test_link_with_an_unlisted_model_id_becomes_a_typed_model(app):
    app.query_params.update({"model": "nobody/no-such-model"})
    app.run()
    assert app.selectbox(key="model").value == "__other__"
    assert app.text_input(key="model_id").value == "nobody/no-such-model"
    assert any("Could not download" in e.value for e in app.error)


def test_other_model_id_starts_with_a_hint_not_an_error(app):
    app.query_params.update({"model": "Other model id…"})
    app.run()
    assert not app.exception and not app.error
    assert any("Type a model id" in i.value for i in app.info)


def test_title_names_the_tuned_lens_and_the_start_token(app, stories, lens_cache):
    from lens.tuned import train_tuned_lens
    from ui import lenses

    app.run()
    assert app.title[0].value == "Logit lens"
    assert any("Reads a start token first: yes (the tokenizer's default)" in c.value for c in app.caption)
    trained = train_tuned_lens(stories, [STORY + " She had a red ball."] * 3, steps=10, window=16, seed=0)
    trained.save(lenses.trained_folder(stories.name, "title-lens"))
    app.segmented_control(key="lens_kind").set_value("tuned").run()
    assert_no_failure(app)
    assert app.title[0].value == "Tuned lens"


def test_cli_demo_model(capsys):
    from lens.cli import main

    assert main(["Therefore thus saith the", "--model", "demo", "--top-k", "1"]) == 0
    assert "␣LORD" in capsys.readouterr().out.splitlines()[1]
