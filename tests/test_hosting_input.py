"""Hosting-safe input, round two (issue 23)."""

from __future__ import annotations

import logging

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, STORIES, require_shared

STORY = "Once upon a time, there was a little girl named"
LONG = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog."


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


def test_window_slider_writes_no_warning_to_the_server_log(app, monkeypatch, caplog):
    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    app.query_params["prompt"] = LONG
    with caplog.at_level(logging.WARNING):
        app.run()
        app.text_area(key="prompt").set_value(LONG + " Then it rained.").run()
    assert not app.exception
    assert not [r for r in caplog.records if "Session State API" in r.getMessage()]
