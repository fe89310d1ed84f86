"""The Patch page in AppTest: the word helper, the heatmap against lens.patch, links, the cell's lens view, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lens import patch, patched_lens
from tests.conftest import shown
from tests.test_app import STORY, app, assert_no_failure, chart_data, charts  # noqa: F401 - app is a fixture
from ui import cached

CORRUPTED = "Once upon a time, there was a little boy named"


def _open(app, **params):  # noqa: F811
    app.switch_page("pages/patch.py")
    for key, value in params.items():
        app.query_params[key] = value
    return app.run()


def test_word_helper_makes_the_corrupted_prompt_and_the_heatmap_is_the_sweep(app, stories):  # noqa: F811
    _open(app)
    assert_no_failure(app)
    assert any("corrupted prompt" in i.value for i in app.info)  # nothing runs before there is one
    app.selectbox(key="patch_word").set_value(8).run()  # the words of STORY: Once, upon, a, time, there, …
    app.text_input(key="patch_replacement").set_value("boy").run()
    app.button(key="patch_make").click().run()
    assert_no_failure(app)
    assert app.text_area(key="patch_corrupted").value == CORRUPTED
    assert app.query_params["patch_corrupted"] == CORRUPTED
    expected = patch(stories, STORY, CORRUPTED, target=" Lily")
    heat = chart_data(charts(app)[0]).sort_values(["row", "position"])
    np.testing.assert_allclose(heat.effect.to_numpy(), expected.effect.ravel(), atol=1e-5)
    assert "0 <s>" in set(heat.column) and any("→" in c for c in heat.column)
    assert any(f"clean run **{expected.clean_metric:+.4g}**" in m.value for m in app.markdown)


def test_link_reproduces_point_metric_and_cell_with_its_patched_lens_view(app, stories):  # noqa: F811
    _open(
        app, patch_clean=STORY, patch_corrupted=CORRUPTED, patch_point="attn_out", patch_metric="prob",
        patch_target=" Lily", cell="2,10",
    )  # fmt: skip
    assert_no_failure(app)
    assert app.selectbox(key="patch_point").value == "attn_out" and app.selectbox(key="patch_metric").value == "prob"
    assert (app.selectbox(key="pick_row").value, app.selectbox(key="pick_position").value) == (2, 10)
    expected = patch(stories, STORY, CORRUPTED, target=" Lily", point="attn_out", metric="prob")
    view = chart_data(charts(app)[1])
    output = view[(view.row == view.row.max()) & (view.position == view.position.max())].value.iloc[0]
    assert output == pytest.approx(expected.raw[2, 10], abs=1e-5)  # the lens view is the run the cell measured
    assert output == pytest.approx(patched_lens(stories, expected, 2, 10).target_probs[0, -1, -1], abs=1e-6)
    runs = dict(cached.runs)
    app.selectbox(key="pick_row").set_value(3).run()
    assert_no_failure(app)
    assert cached.runs["patch"] == runs["patch"]  # another cell is no new sweep
    assert cached.runs["patched_lens"] == runs["patched_lens"] + 1
    assert app.query_params["cell"] == "3,10"


def test_exports_carry_the_sweep(app):  # noqa: F811
    _open(app, patch_clean=STORY, patch_corrupted=CORRUPTED)
    assert_no_failure(app)
    labels = [b.proto.label for b in app.get("download_button")]
    assert labels[:2] == ["CSV", "JSON"]
    app.button(key="patch_prepare").click().run()
    assert_no_failure(app)
    assert [b.proto.label for b in app.get("download_button")] == ["CSV", "JSON", "PNG", "SVG"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"patch_corrupted": "Once upon a time, there was a big dog."}, "same number of tokens"),
        ({"patch_corrupted": STORY}, "are the same tokens"),
        ({"patch_corrupted": CORRUPTED, "patch_contrast": " Lily", "patch_target": " Lily"}, "the target itself"),
    ],
)
def test_bad_input_is_one_line_and_the_page_keeps_working(app, params, message):  # noqa: F811
    _open(app, patch_clean=STORY, **params)
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value and "\n" not in app.error[0].value
    app.text_area(key="patch_corrupted").set_value(CORRUPTED).run()
    app.text_input(key="patch_contrast").set_value("").run()
    assert_no_failure(app)
    assert charts(app)


def test_too_many_cells_for_the_server(app, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LENS_MAX_PATCH_CELLS", "20")
    _open(app, patch_clean=STORY, patch_corrupted=CORRUPTED)
    assert len(app.error) == 1 and "the limit here is 20 (LENS_MAX_PATCH_CELLS)" in shown(app.error[0].value)
