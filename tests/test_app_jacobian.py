"""The Jacobian lens in the app: the sidebar picker, Compare's lens against lens, and fitting with cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lens import JacobianLens, corpus_stats, fit_jacobian_lens, run_lens
from lens.tuned import train_tuned_lens
from tests import test_app as base
from tests.test_app import STORY, assert_no_failure, chart_data, charts
from ui import config, corpus_input, lenses

app = base.app  # the same fixture: the real app.py on stories260K
FITTED_NAME = "test-jlens"


@pytest.fixture(scope="module")
def fitted(stories):
    return fit_jacobian_lens(stories, corpus_input.sample_texts(), max_prompts=2, max_tokens=32)


@pytest.fixture
def lens_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LENS_CACHE_DIR", str(tmp_path))
    config.read()
    return tmp_path


@pytest.fixture
def saved(stories, fitted, lens_cache):
    path = fitted.save(lenses.jacobian_root() / lenses.model_key(stories.name) / f"{FITTED_NAME}.pt")
    return JacobianLens.load(path)


def test_picker_offers_the_three_lenses_and_reads_through_a_fitted_jacobian_lens(app, stories, saved):
    app.run()
    assert_no_failure(app)
    picker = app.sidebar.button_group(key="lens_kind")
    assert list(picker.options) == ["Logit lens", "Tuned lens", "Jacobian lens"]
    picker.set_value("jacobian").run()
    assert_no_failure(app)
    assert app.selectbox(key="jacobian_lens").value == f"Fitted here: {FITTED_NAME}"
    assert app.title[0].value == "Jacobian lens"
    heatmap = chart_data(charts(app)[0])
    expected = run_lens(stories, STORY, top_k=5, lens=saved)
    plain = run_lens(stories, STORY, top_k=5)
    assert not np.array_equal(expected.top_ids[:, :, 0], plain.top_ids[:, :, 0])  # the lens changes the picture
    for row, position, top1 in heatmap[["row", "position", "top1"]].itertuples(index=False):
        assert top1 == expected.top_tokens[row, position, 0]


def test_jacobian_lens_turns_off_rows_it_cannot_read(app, saved):
    app.query_params.update({"lens_kind": "Jacobian lens", "embed_row": "true"})
    app.run()
    assert_no_failure(app)
    assert any("block outputs only" in c.value for c in app.sidebar.caption)
    assert "embed" not in set(chart_data(charts(app)[0]).layer)


def test_without_a_jacobian_lens_the_sidebar_says_how_to_make_one(app, lens_cache):
    app.query_params.update({"lens_kind": "Jacobian lens"})
    app.run()
    assert_no_failure(app)
    assert any("No jacobian lens for this model yet" in c.value for c in app.sidebar.caption)


def test_compare_puts_logit_tuned_and_jacobian_side_by_side_with_kl_per_layer(app, stories, saved, lens_cache):
    tuned = train_tuned_lens(stories, [STORY + " She had a red ball."] * 5, steps=10, window=16, seed=0)
    tuned.save(lenses.trained_folder(stories.name, "test-lens"))
    app.switch_page("pages/compare.py")
    app.query_params.update({"compare_mode": "Logit, tuned and Jacobian lens"})
    app.run()
    assert_no_failure(app)
    drawn = charts(app)
    # Three heatmaps, a difference (Jacobian − Logit by default), the target lines, the divergence, KL per layer.
    assert len(drawn) == 7
    assert app.selectbox(key="compare_pair").value == "Jacobian lens − Logit lens"
    kl = chart_data(drawn[-1])
    for source, lens_object in (("Logit lens", None), ("Tuned lens", tuned), ("Jacobian lens", saved)):
        expected = run_lens(stories, STORY, lens=lens_object).kl_to_final.mean(axis=1)
        shown = kl[kl.source == source].kl_to_final.to_numpy()
        np.testing.assert_allclose(shown, expected, rtol=1e-5, atol=1e-6)
    app.radio(key="compare_kl_on").set_value("corpus").run()
    assert_no_failure(app)
    kl = chart_data(charts(app)[-1])
    expected = corpus_stats(stories, corpus_input.sample_texts(), lens=saved).kl_to_final.to_numpy()
    np.testing.assert_allclose(kl[kl.source == "Jacobian lens"].kl_to_final.to_numpy(), expected, rtol=1e-5)


def test_lenses_page_fits_saves_and_reuses_a_jacobian_lens(app, stories, lens_cache):
    app.switch_page("pages/lenses.py")
    app.query_params.update({"lenses_kind": "Jacobian lens"})
    app.run()
    assert_no_failure(app)
    assert any("No Jacobian lens for this model yet" in m.value for m in app.markdown)
    app.slider(key="jlens_prompts").set_value(2)
    app.select_slider(key="jlens_tokens").set_value(32).run()
    app.button(key="fit_jlens").click().run()
    assert_no_failure(app)
    assert any("Fitted on 2 prompts and saved" in m.value for m in app.success)
    files = list(lens_cache.rglob("*.pt"))
    assert len(files) == 1
    JacobianLens.load(files[0]).check_compatible(stories)
    app.run()
    assert any("already fitted" in m.value for m in app.success)
    app.sidebar.button_group(key="lens_kind").set_value("jacobian").run()
    assert app.selectbox(key="jacobian_lens").value == f"Fitted here: {files[0].stem}"


def test_cancel_on_the_lenses_page_says_nothing_was_saved(app, lens_cache):
    app.switch_page("pages/lenses.py")
    app.query_params.update({"lenses_kind": "Jacobian lens"})
    app.run()
    app.button(key="cancel_jlens").click().run()
    assert_no_failure(app)
    assert any("cancelled; nothing was saved" in w.value for w in app.warning)
    assert not list(lens_cache.rglob("*.pt"))


def test_an_interrupted_page_run_cancels_the_work(monkeypatch):
    """Streamlit stops a page run by raising from its next element call; the work then hears cancel."""
    import streamlit as st

    from ui import running

    class Interrupted(BaseException):
        pass

    class Box:
        def info(self, *args, **kwargs):
            raise Interrupted

        progress = info

        def empty(self):
            pass

    monkeypatch.setattr(st, "empty", Box)
    cancel, stopped = threading.Event(), threading.Event()

    def work(report):
        cancel.wait(30)
        stopped.set()

    with pytest.raises(Interrupted):
        running.with_progress(work, "Fitting", cancel=cancel)
    assert stopped.wait(5) and cancel.is_set()
