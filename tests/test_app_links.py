"""Hand-written links (issue 22, items 3 and 4): their values survive an interaction, in id form,
and every value the app can't use says so in one line instead of falling back silently."""

from __future__ import annotations

import pytest

from tests import test_app as base
from tests.conftest import ROOT, STORIES
from tests.test_app import LONG_STORY, STORY, assert_no_failure

app = base.app  # the real app.py on stories260K
DEMO_FOLDER = str(ROOT / "models" / "demo")


def link(at, page: str | None, params: dict[str, str | list[str]]):
    if page:
        at.switch_page(page)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def kept(at, params: dict[str, str]) -> dict[str, str]:
    """The link's values that the URL no longer holds as they were written."""
    url = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in at.query_params.items()}
    return {k: url.get(k) for k, v in params.items() if url.get(k) != v}


@pytest.mark.parametrize(
    ("page", "params", "interact"),
    [
        (None, {"model": "demo", "metric": "entropy"}, lambda at: at.selectbox(key="pick_row").set_value(1)),
        (None, {"metric": "kl_to_final", "bos": "on"}, lambda at: at.selectbox(key="pick_row").set_value(2)),
        (None, {"model": "nobody/x"}, lambda at: at.text_input(key="target").set_value(" Lily")),
        (
            "pages/compare.py",
            {"compare_mode": "models", "model_b": "demo", "compare_metric": "entropy", "compare_measure": "rank"},
            lambda at: at.text_input(key="target").set_value(" Lily"),
        ),
        (
            "pages/trajectories.py",
            {"position": "3", "measure": "rank", "track": "1,2"},
            lambda at: at.text_input(key="target").set_value(" Lily"),
        ),
        (
            "pages/dataset.py",
            {"corpus_source": "paste", "corpus_text": "Once upon a time.\nThere was a dog."},
            lambda at: at.toggle(key="embed_row").set_value(True),
        ),
    ],
)
def test_hand_written_link_keeps_its_values_after_one_interaction(app, page, params, interact):
    link(app, page, params)
    assert kept(app, params) == {}, "the link's values as first drawn"
    interact(app).run()
    assert not app.exception
    assert kept(app, params) == {}, "the link's values after one interaction"


def test_a_typed_folder_stays_in_the_link(app, monkeypatch):
    monkeypatch.setenv("LENS_ALLOW_LOCAL", "1")
    link(app, None, {"model": DEMO_FOLDER})
    assert_no_failure(app)
    assert app.text_input(key="model_id").value == DEMO_FOLDER
    app.selectbox(key="pick_row").set_value(1).run()
    assert kept(app, {"model": DEMO_FOLDER}) == {} and "model_id" not in app.query_params


def test_labels_and_older_links_open_and_are_rewritten_as_ids(app):
    link(app, None, {"model": "Other model id…", "model_id": str(STORIES), "metric": "Entropy (nats)"})
    assert_no_failure(app)
    assert kept(app, {"model": str(STORIES), "metric": "entropy"}) == {} and "model_id" not in app.query_params


def test_id_forms_work(app):
    link(app, "pages/compare.py", {"compare_mode": "models", "model_b": "demo"})
    assert_no_failure(app)
    assert app.radio(key="compare_mode").value == "models" and app.selectbox(key="model_b").value == "demo"
    assert not any("The link's" in w.value for w in app.warning), [w.value for w in app.warning]
    pasted = "Once upon a time.\nThere was a dog.\nThe end."
    link(app, "pages/dataset.py", {"corpus_source": "paste", "corpus_text": pasted})
    assert_no_failure(app)
    assert app.text_area(key="corpus_text").value == pasted
    assert any("from 3 texts" in c.value for c in app.caption), [c.value for c in app.caption]


@pytest.mark.parametrize(
    ("page", "params", "says"),
    [
        ("pages/compare.py", {"compare_mode": "bogus"}, "The link's comparison 'bogus' isn't one of the choices"),
        ("pages/compare.py", {"compare_mode": "models", "model_b": "nobody/x"}, "second model 'nobody/x'"),
        ("pages/trajectories.py", {"track": "abc,99999999"}, "tokens to follow abc, 99999999 aren't token ids"),
        ("pages/trajectories.py", {"position": "999"}, "The link's position '999' isn't one of the choices"),
        (None, {"prompt": LONG_STORY, "window": ["5", "200"]}, "The link's window '5,200' isn't within positions"),
        (None, {"window": ["5", "200"]}, "The link's window '5,200' isn't within positions 0 to 13; showing them all"),
        (None, {"top_k": "50"}, "The link's top-k 50 is outside 1 to 20; showing 20."),
        (None, {"top_k": "abc"}, "The link's top-k 'abc' isn't a whole number; showing 5."),
        (None, {"metric": "bogus"}, "The link's colour measure 'bogus' isn't one of the choices"),
        (None, {"lens_kind": "bogus"}, "The link's lens 'bogus'"),
    ],
)
def test_each_unusable_link_value_is_one_warning(app, page, params, says):
    link(app, page, params)
    assert_no_failure(app)
    shown = [w.value for w in app.warning]
    assert sum(says in w for w in shown) == 1, shown
    app.run()  # said once, on first contact: not again on every rerun
    assert not any(says in w.value for w in app.warning)


def test_a_usable_link_says_nothing(app):
    link(app, "pages/trajectories.py", {"position": "3", "track": "1,2", "top_k": "7", "prompt": STORY})
    assert_no_failure(app)
    assert not app.warning, [w.value for w in app.warning]
