"""One settings object read under one policy; caches that load once; unexpected errors logged, not shown."""

from __future__ import annotations

import logging
import threading
from dataclasses import fields

import pytest
from streamlit.testing.v1 import AppTest

from lens.settings import Settings
from tests.conftest import ROOT, require_shared

# Every setting the app reads, each set to something it can't use.
GARBAGE = {
    "LENS_DEFAULT_MODEL": "nobody/no-such-model",
    "LENS_MAX_TOKENS": "abc",
    "LENS_MAX_CORPUS_TOKENS": "-",
    "LENS_MAX_TRAIN_STEPS": "1.5",
    "LENS_MODEL_ALLOWLIST": " , ,",
    "LENS_ALLOW_LOCAL": "maybe",
    "LENS_CACHE_DIR": "/dev/null/not-a-folder",
    "LENS_MAX_MODEL_GB": "abc",
    "LENS_CACHE_MB": "-3",
    "LENS_MODEL_CACHE_MB": "lots",
    "LENS_NDIF_MODELS": " ,",
    "NDIF_API_KEY": "garbage-key",
    "LENS_NDIF_TIMEOUT": "-5",
    "LENS_MAX_JLENS_PROMPTS": "x",
    "LENS_MAX_PATCH_CELLS": "1e3",
    "LENS_MAX_PROMPTS": "many",
}
# The ones that can't be read at all, and so must each say so in one line.
UNREADABLE = [
    "LENS_MAX_TOKENS",
    "LENS_MAX_CORPUS_TOKENS",
    "LENS_MAX_TRAIN_STEPS",
    "LENS_ALLOW_LOCAL",
    "LENS_MAX_MODEL_GB",
    "LENS_CACHE_MB",
    "LENS_MODEL_CACHE_MB",
    "LENS_NDIF_TIMEOUT",
    "LENS_MAX_JLENS_PROMPTS",
    "LENS_MAX_PATCH_CELLS",
    "LENS_MAX_PROMPTS",
]


def test_garbage_falls_back_to_the_defaults_with_one_line_each():
    settings, problems = Settings.from_environment(GARBAGE)
    default = Settings()
    kept = {"default_model", "cache_dir", "ndif_api_key", "cache_mb"}  # text, and -3 clamps to the least, 1
    for f in fields(Settings):
        if f.name not in kept:
            assert getattr(settings, f.name) == getattr(default, f.name), f.name
    assert settings.cache_mb == 1 and settings.max_model_bytes is None and settings.ndif_timeout_s == 300
    for name in UNREADABLE:
        assert sum(p.startswith(f"{name}=") for p in problems) == 1, (name, problems)
    assert len(problems) == len(UNREADABLE)
    assert "garbage-key" not in repr(settings)  # the key is never printed with the settings


def test_readable_values_are_used():
    settings, problems = Settings.from_environment(
        {
            "LENS_MAX_MODEL_GB": "2.5",
            "LENS_NDIF_TIMEOUT": "30",
            "LENS_MODEL_ALLOWLIST": "a/b, c/d",
            "LENS_ALLOW_LOCAL": "1",
        }
    )
    assert problems == []
    assert settings.max_model_bytes == 2_500_000_000 and settings.ndif_timeout_s == 30
    assert settings.model_allowlist == ("a/b", "c/d") and settings.allow_local


def test_app_with_every_setting_garbage_opens_the_demo_and_says_why(monkeypatch):
    require_shared()
    for name, value in GARBAGE.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="model").value == "demo"
    assert len(at.get("vega_lite_chart")) >= 1  # the heatmap is drawn
    shown = [w.value for w in at.warning]
    for name in UNREADABLE:
        assert any(w.startswith(f"Server setting ignored: {name}=") for w in shown), (name, shown)
    assert not any("garbage-key" in w for w in shown)


class _Gate:
    """The cache's lock, holding back the first loader's next acquisition once it let go of its key.

    That opens the window where a cache that drops a key's lock before storing the value
    lets a second caller in to load again; a cache that stores first never re-enters.
    """

    def __init__(self, second_loading: threading.Event) -> None:
        self.real = threading.Lock()
        self.second_loading = second_loading
        self.hold_back: threading.Thread | None = None

    def __enter__(self):
        if threading.current_thread() is self.hold_back:
            self.second_loading.wait(2)
        self.real.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.real.release()


class _WatchedLocks(dict):
    """The cache's per-key locks, noting when the first loader lets go of its key."""

    def __init__(self, gate: _Gate, released: threading.Event) -> None:
        super().__init__()
        self.gate, self.released = gate, released

    def pop(self, key, default=None):
        self.gate.hold_back = threading.current_thread()
        self.released.set()
        return super().pop(key, default)


def test_two_loads_of_one_key_call_the_loader_once():
    from ui.cached import BoundedCache

    cache = BoundedCache(lambda value: [(id(value), 1)])
    second_loading, released = threading.Event(), threading.Event()
    gate = _Gate(second_loading)
    cache._lock, cache._key_locks = gate, _WatchedLocks(gate, released)
    loads, got = [], []

    def loader():
        name = threading.current_thread().name
        loads.append(name)
        if name == "second":
            second_loading.set()
        return object()

    def second():
        released.wait(2)  # arrives once the first caller has let go of the key
        got.append(cache.get("model", loader, 10))

    threads = [
        threading.Thread(target=lambda: got.append(cache.get("model", loader, 10)), name="first"),
        threading.Thread(target=second, name="second"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loads == ["first"]
    assert len(got) == 2 and got[0] is got[1]


def test_an_unexpected_error_is_one_line_and_its_traceback_is_logged_without_the_key(monkeypatch, caplog):
    from ui import config, running

    monkeypatch.setenv("NDIF_API_KEY", "sk-secret-123")
    config.read()

    def fails():
        raise RuntimeError("the socket said sk-secret-123\nand more")

    try:
        fails()
    except RuntimeError as exc:
        with caplog.at_level(logging.ERROR, logger="lens.app"):
            line = running.one_line(exc, "Loading the model")
    assert line == "Loading the model failed: RuntimeError: the socket said ***"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "in fails" in logged
    assert "sk-secret-123" not in logged and "***" in logged


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_an_unreadable_model_limit_never_fails_a_model(value):
    settings, problems = Settings.from_environment({"LENS_MAX_MODEL_GB": value})
    assert settings.max_model_bytes is None and len(problems) == 1
