"""Hardening for hosting (issue 14): what can't fit is refused, bad input stays one line, memory is bounded."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

import lens
from lens import LensError, budget, corpus, corpus_stats, load_model, retarget, run_lens
from lens.cli import main
from lens.exports import FORMULA_STARTS, safe_csv
from lens.tuned import TunedLens, train_tuned_lens
from tests.conftest import ROOT, STORIES, require_shared

STORY = "Once upon a time, there was a little girl named"
LONG = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog."
DEMO = ROOT / "models" / "demo"
MARKER = "lens-hardening-payload-ran"


class Payload:
    """A pickle that runs a command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def demo_copy(tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(DEMO, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **config_changes}))
    return folder


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# 1. The size guard ------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    """The hub answers with the given model info and config; downloading weights fails the test."""
    from huggingface_hub import HfApi

    answers = {}
    monkeypatch.setattr(lens.model, "_hub_offline", lambda: False)
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: answers["info"])
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo_id, filename, **kwargs: answers["config"])

    def no_download(*args, **kwargs):
        raise AssertionError("weights were downloaded")

    monkeypatch.setattr(lens.model, "download_snapshot", no_download)
    return answers


@pytest.mark.parametrize(
    ("info", "shown"),
    [
        (SimpleNamespace(safetensors=SimpleNamespace(total=70_000_000_000), siblings=[]), "70.0B parameters (280.0 GB"),
        (  # no safetensors metadata: the weight files' sizes, taken as fp16
            SimpleNamespace(
                safetensors=None,
                siblings=[SimpleNamespace(rfilename=f"pytorch_model-{i}.bin", size=10 * 10**9) for i in range(14)],
            ),
            "70.0B parameters (280.0 GB",
        ),
    ],
)
def test_hub_model_too_big_is_refused_before_download(fake_hub, info, shown):
    fake_hub["info"] = info
    with pytest.raises(LensError) as caught:
        load_model("meta-llama/Llama-2-70b-hf", max_model_bytes=2_500_000_000)
    message = str(caught.value)
    assert shown in message and "at most 2.5 GB (LENS_MAX_MODEL_GB)" in message and one_line(message)


def test_hub_model_that_fits_passes_unless_its_config_is_oversized(fake_hub, tmp_path):
    fake_hub["info"] = SimpleNamespace(safetensors=SimpleNamespace(total=124_000_000), siblings=[])
    fake_hub["config"] = str(DEMO / "config.json")
    with pytest.raises(LensError) as fits:  # both checks pass: on to the (failing) weights download
        load_model("openai-community/gpt2", max_model_bytes=2_500_000_000)
    assert isinstance(fits.value.__cause__, AssertionError)
    fake_hub["config"] = str(demo_copy(tmp_path, n_layer=1_000_000) / "config.json")
    with pytest.raises(LensError, match="GB in fp32"):
        load_model("openai-community/gpt2", max_model_bytes=2_500_000_000)


def test_local_config_with_a_million_layers_is_refused(tmp_path):
    folder = demo_copy(tmp_path, n_layer=1_000_000)
    with pytest.raises(LensError, match=r"parameters \(.* GB in fp32\); this server loads at most"):
        load_model(str(folder))
    with pytest.raises(LensError, match="whole number"):
        load_model(str(demo_copy(tmp_path / "b", n_embd="wide")))


def test_tuned_lens_config_too_big_is_refused_before_allocating(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"base_model_name_or_path": "gpt2", "d_model": 200_000, "num_hidden_layers": 12})
    )
    with pytest.raises(LensError, match="This tuned lens has about 480.0B parameters"):
        TunedLens.load(tmp_path)


def test_budget_follows_the_cgroup(monkeypatch, tmp_path):
    (tmp_path / "memory.max").write_text("3000000000\n")
    (tmp_path / "memory.current").write_text("1000000000\n")
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    monkeypatch.setattr(budget, "CGROUP", tmp_path)
    monkeypatch.setenv("LENS_MAX_MODEL_GB", "1")  # the library reads no environment
    assert budget.model_budget_bytes() <= 2_000_000_000
    assert budget.cpu_quota() == 1
    threads = torch.get_num_threads()
    try:
        assert budget.limit_torch_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert budget.cpu_quota() == len(os.sched_getaffinity(0))
    assert budget.model_budget_bytes(5_000_000_000) == 5_000_000_000
    with pytest.raises(LensError, match="must be a positive number of bytes"):
        budget.model_budget_bytes(0)


# 2. Errors that escaped their one line ----------------------------------------------------------


def lens_folder(tmp_path: Path, stories) -> Path:
    return TunedLens.for_model(stories).save(tmp_path / "lens")


def test_malicious_or_corrupt_tuned_lens_is_one_line_and_runs_nothing(stories, tmp_path):
    folder = lens_folder(tmp_path, stories)
    marker = tmp_path / MARKER
    (folder / "params.pt").write_bytes(pickle.dumps({"0.weight": Payload(marker)}))
    with pytest.raises(LensError) as caught:
        TunedLens.load(folder)
    assert one_line(str(caught.value)) and not marker.exists()
    torch.save({"0.weight": Payload(marker)}, folder / "params.pt")  # the zip format torch writes
    with pytest.raises(LensError, match="not a tuned lens folder"):
        TunedLens.load(folder)
    assert not marker.exists()
    (folder / "params.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(LensError, match="not a tuned lens folder"):
        TunedLens.load(folder)


def test_corrupt_history_is_one_line(stories, tmp_path):
    folder = lens_folder(tmp_path, stories)
    for bad in ("[1.0, 2.", '{"a": 1}', '["x"]'):
        (folder / "history.json").write_text(bad)
        with pytest.raises(LensError) as caught:
            TunedLens.load(folder)
        assert one_line(str(caught.value))


@pytest.mark.parametrize("name", ["org/a--b", "a/..", "x" * 200])
def test_ids_the_hub_library_rejects_are_one_line_in_the_cli(name, capsys):
    assert main(["Hello", "--model", name]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "not a valid Hugging Face model id" in err and len(err) < 400


def test_invalid_utf8_on_the_command_line_is_one_line(capsys):
    assert main(["Once \udcff upon", "--model", "demo"]) == 2  # what Python makes of byte 0xff in argv
    assert main(["Once upon", "--model", "demo", "--target", "\udce9"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all("lone surrogate (invalid UTF-8 input)" in e for e in errors)


def test_invalid_utf8_argv_in_a_real_process():
    done = subprocess.run(
        [sys.executable, "-m", "lens", b"Once \xff upon", "--model", "demo"],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 2 and one_line(done.stderr.decode()) and b"Traceback" not in done.stderr


def test_pickled_bin_weights_need_safetensors_and_never_run(tmp_path):
    folder = demo_copy(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / MARKER
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload(marker)}))
    with pytest.raises(LensError) as caught:
        load_model(str(folder))
    assert "needs safetensors" in str(caught.value) and one_line(str(caught.value))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: load_model(5), "not int"),
        (lambda m: run_lens(m, b"hello"), "must be text \\(str\\), not bytes"),
        (lambda m: run_lens(m, "Once \udcff upon"), "lone surrogate"),
        (lambda m: run_lens(m, STORY, targets=["\udcff"]), "lone surrogate"),
        (lambda m: corpus_stats(m, [None]), "Text 1 is NoneType"),
        (lambda m: corpus_stats(m, ["Once upon a time"], window=0), "too short"),
        (lambda m: corpus_stats(m, ["Once upon a time"], window=2.5), "whole number"),
        (lambda m: train_tuned_lens(m, ["Once upon a time"], steps=2.5), "steps must be a whole number"),
        (lambda m: train_tuned_lens(m, ["Once upon a time"], window=0), "window must be a whole number"),
    ],
)
def test_api_types_get_a_clear_lens_error(stories, call, message):
    with pytest.raises(LensError, match=message):
        call(stories)


def test_a_single_string_target_is_one_target(stories):
    single = run_lens(stories, STORY, targets=" Lily")
    listed = run_lens(stories, STORY, targets=[" Lily"])
    assert single.targets == ["␣Lily"] and np.array_equal(single.target_ranks, listed.target_ranks)
    assert retarget(stories, run_lens(stories, STORY, keep_unembed_input=True), " Lily").targets == ["␣Lily"]


def test_a_single_string_corpus_is_one_text(stories):
    one = corpus_stats(stories, "Once upon a time, there was a little girl named Lily.")
    assert one.attrs["n_texts"] == 1


# App rows ----------------------------------------------------------------------------------------


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


def heatmap_positions(at: AppTest) -> list[int]:
    chart = list(at.get("vega_lite_chart"))[0]
    return sorted(set(convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data).position))


def test_app_hub_id_the_library_rejects_is_one_error(app):
    app.query_params.update({"model": "Other model id…", "model_id": "org/a--b"})
    app.run()
    assert not app.exception
    assert [e.value for e in app.error if "not a valid Hugging Face model id" in e.value]
    assert not any("HFValidationError" in e.value for e in app.error)


def test_app_corrupt_tuned_lens_is_one_error(app, stories, tmp_path):
    from ui import lenses

    folder = TunedLens.for_model(stories).save(lenses.trained_folder(stories.name, "broken"))
    (folder / "params.pt").write_bytes(pickle.dumps({"0.weight": Payload(tmp_path / MARKER)}))
    app.query_params.update({"lens_kind": "Tuned lens"})
    app.run()
    assert not app.exception and not (tmp_path / MARKER).exists()
    assert any("not a tuned lens folder" in e.value for e in app.error)


@pytest.mark.parametrize("limit", ["5", "1"])
def test_small_train_step_limit_keeps_the_tuned_lens_page_working(app, monkeypatch, limit):
    monkeypatch.setenv("LENS_MAX_TRAIN_STEPS", limit)
    app.switch_page("pages/tuned_lens.py").run()
    assert not app.exception and not app.error
    if limit == "5":
        assert app.slider(key="train_steps").max == 5
    else:
        assert any("Steps: 1" in c.value for c in app.caption)


def test_unwritable_cache_dir_offers_the_trained_lens_as_a_download(app, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LENS_CACHE_DIR", str(blocker))
    app.switch_page("pages/tuned_lens.py").run()
    app.slider(key="train_steps").set_value(10)
    app.select_slider(key="train_window").set_value(32).run()
    app.button(key="train").click().run()
    assert not app.exception and not app.error
    assert any("can't keep it" in w.value for w in app.warning)
    assert app.get("download_button")
    assert len(list(app.get("vega_lite_chart"))) == 1  # the loss curve is still shown


def test_archive_round_trips(stories, tmp_path):
    trained = train_tuned_lens(stories, [STORY + " She had a red ball."] * 3, steps=3, window=16)
    with zipfile.ZipFile(io.BytesIO(trained.archive())) as archive:
        archive.extractall(tmp_path / "unzipped")
    loaded = TunedLens.load(tmp_path / "unzipped")
    assert run_lens(stories, STORY, lens=loaded).equals(run_lens(stories, STORY, lens=trained))
    assert loaded.history == trained.history


def test_reversed_window_in_the_link_explains_and_shows_cells(app):
    app.query_params.update({"prompt": LONG, "window": ["5", "2"]})
    app.run()
    assert not app.exception
    assert any("run backwards" in i.value for i in app.info)
    assert heatmap_positions(app) == [2, 3, 4, 5]


def test_unparsable_settings_warn_the_operator_on_the_page_and_once_in_the_log(app, monkeypatch, caplog):
    from ui import config

    monkeypatch.setenv("LENS_MAX_TOKENS", "abc")
    monkeypatch.setenv("LENS_CACHE_MB", "-3")
    monkeypatch.setenv("LENS_ALLOW_LOCAL", "yes")
    app.run()
    assert not app.exception and not app.error
    shown = [w.value for w in app.warning]
    assert any("LENS_MAX_TOKENS='abc' is not a whole number" in w for w in shown), shown
    assert any("LENS_CACHE_MB=-3 is below 1" in w for w in shown), shown
    assert any("LENS_ALLOW_LOCAL='yes' is neither 1 nor 0" in w for w in shown), shown
    config._log_once.cache_clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="lens.settings"):
        config.read()
        config.read()
    assert sum("LENS_MAX_TOKENS" in r.getMessage() for r in caplog.records) == 1


# 3. The window follows the prompt ---------------------------------------------------------------


def test_window_resets_when_the_prompt_changes(app, stories):
    """The URL's old window (8-19) seeded every new prompt's slider: the last cell fell off screen."""
    app.query_params.update({"prompt": LONG, "window": ["8", "19"]})
    app.run()
    assert heatmap_positions(app) == list(range(8, 20))  # a link's window is honoured
    for extra in (" Then it rained and they all went home to sleep.", " Then it rained."):
        app.text_area(key="prompt").set_value(LONG + extra).run()
        assert not app.exception
        n = len(run_lens(stories, LONG + extra).tokens)
        assert heatmap_positions(app) == list(range(n - 16, n))  # the Lens page shows 16 positions


# 4. Memory and CPU ------------------------------------------------------------------------------


def test_token_names_are_shared_strings(stories):
    result = run_lens(stories, LONG, top_k=20)
    assert result.top_tokens.dtype == object and result.top_tokens.nbytes == 8 * result.top_tokens.size
    assert len({id(name) for name in result.top_tokens.ravel()}) == len(np.unique(result.top_ids))
    back = lens.LensResult.from_json(result.to_json())
    assert back.equals(result)


def test_result_cache_is_bounded_by_bytes_and_counts_shared_arrays_once(stories):
    from ui.cached import BoundedCache, result_arrays

    def size(result):
        return [(id(a), a.nbytes) for a in result_arrays(result)]

    cache = BoundedCache(size)
    prompts = [f"{STORY} {name}. She had a ball." for name in ("Lily", "Sue", "Mia", "Ben", "Tim")]
    one = run_lens(stories, prompts[0], keep_unembed_input=True)
    limit = int(2.5 * sum(b for _, b in size(one)))
    for prompt in prompts:
        kept = cache.get(prompt, lambda p=prompt: run_lens(stories, p, keep_unembed_input=True), limit)
        assert cache.nbytes() <= limit
    assert len(cache) == 2 and cache.get(prompts[-1], lambda: None, limit) is kept  # the newest stays
    base = cache.get(prompts[-1], lambda: None, limit)
    before = cache.nbytes()
    cache.get("targets", lambda: retarget(stories, base, [" Lily"]), 10 * limit)
    added = cache.nbytes() - before  # the retargeted result shares everything but its target arrays
    assert 0 < added < 0.2 * sum(b for _, b in size(base))


def test_model_cache_keeps_small_models_by_memory(monkeypatch, tmp_path):
    from ui import cached, config

    third = demo_copy(tmp_path)
    loads = []
    real = lens.load_model

    def counting(name, **kwargs):
        loads.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(lens, "load_model", counting)
    cached.models.clear()
    names = [str(STORIES), "demo", str(third), str(STORIES), "demo", str(third)]
    for name in names:
        cached.model(name)
    assert len(loads) == 3  # three small models fit the default bound: switching back reloads nothing
    monkeypatch.setenv("LENS_MODEL_CACHE_MB", "1")
    config.read()
    cached.models.clear()
    loads.clear()
    for name in names:
        cached.model(name)
    assert len(loads) == 6
    cached.models.clear()


def test_over_long_prompt_is_refused_by_its_characters_before_tokenizing(app, monkeypatch):
    monkeypatch.setenv("LENS_MAX_TOKENS", "8")
    monkeypatch.setattr(lens, "tokenize_prompt", lambda *a, **k: pytest.fail("the prompt was tokenized"))
    app.query_params["prompt"] = "x" * (8 * 32 + 1)
    app.run()
    assert not app.exception
    assert any("257 characters long" in e.value and "at most 256 characters" in e.value for e in app.error)


def test_batched_corpus_equals_one_text_at_a_time(stories, monkeypatch):
    texts = [f"{STORY} {name}. She liked her {thing}." for name in ("Lily", "Tom", "Mia") for thing in ("dog", "ball")]
    texts += ["Once upon a time " * 30]  # longer than the others: padding after the short ones
    calls = []
    real = corpus.capture_normed_batch

    def counting(model, batch, *args, **kwargs):
        calls.append(len(batch))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(corpus, "capture_normed_batch", counting)
    batched = corpus_stats(stories, texts)
    assert len(calls) < len(texts)
    monkeypatch.setattr(corpus, "BATCH_TOKENS", 1)  # every window alone
    calls.clear()
    alone = corpus_stats(stories, texts)
    assert calls == [1] * len(texts)
    pd.testing.assert_frame_equal(batched, alone, rtol=1e-5, atol=1e-6)
    assert batched.attrs == alone.attrs


# 5. Exports and the command line ----------------------------------------------------------------


def test_safe_csv_escapes_formula_cells_and_names():
    frame = pd.DataFrame(
        {
            "token": ["=SUM(A1)", "+1", "-", "@x", "\tx", "\rx", "␣Lily", "'quoted"],
            "logit": [-1.5, 2.0, -3.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            "=cmd": np.arange(8) / 8,
        }
    )
    rows = list(csv.reader(io.StringIO(safe_csv(frame), newline="")))
    assert rows[0] == ["token", "logit", "'=cmd"]
    assert [r[0] for r in rows[1:]] == ["'=SUM(A1)", "'+1", "'-", "'@x", "'\tx", "'\rx", "␣Lily", "'quoted"]
    assert [float(r[1]) for r in rows[1:]] == list(frame.logit)  # numbers stay numbers


def test_cli_csv_has_no_formula_cells(capsys):
    assert main(["x=1+2-3 @home", "--model", "demo", "--format", "csv", "--top-k", "20"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header = rows[0]
    text_columns = [i for i, name in enumerate(header) if name in ("token", "layer") or name.endswith("_token")]
    cells = [row[i] for row in rows[1:] for i in text_columns]
    assert any(c.startswith("'") for c in cells)  # this prompt has tokens like '=' and '+'
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)]


def test_cli_reads_the_prompt_from_a_file_and_from_standard_input(tmp_path, monkeypatch, capsys):
    prompt = "Therefore thus saith the " * 3
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    assert main(["--prompt-file", str(tmp_path / "prompt.txt"), "--model", "demo", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == prompt
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(prompt.encode())))
    assert main(["-", "--model", "demo", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == prompt
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    assert main(["--prompt-file", str(tmp_path / "bad.txt"), "--model", "demo"]) == 2
    assert main(["both", "--prompt-file", str(tmp_path / "prompt.txt"), "--model", "demo"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "not UTF-8" in errors[0] and "one of them" in errors[1]
