"""The nnsight backend: parity with TransformerLens, a small payload, and NDIF's failures in one line.

NDIF itself can't be reached from here or CI. Everything up to the network is real:
the remote handle (structure only, no weights), nnsight's RemoteBackend with our
status reporting, the key handling, and the error mapping. Past the network, a
refused port stands in for an unreachable NDIF, and a fake ``RemoteBackend.request``
stands in for the server's answers (queue updates, a rejected key, a model it does
not host, and a completed job that runs the serialized trace here).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import lens
from lens import LensError, load_model, run_lens
from lens.nnsight_backend import SAVED_ARRAYS, NnsightModel, payload_bytes, traced_statistics
from tests.conftest import ROOT, STORIES, require_shared
from tests.reference import reference_lens

PROMPTS = {"demo": "The Eiffel Tower is in the city of", "stories": "Once upon a time, there was a little girl named"}
TARGETS = {"demo": [" Paris", " the", ","], "stories": [" Lily", " the", "."]}
UNREACHABLE = "http://127.0.0.1:1"
SECRET = "test-key-not-a-real-one"


def _source(name: str) -> str:
    return "demo" if name == "demo" else str(STORIES)


@pytest.fixture(scope="module")
def backends():
    """Both backends on both models, loaded once: {name: (transformer_lens, nnsight)}."""
    require_shared()
    return {
        name: (load_model(_source(name), device="cpu"), load_model(_source(name), backend="nnsight"))
        for name in PROMPTS
    }


@pytest.fixture
def no_user_key(monkeypatch):
    """No NDIF key anywhere: not in the environment, not in nnsight's own config file."""
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


@pytest.fixture
def remote_stories(monkeypatch):
    """stories260K as NDIF would be asked for it: config and tokenizer only, runs go to NDIF's host."""
    require_shared()
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", UNREACHABLE)
    return load_model(str(STORIES), backend="nnsight", remote=True, api_key=SECRET)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_parity_with_transformer_lens(backends, name):
    """Same prompt, points and targets: top-k ids equal, statistics within 1e-5, target ranks exact."""
    reference_model, nnsight_model = backends[name]
    assert isinstance(nnsight_model, NnsightModel)
    kwargs = {"top_k": 10, "targets": TARGETS[name], "points": ("resid_pre", "resid_post")}
    expected = run_lens(reference_model, PROMPTS[name], **kwargs)
    result = run_lens(nnsight_model, PROMPTS[name], **kwargs)
    assert isinstance(result, lens.LensResult)
    assert result.token_ids == expected.token_ids and result.layers == expected.layers
    assert result.points == expected.points and result.targets == expected.targets
    np.testing.assert_array_equal(result.top_ids, expected.top_ids)
    np.testing.assert_array_equal(result.top_tokens, expected.top_tokens)
    np.testing.assert_array_equal(result.target_ranks, expected.target_ranks)
    for field in ("top_probs", "target_probs", "entropy"):
        np.testing.assert_allclose(getattr(result, field), getattr(expected, field), atol=1e-5, rtol=0)
    # KLs reach 27 nats here; the reference's own fp32 KL is ~1e-5 off float64 at that size.
    np.testing.assert_allclose(result.kl_to_final, expected.kl_to_final, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(result.target_logits, expected.target_logits, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(result.log_normalizer, expected.log_normalizer, atol=1e-5, rtol=1e-6)


def test_position_blocks_change_nothing(backends, monkeypatch):
    """Logits are made a few positions at a time in the trace; the blocks' seams must not show."""
    from lens import nnsight_backend

    _, model = backends["demo"]
    whole = run_lens(model, PROMPTS["demo"], targets=[" Paris"])
    monkeypatch.setattr(nnsight_backend, "BLOCK_LOGITS", 3 * model.d_vocab)
    blocked = run_lens(model, PROMPTS["demo"], targets=[" Paris"])
    np.testing.assert_array_equal(blocked.top_ids, whole.top_ids)
    np.testing.assert_array_equal(blocked.target_ranks, whole.target_ranks)
    # A 3-row matmul rounds differently from a 12-row one, in the last fp32 digits only.
    for field in ("top_probs", "entropy", "kl_to_final", "target_logits"):
        np.testing.assert_allclose(getattr(blocked, field), getattr(whole, field), atol=1e-5, rtol=0)


def test_kl_and_entropy_match_a_float64_reference(backends):
    """Against the independent Hugging Face computation in float64, KL and entropy within 1e-5 absolute."""
    _, nnsight_model = backends["stories"]
    result = run_lens(nnsight_model, PROMPTS["stories"], top_k=5)
    hf_model = AutoModelForCausalLM.from_pretrained(str(STORIES), attn_implementation="eager").eval()
    expected = reference_lens(hf_model, result.token_ids, 5)
    np.testing.assert_allclose(result.kl_to_final, expected["kl_to_final"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.entropy, expected["entropy"], atol=1e-5, rtol=0)
    assert result.top_tokens[-1, -1, 0] == "␣Lily"


def test_only_the_reduced_arrays_leave_the_trace(backends, monkeypatch):
    """What the trace hands back is one dict of the reduced arrays, within the rows x positions x top-k bound."""
    from nnsight.intervention import tracer as nnsight_tracer
    from nnsight.tracing.tracer import _saves

    returned: list[dict] = []
    push = nnsight_tracer.push_result

    def recording_push(frame, variables):
        returned.append({k: v for k, v in variables.items() if id(v) in _saves()})
        push(frame, variables)

    monkeypatch.setattr(nnsight_tracer, "push_result", recording_push)
    _, model = backends["demo"]
    ids = model.tokenizer(PROMPTS["demo"])["input_ids"]
    rows, positions, top_k, targets = model.n_layers + 1, len(ids), 7, [11, 13]
    paths = (model.layers_path, model.norm_path, model.head_path)
    traced_statistics(model.wrapper, torch.tensor([ids]), paths, True, top_k, targets, model.output_transform)
    assert len(returned) == 1 and list(returned[0]) == ["statistics"]
    arrays = returned[0]["statistics"]
    assert set(arrays) == set(SAVED_ARRAYS)
    assert arrays["top_ids"].shape == (rows, positions, top_k)
    assert arrays["target_ranks"].shape == (len(targets), rows, positions)
    saved = sum(a.numel() * a.element_size() for a in arrays.values())
    assert saved == payload_bytes(rows, positions, top_k, len(targets))
    # The bound: per cell, a 4-byte id and probability per top-k entry, three numbers, three per target.
    assert saved <= rows * positions * (2 * top_k + 3 + 3 * len(targets)) * 4
    assert saved * 50 < rows * positions * model.d_vocab * 4  # full fp32 logits would be 50x more


def test_payload_at_70b_shape_is_kilobytes():
    """The formula behind the README's figure: 80 rows, 64 positions, top-10, one target."""
    assert payload_bytes(80, 64, 10, 1) == 532_480
    assert payload_bytes(80, 64, 10, 1) * 4000 < 80 * 64 * 128_256 * 4


def test_no_key_is_one_line_before_any_download(no_user_key):
    with pytest.raises(LensError, match="No NDIF API key: set NDIF_API_KEY"):
        load_model("meta-llama/Llama-3.1-70B", backend="nnsight", remote=True)


def test_remote_handle_holds_no_weights_and_hides_the_key(remote_stories):
    assert remote_stories.remote and not remote_stories.wrapper.dispatched
    assert next(remote_stories.wrapper._module.parameters()).device.type == "meta"
    assert SECRET not in repr(remote_stories)


def test_unreachable_ndif_is_one_line(remote_stories):
    with pytest.raises(LensError) as caught:
        run_lens(remote_stories, PROMPTS["stories"])
    assert str(caught.value) == f"NDIF cannot be reached at {UNREACHABLE}; check the network, or try again later."


def _fake_server(monkeypatch, statuses, *, then=None):
    """Replace the network half of RemoteBackend: send ``statuses``, then raise ``then`` or run the job here."""
    from nnsight.intervention.backends.local import LocalSimulationBackend
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.response import ResponseModel, Status

    seen: dict[str, object] = {}

    def request(self, request, tracer):
        seen["api_key"], seen["model_key"] = self.api_key, self.model_key
        for status, description in statuses:
            self.note(ResponseModel(id="job", status=Status(status), description=description))
        if then is not None:
            raise then
        # "NDIF" runs the serialized trace (local modules hidden, as on the server) on the real model.
        LocalSimulationBackend(tracer.envoy)(tracer)
        self.note(ResponseModel(id="job", status=Status.COMPLETED))

    monkeypatch.setattr(RemoteBackend, "request", request)
    return seen


def test_queue_wait_reports_status_and_the_remote_path_returns_the_same_result(remote_stories, backends, monkeypatch):
    seen = _fake_server(monkeypatch, [("RECEIVED", ""), ("QUEUED", "3 requests ahead"), ("RUNNING", "")])
    heard: list[str] = []
    result = run_lens(
        remote_stories, PROMPTS["stories"], targets=[" Lily"], progress=lambda message, _: heard.append(message)
    )
    assert "Waiting in NDIF's queue: 3 requests ahead" in heard and heard[-1].startswith("NDIF finished")
    assert seen["api_key"] == SECRET and '"repo_id"' in seen["model_key"]
    local = run_lens(backends["stories"][1], PROMPTS["stories"], targets=[" Lily"])
    np.testing.assert_array_equal(result.top_ids, local.top_ids)
    np.testing.assert_array_equal(result.target_ranks, local.target_ranks)
    # The stand-in server runs the model with its default (sdpa) attention, the local handle with eager.
    np.testing.assert_allclose(result.kl_to_final, local.kl_to_final, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize(
    ("server_says", "line"),
    [
        ("Failed to send request: Invalid API key.", "NDIF rejected the API key; check NDIF_API_KEY"),
        (
            "Request removed from queue. Your request could not be processed because the model is currently "
            "unavailable for deployment, either due to size constraints or loading issues.",
            f"NDIF does not host '{STORIES}' right now",
        ),
    ],
)
def test_server_refusals_are_one_line(remote_stories, monkeypatch, server_says, line):
    from nnsight.intervention.backends.remote import RemoteError

    _fake_server(monkeypatch, [("RECEIVED", "")], then=RemoteError(server_says))
    with pytest.raises(LensError) as caught:
        run_lens(remote_stories, PROMPTS["stories"])
    message = str(caught.value)
    assert message.startswith(line) and "\n" not in message and SECRET not in message


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "NDIF_API_KEY"} | {"HF_HUB_OFFLINE": "1"} | env
    command = [sys.executable, "-m", "lens", PROMPTS["stories"], "--model", str(STORIES), *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_cli_no_key_and_unreachable_host_are_one_line(tmp_path):
    require_shared()
    isolated = {"NNSIGHT_CONFIG": str(tmp_path / "none.yaml")}  # no key from a user's nnsight login
    no_key = _cli("--remote", env=isolated)
    assert no_key.returncode == 2 and no_key.stderr.startswith("error: No NDIF API key")
    assert no_key.stderr.count("\n") == 1
    host = isolated | {"NDIF_API_KEY": SECRET, "NDIF_HOST": UNREACHABLE}
    unreachable = _cli("--backend", "nnsight", "--remote", env=host)
    assert unreachable.returncode == 2
    assert unreachable.stderr == (
        f"error: NDIF cannot be reached at {UNREACHABLE}; check the network, or try again later.\n"
    )


def test_cli_nnsight_backend_locally(capsys):
    require_shared()
    from lens.cli import main

    assert main([PROMPTS["stories"], "--model", str(STORIES), "--backend", "nnsight", "--top-k", "1"]) == 0
    assert "␣Lily" in capsys.readouterr().out.splitlines()[1]


def test_unknown_backend_and_remote_transformer_lens_are_refused():
    with pytest.raises(LensError, match="Unknown backend"):
        load_model("demo", backend="vllm")
    with pytest.raises(LensError, match="pass backend='nnsight'"):
        load_model("demo", remote=True)


# --- the app --------------------------------------------------------------------------


@pytest.fixture
def app(monkeypatch):
    require_shared()
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LENS_DEFAULT_MODEL", str(STORIES))
    for name in ("LENS_MODEL_ALLOWLIST", "LENS_MAX_TOKENS", "LENS_NDIF_MODELS"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["prompt"] = PROMPTS["stories"]
    return at


def test_app_offers_ndif_models_and_says_prompts_go_there(app, no_user_key):
    app.query_params["model"] = "Llama 3.1 70B (on NDIF)"
    app.run()
    assert not app.exception
    assert app.selectbox(key="model").value == "ndif:meta-llama/Llama-3.1-70B"
    assert any("your prompt and the lens code are sent there" in c.value for c in app.sidebar.caption)
    assert [e.value for e in app.error] == [
        "No NDIF API key: set NDIF_API_KEY (or the app's NDIF_API_KEY secret); get a key at https://login.ndif.us."
    ]
    assert len(app.sidebar.text_area) == 1  # the rest of the app is still there


def test_app_allowlist_limits_ndif_models(app, monkeypatch):
    monkeypatch.setenv("LENS_MODEL_ALLOWLIST", "ndif:meta-llama/Llama-3.1-8B")
    app.run()
    options = app.selectbox(key="model").options
    assert "Llama 3.1 8B (on NDIF)" in options and "Llama 3.1 70B (on NDIF)" not in options


@pytest.fixture
def app_on_local_ndif(app, monkeypatch):
    """The app with stories260K offered "on NDIF" (LENS_NDIF_MODELS) and a key, so runs reach the backend."""
    from nnsight import CONFIG

    monkeypatch.setenv("LENS_NDIF_MODELS", str(STORIES))
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    monkeypatch.setattr(CONFIG.API, "HOST", UNREACHABLE)
    app.query_params["model"] = f"{STORIES} (on NDIF)"
    return app


def test_app_unreachable_ndif_is_one_line(app_on_local_ndif):
    app_on_local_ndif.run()
    assert not app_on_local_ndif.exception
    assert [e.value for e in app_on_local_ndif.error] == [
        f"NDIF cannot be reached at {UNREACHABLE}; check the network, or try again later."
    ]


def test_app_ndif_run_is_cached_like_a_local_one(app_on_local_ndif, monkeypatch):
    from ui import cached

    _fake_server(monkeypatch, [("QUEUED", "1 request ahead")])
    app = app_on_local_ndif
    app.query_params["target"] = " Lily"
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    heatmap = app.get("vega_lite_chart")[0]
    assert heatmap is not None
    runs = cached.runs["lens"]
    app.selectbox(key="metric").set_value("entropy").run()
    assert not app.error and cached.runs["lens"] == runs  # a display change never reruns on NDIF
