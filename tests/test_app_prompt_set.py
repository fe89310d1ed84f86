"""The Prompt sets page under AppTest, on stories260K: the chart holds the library's means and bands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lens import prompt_set, read_prompt_rows
from tests import test_app as base
from tests.conftest import ROOT, shown
from tests.test_app import assert_no_failure, chart_data, charts
from ui import cached

app = base.app  # the same fixture: the real app.py on stories260K

STORIES_SET = ROOT / "data" / "prompt_set_stories260K.jsonl"


def _open(app):
    app.switch_page("pages/prompt_set.py").run()
    assert_no_failure(app)


def test_bundled_example_draws_the_librarys_means_and_bands(app, stories):
    _open(app)
    expected = prompt_set(stories, read_prompt_rows(STORIES_SET.read_text(), "jsonl")).to_frame()
    drawn = chart_data(charts(app)[0])
    shown = expected[expected.measure.isin(["target_probability", "concept: girl", "concept: boy"])]
    assert len(drawn) == len(shown) == 2 * 3 * 5  # groups x measures x layers
    merged = drawn.merge(shown, on=["group", "measure", "layer"], suffixes=("", "_expected"))
    assert len(merged) == len(shown)
    np.testing.assert_allclose(merged["mean"], merged["mean_expected"], rtol=1e-6)
    np.testing.assert_allclose(merged.band_high, merged.ci_high_expected.clip(0, 1), rtol=1e-6)
    assert merged.series.nunique() == 6
    assert app.dataframe[-1].value.shape[0] == 12 * 5


def test_switching_the_scale_reads_nothing_again(app):
    _open(app)
    before = cached.runs["prompt_set"]
    app.radio(key="set_scale").set_value("rank").run()
    assert_no_failure(app)
    spec = json.loads(charts(app)[0].proto.spec)
    assert spec["layer"][1]["encoding"]["y"]["scale"]["type"] == "log"
    assert set(chart_data(charts(app)[0]).measure) == {"target_rank"}
    assert cached.runs["prompt_set"] == before


def test_pasted_set_with_bad_rows_reports_them_and_reads_the_rest(app):
    app.query_params["set_source"] = "paste"
    _open(app)
    text = 'prompt,target,group\nOnce upon a,time,a\n,time,a\nThey were best,friend,b\n"=cmd()",you,b\n'
    app.text_area(key="set_text").set_value(text).run()
    assert_no_failure(app)
    assert any("1 rows skipped" in w.value for w in app.warning)
    problems = app.dataframe[0].value
    skipped = problems[problems.kind == "skipped"]
    assert skipped.row.tolist() == ["Row 2"] and "empty" in skipped.problem.iloc[0]
    assert set(chart_data(charts(app)[0]).group) == {"a", "b"}


def test_the_prompt_limit_is_one_line(app, monkeypatch):
    monkeypatch.setenv("LENS_MAX_PROMPTS", "3")
    app.switch_page("pages/prompt_set.py").run()
    assert not app.exception
    assert any("at most 3" in shown(e.value) and "LENS_MAX_PROMPTS" in shown(e.value) for e in app.error)


@pytest.mark.parametrize("second", ["demo"])
def test_a_second_model_of_other_depth_goes_on_relative_depth(app, second):
    app.query_params["set_model_b"] = second
    _open(app)
    spec = json.loads(charts(app)[0].proto.spec)
    assert spec["layer"][1]["encoding"]["x"]["field"] == "depth"
    drawn = chart_data(charts(app)[0])
    assert drawn.groupby("source").depth.max().tolist() == [1.0, 1.0]


def test_an_oversized_paste_is_refused_before_parsing(app, monkeypatch):
    monkeypatch.setenv("LENS_MAX_PROMPTS", "1")
    monkeypatch.setenv("LENS_MAX_TOKENS", "2")  # 1 prompt of at most 64 characters: 1,088 characters in all
    app.query_params["set_source"] = "paste"
    _open(app)
    before = cached.runs["prompt_set"]
    app.text_area(key="set_text").set_value("prompt,target\n" + "Once upon a,time\n" * 100).run()
    assert not app.exception
    assert any("at most 1,088" in e.value for e in app.error)
    assert cached.runs["prompt_set"] == before
