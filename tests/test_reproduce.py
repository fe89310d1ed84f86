"""'Reproduce in Python': each page's snippet, run on its own, writes the page's own CSV byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from lens import LensResult
from lens.provenance import Run, View, provenance, snippet
from tests import test_app as base
from tests.conftest import ROOT, STORIES
from tests.test_app import STORY, assert_no_failure

app = base.app  # the real app.py on stories260K


@pytest.fixture
def downloads(monkeypatch):
    """Every file the app hands to a download button, by its media id."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = path_or_data.encode() if isinstance(path_or_data, str) else bytes(path_or_data)
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return files


def _page_files(at, downloads) -> tuple[str, dict[str, bytes]]:
    """The page's snippet and its downloads by label (CSV, JSON, ...)."""
    assert_no_failure(at)
    codes = [c.value for c in at.code if "lens.load_model" in c.value]
    assert len(codes) == 1, [c.value[:40] for c in at.code]
    files = {}
    for button in at.get("download_button"):
        file_id = Path(button.proto.url).stem
        files[button.proto.label] = downloads[file_id]
    return codes[0], files


PAGES = {
    "lens": ("app.py", {"target": " Lily", "metric": "entropy"}, "CSV", "logit-lens.csv"),
    "compare": ("pages/compare.py", {"target": " Lily"}, "CSV", "compare.csv"),
    "attribution": ("pages/attribution.py", {"attr_row": "L2", "attr_position": "5 ␣time"}, "CSV", "attribution.csv"),
    "dataset": ("pages/dataset.py", {}, "Download the table (CSV)", "lens-dataset.csv"),
    "patch": (
        "pages/patch.py",
        {"patch_clean": STORY, "patch_corrupted": STORY.replace("girl", "boy"), "patch_target": " Lily"},
        "CSV",
        "patch.csv",
    ),
    "prompt_set": ("pages/prompt_set.py", {}, "CSV", "prompt-set.csv"),  # the bundled stories260K set
}


def test_each_snippet_writes_its_pages_csv(app, downloads, tmp_path):
    snippets, expected = [], {}
    for name, (script, params, label, csv_name) in PAGES.items():
        if script != "app.py":
            app.switch_page(script)
        app.query_params.clear()
        app.query_params.update({"prompt": STORY, "top_k": "4", **params})
        app.run()
        code, files = _page_files(app, downloads)
        assert f"'{csv_name}'" in code, (name, code)
        snippets.append(code)
        expected[csv_name] = files[label]
        if "JSON" in files:
            carried = json.loads(files["JSON"])["provenance"]
            assert set(carried["versions"]) == {"lens", "transformer_lens", "transformers", "torch", "nnsight"}
            assert carried["runs"][0]["model"] == str(STORIES), name
            assert carried["runs"][0]["token_ids"] or name == "prompt_set", name  # a set names no one prompt
    # One interpreter for all of them, as a person would paste them one after another.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(snippets)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for csv_name, data in expected.items():
        written = (tmp_path / csv_name).read_bytes()
        assert written == data, (csv_name, written[:300], data[:300])


def test_snippet_names_prompt_by_ids_with_text_comment_and_is_code_not_text():
    hostile = "'); import os; os.system('x') #\n\"\"\""
    view = View("lens", (Run("gpt2", (464, 412), hostile, None, (6342,)),), top_k=5, settings={"metric": "entropy"})
    code = snippet(view)
    compile(code, "snippet", "exec")  # the prompt's text stays inside a comment and a literal
    assert "prompt_1 = [464, 412]" in code
    assert f"# {hostile!r}" in code
    assert "top_k=5" in code and "[6342]" in code and "metric='entropy'" in code


def test_lens_json_with_provenance_reads_back(stories):
    from lens import run_lens
    from ui.reproduce import with_provenance

    result = run_lens(stories, STORY, top_k=3)
    view = View("lens", (Run(str(STORIES), tuple(result.token_ids), STORY),), top_k=3)
    text = with_provenance(result.to_json(), view)
    assert json.loads(text)["provenance"] == json.loads(json.dumps(provenance(view)))
    assert LensResult.from_json(text).equals(result)


def test_a_prompt_given_as_token_ids_is_read_as_those_ids(stories):
    import lens
    from lens import run_lens

    by_text = run_lens(stories, STORY, top_k=3)
    by_ids = run_lens(stories, by_text.token_ids, top_k=3)
    assert by_ids.token_ids == by_text.token_ids and by_ids.prepend_bos == by_text.prepend_bos
    assert by_ids.to_frame().equals(by_text.to_frame())
    for bad, message in (([], "empty"), ([1, stories.d_vocab], "outside the vocabulary"), ([1, "2"], "whole-number")):
        with pytest.raises(lens.LensError, match=message):
            run_lens(stories, bad)


def test_jacobian_lens_snippet_loads_the_lens_the_page_read(stories, tmp_path):
    """A Jacobian-lens view's snippet loads that lens file (not a tuned lens) and writes the page's CSV."""
    from lens import fit_jacobian_lens, retarget, run_lens, safe_csv
    from lens.jacobian import JacobianLens

    path = tmp_path / "stories.pt"
    fit_jacobian_lens(stories, [STORY + " She had a red ball."], max_prompts=1, max_tokens=32).save(path)
    page = retarget(
        stories, run_lens(stories, STORY, top_k=4, keep_unembed_input=True, lens=JacobianLens.load(path)), [" Lily"]
    )
    view = View("lens", (Run(str(STORIES), tuple(page.token_ids), STORY, f"jlens:{path}", (" Lily",)),), top_k=4)
    code = snippet(view)
    assert f"jacobian = lens.JacobianLens.load({str(path)!r})" in code and "TunedLens" not in code
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "logit-lens.csv").read_bytes() == safe_csv(page.to_frame()).encode()
    published = snippet(View("lens", (Run("openai-community/gpt2", (464,), "The", "jlens-hub:openai-community/gpt2"),)))
    assert "jacobian = lens.published_jacobian_lens('openai-community/gpt2')" in published
