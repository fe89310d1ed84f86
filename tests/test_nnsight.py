"""The nnsight backend: parity with TransformerLens, a small payload, and NDIF's failures in one line.

NDIF itself can't be reached from here or CI. Everything up to the network is real:
the remote handle (structure only, no weights), nnsight's RemoteBackend with our
status reporting, the key handling, and the error mapping. Past the network, a
refused port stands in for an unreachable NDIF, and a fake ``RemoteBackend.request``
stands in for the server's answers (queue updates, a rejected key, a model it does
not host, and a completed job that runs the serialized trace here).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import lens
from lens import LensError, load_model, run_lens
from lens.nnsight_backend import NDIF_KEY_URL, SAVED_ARRAYS, NnsightModel, payload_bytes, traced_statistics
from tests.conftest import ROOT, STORIES, require_shared, unescaped
from tests.reference import reference_lens

PROMPTS = {"demo": "The Eiffel Tower is in the city of", "stories": "Once upon a time, there was a little girl named"}
TARGETS = {"demo": [" Paris", " the", ","], "stories": [" Lily", " the", "."]}
UNREACHABLE = "http://127.0.0.1:1"
SECRET = "test-key-not-a-real-one"
HUB_ID = "lens-test/stories260K"


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


def cache_hub_model(cache: Path, repo_id: str, config: dict | None = None) -> str:
    """Put stories260K's files (with another config.json, if given) in a hub cache as ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in STORIES.iterdir():
        if config is None or path.name != "config.json":
            (snapshot / path.name).symlink_to(path)
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return repo_id


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty local hub cache that the hub library reads (the hub itself is unreachable)."""
    require_shared()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def hub_stories(hub_cache):
    """stories260K as a hub model in the local cache: its hub id."""
    return cache_hub_model(hub_cache, HUB_ID)


@pytest.fixture
def remote_stories(hub_stories, monkeypatch):
    """stories260K as NDIF would be asked for it: config and tokenizer only, runs go to NDIF's host."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", UNREACHABLE)
    return load_model(hub_stories, backend="nnsight", remote=True, api_key=SECRET)


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
    ids = torch.tensor([model.tokenizer(PROMPTS["demo"])["input_ids"]])
    paths = (model.layers_path, model.norm_path, model.head_path)

    def reduced() -> dict[str, torch.Tensor]:
        return traced_statistics(model.wrapper, ids, paths, True, 5, [11, 13], model.output_transform)

    whole = reduced()
    monkeypatch.setattr(nnsight_backend, "BLOCK_LOGITS", 3 * model.d_vocab)
    blocked = reduced()
    torch.testing.assert_close(blocked["top_ids"], whole["top_ids"], rtol=0, atol=0)
    torch.testing.assert_close(blocked["target_ranks"], whole["target_ranks"], rtol=0, atol=0)
    # A 3-row matmul rounds differently from a 12-row one, in the last fp32 digits only.
    for field in ("top_probs", "entropy", "kl_to_final", "target_logits"):
        torch.testing.assert_close(blocked[field], whole[field], atol=1e-5, rtol=5e-6)


def test_kl_and_entropy_match_a_float64_reference(backends):
    """Against the independent Hugging Face computation in float64: within 1e-5 absolute or 5e-6 relative.

    KLs reach 27 nats here, where fp32's own rounding is ~1e-5.
    """
    _, nnsight_model = backends["stories"]
    result = run_lens(nnsight_model, PROMPTS["stories"], top_k=5)
    hf_model = AutoModelForCausalLM.from_pretrained(str(STORIES)).eval()  # SDPA, as both backends run it
    expected = reference_lens(hf_model, result.token_ids, 5)
    np.testing.assert_allclose(result.kl_to_final, expected["kl_to_final"], atol=1e-5, rtol=5e-6)
    np.testing.assert_allclose(result.entropy, expected["entropy"], atol=1e-5, rtol=5e-6)
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


def test_the_in_trace_code_travels_by_value(tmp_path):
    """reduce_rows and the OutputTransform, pickled as nnsight ships them, run where `lens` can't be imported."""
    import cloudpickle

    from lens.backend import OutputTransform
    from lens.nnsight_backend import reduce_rows, ship_by_value

    ship_by_value()
    torch.manual_seed(0)
    hidden = [torch.randn(5, 16) for _ in range(3)]
    norm, head = torch.nn.LayerNorm(16), torch.nn.Linear(16, 40)
    job = (reduce_rows, hidden, norm, head, 4, [3, 7], OutputTransform(0.5, 3.0))
    expected = reduce_rows(*job[1:])
    (tmp_path / "job.pkl").write_bytes(cloudpickle.dumps(job))
    remote_side = (
        "import pickle, sys\n"
        "function, *args = pickle.load(open('job.pkl', 'rb'))\n"
        "assert 'lens' not in sys.modules\n"
        "pickle.dump(function(*args), open('out.pkl', 'wb'))\n"
        "try:\n    import lens\nexcept ModuleNotFoundError:\n    print('no lens here')\n"
    )
    done = subprocess.run([sys.executable, "-c", remote_side], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "no lens here\n", done.stderr[-1500:]
    got = pickle.loads((tmp_path / "out.pkl").read_bytes())
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0)


def test_payload_at_70b_shape_is_kilobytes():
    """The formula behind the README's figure: 80 rows, 64 positions, top-10, one target."""
    assert payload_bytes(80, 64, 10, 1) == 532_480
    assert payload_bytes(80, 64, 10, 1) * 4000 < 80 * 64 * 128_256 * 4


def test_no_key_is_one_line_before_any_download(no_user_key):
    with pytest.raises(LensError, match="No NDIF API key: set NDIF_API_KEY"):
        load_model("meta-llama/Llama-3.1-70B", backend="nnsight", remote=True)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _huge_config() -> dict:
    config = json.loads((STORIES / "config.json").read_text())
    return config | {"num_hidden_layers": 10**6}


@pytest.mark.parametrize("remote", [False, True], ids=["local", "ndif"])
def test_a_huge_config_is_refused_in_seconds_with_flat_memory(hub_cache, tmp_path, remote):
    """A million-layer config: refused from the config alone, under 5 s, memory flat (nothing built)."""
    if remote:
        name = cache_hub_model(hub_cache, "lens-test/huge", _huge_config())
    else:
        name = str(tmp_path / "huge")
        Path(name).mkdir()
        (Path(name) / "config.json").write_text(json.dumps(_huge_config()))
    from lens import budget

    budget.count_parameters(json.loads((STORIES / "config.json").read_text()), "warm-up")  # imports, not timed
    before, started = _rss_mb(), time.monotonic()
    with pytest.raises(LensError) as refused:
        load_model(name, backend="nnsight", remote=remote, api_key=SECRET, max_model_bytes=2 * 10**9)
    assert time.monotonic() - started < 5 and _rss_mb() - before < 100
    assert "1,000,000 layers" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("remote", [False, True], ids=["local", "ndif"])
def test_an_unproven_architecture_is_refused_before_anything_is_built(hub_cache, tmp_path, remote):
    config = json.loads((STORIES / "config.json").read_text()) | {"architectures": ["EvilForCausalLM"]}
    if remote:
        name = cache_hub_model(hub_cache, "lens-test/evil", config)
    else:
        name = str(tmp_path / "evil")
        Path(name).mkdir()
        (Path(name) / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensError, match="EvilForCausalLM"):
        load_model(name, backend="nnsight", remote=remote, api_key=SECRET)


@pytest.mark.parametrize("path", [str(STORIES), "/etc", "/no/such/folder", "./models", "~/x", "..", "a/b/c"])
def test_a_path_for_ndif_is_one_message_whether_or_not_it_exists(path):
    with pytest.raises(LensError) as refused:
        load_model(path, backend="nnsight", remote=True, api_key=SECRET)
    assert str(refused.value) == "NDIF runs models from the Hugging Face hub: name one by its hub id, not a folder."


def test_ndif_ids_are_limited_to_the_offered_list(hub_stories):
    with pytest.raises(LensError, match=r"^'lens-test/stories260K' is not among the NDIF models this server offers"):
        load_model(hub_stories, backend="nnsight", remote=True, api_key=SECRET, ndif_models=["meta-llama/Llama-3.1-8B"])
    offered = load_model(hub_stories, backend="nnsight", remote=True, api_key=SECRET, ndif_models=[hub_stories])
    assert offered.remote and offered.name == hub_stories


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
    from nnsight.schema.response import ResponseModel, Status

    from lens.nnsight_backend import deadline_backend_class

    seen: dict[str, object] = {}

    def request(self, request, tracer):
        seen["api_key"], seen["model_key"] = self.api_key, self.model_key
        for status, description in statuses:
            self.note(ResponseModel(id="job", status=Status(status), description=description))
        if then == "wait":  # a queue that doesn't move: wait until the client gives up
            while not self.abandoned:
                time.sleep(0.05)
            return None
        if then is not None:
            raise then
        # "NDIF" runs the serialized trace (local modules hidden, as on the server) on the real model.
        LocalSimulationBackend(tracer.envoy)(tracer)
        self.note(ResponseModel(id="job", status=Status.COMPLETED))

    monkeypatch.setattr(deadline_backend_class(), "request", request)
    return seen


def test_queue_wait_reports_status_and_the_remote_path_returns_the_same_result(remote_stories, backends, monkeypatch):
    seen = _fake_server(monkeypatch, [("RECEIVED", ""), ("QUEUED", "3 requests ahead"), ("RUNNING", "")])
    heard: list[str] = []
    result = run_lens(
        remote_stories, PROMPTS["stories"], targets=[" Lily"], progress=lambda message, _: heard.append(message)
    )
    assert any(m.startswith("Waiting in NDIF's queue: 3 requests ahead (") for m in heard)
    assert all(m.endswith(" s of at most 300 s)") for m in heard)
    assert heard[-1].startswith("NDIF finished")
    assert seen["api_key"] == SECRET and '"repo_id"' in seen["model_key"]
    local = run_lens(backends["stories"][1], PROMPTS["stories"], targets=[" Lily"])
    np.testing.assert_array_equal(result.top_ids, local.top_ids)
    np.testing.assert_array_equal(result.target_ranks, local.target_ranks)
    # The stand-in server runs the trace as NDIF would, the local handle the shared engine: fp32 rounding apart.
    np.testing.assert_allclose(result.kl_to_final, local.kl_to_final, atol=1e-5, rtol=1e-6)


def test_a_refused_job_is_not_hosted_only_when_ndif_lists_no_deployment(remote_stories, monkeypatch):
    """A job NDIF refuses: "not hosted" when its /status has no deployment of the model, else NDIF's own line."""
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteError

    said = "Your request could not be processed: prompt of 4013 tokens"
    _fake_server(monkeypatch, [("RECEIVED", "")], then=RemoteError(said))
    for deployments, line in (
        ({}, f"NDIF does not host '{HUB_ID}' right now; pick one of its hosted models."),
        ({"k": {"repo_id": HUB_ID}}, f"NDIF could not run '{HUB_ID}': {said}"),
    ):
        with stand_in_server({"/status": (200, json.dumps({"deployments": deployments}))}) as host:
            monkeypatch.setattr(CONFIG.API, "HOST", host)
            with pytest.raises(LensError) as caught:
                run_lens(remote_stories, PROMPTS["stories"])
        assert str(caught.value) == line


def test_a_queue_that_does_not_move_times_out_with_its_own_line(hub_stories, monkeypatch):
    _fake_server(monkeypatch, [("RECEIVED", ""), ("QUEUED", "12 requests ahead")], then="wait")
    remote = load_model(hub_stories, backend="nnsight", remote=True, api_key=SECRET, timeout=2)
    heard: list[str] = []
    with pytest.raises(LensError) as caught:
        run_lens(remote, PROMPTS["stories"], progress=lambda message, _: heard.append(message))
    assert str(caught.value) == (
        f"NDIF's queue did not reach the run of '{HUB_ID}' within 2 s (LENS_NDIF_TIMEOUT); try again later."
    )
    assert any(m.startswith("Waiting in NDIF's queue: 12 requests ahead (") for m in heard)


@contextlib.contextmanager
def stand_in_server(answers: dict[str, tuple[int, str]]):
    """An HTTP server on a free local port answering GET ``path`` with (status, body); others with 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            code, body = answers.get(self.path, (404, "{}"))
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("code", "line"),
    [
        (401, f"NDIF rejected the API key; check NDIF_API_KEY (keys come from {NDIF_KEY_URL})."),
        (403, f"NDIF rejected the API key; check NDIF_API_KEY (keys come from {NDIF_KEY_URL})."),
        (502, "NDIF is down or overloaded right now (HTTP 502 from {host}); try again later."),
        (500, "NDIF is down or overloaded right now (HTTP 500 from {host}); try again later."),
    ],
)
def test_handshake_status_codes_each_have_their_line(remote_stories, monkeypatch, code, line):
    """The websocket handshake's status decides the line, whatever the body says ("invalid API key" on a 502)."""
    from nnsight import CONFIG

    with stand_in_server({"/subscribe": (code, '{"detail": "Invalid API key"}')}) as host:
        monkeypatch.setattr(CONFIG.API, "HOST", host)
        with pytest.raises(LensError) as caught:
            run_lens(remote_stories, PROMPTS["stories"])
    assert str(caught.value) == line.format(host=host)
    assert SECRET not in str(caught.value)


def test_a_rejected_key_on_the_request_post_is_the_key_line(remote_stories, monkeypatch):
    """nnsight wraps the POST's 401 in a RemoteError whose text names no status: the cause's code decides."""
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    response = httpx.Response(401, request=httpx.Request("POST", f"{UNREACHABLE}/request"))
    try:
        raise httpx.HTTPStatusError("401 Unauthorized", request=response.request, response=response)
    except httpx.HTTPStatusError as cause:
        try:
            raise RemoteError("Failed to send request: shape [50404, 768]") from cause
        except RemoteError as error:
            refused = error
    _fake_server(monkeypatch, [("RECEIVED", "")], then=refused)
    with pytest.raises(LensError, match="^NDIF rejected the API key; check NDIF_API_KEY"):
        run_lens(remote_stories, PROMPTS["stories"])


def test_dns_failure_is_the_unreachable_line(remote_stories, monkeypatch):
    from nnsight import CONFIG

    host = "http://ndif.invalid"  # .invalid never resolves (RFC 2606)
    monkeypatch.setattr(CONFIG.API, "HOST", host)
    with pytest.raises(LensError) as caught:
        run_lens(remote_stories, PROMPTS["stories"])
    assert str(caught.value) == f"NDIF cannot be reached at {host}; check the network, or try again later."


@pytest.fixture
def silent_host():
    """A port that accepts connections and never answers: an NDIF that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_silent_ndif_times_out_without_holding_the_lock(hub_stories, silent_host, backends, monkeypatch):
    """The run waits ``timeout`` seconds with progress, holding no lock; a local run of the model finishes meanwhile."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "HOST", silent_host)
    remote = load_model(hub_stories, backend="nnsight", remote=True, api_key=SECRET, timeout=4)
    local = backends["stories"][1]
    heard: list[tuple[str, bool]] = []
    outcome: dict[str, object] = {}

    def remote_run() -> None:
        try:
            run_lens(remote, PROMPTS["stories"], progress=lambda m, _: heard.append((m, remote.lock.locked())))
        except LensError as exc:
            outcome["error"] = str(exc)
        outcome["finished"] = time.monotonic()

    started = time.monotonic()
    thread = threading.Thread(target=remote_run)
    thread.start()
    while not heard and thread.is_alive():
        time.sleep(0.05)
    local_result = run_lens(local, PROMPTS["stories"], top_k=1)
    local_finished = time.monotonic()
    thread.join(30)
    assert local_result.top_tokens[-1, -1, 0] == "␣Lily"
    assert "finished" in outcome and local_finished < outcome["finished"]
    assert outcome["error"] == (
        f"NDIF did not finish the run of '{HUB_ID}' within 4 s (LENS_NDIF_TIMEOUT); try again later."
    )
    assert 4 <= outcome["finished"] - started < 15
    assert heard and not any(locked for _, locked in heard)
    assert any("s of at most 4 s" in message for message, _ in heard)


def _cli(*args: str, env: dict[str, str], model: str = str(STORIES)) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "NDIF_API_KEY"} | {"HF_HUB_OFFLINE": "1"} | env
    command = [sys.executable, "-m", "lens", PROMPTS["stories"], "--model", model, *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_cli_no_key_and_unreachable_host_are_one_line(tmp_path, hub_stories):
    isolated = {"NNSIGHT_CONFIG": str(tmp_path / "none.yaml")}  # no key from a user's nnsight login
    no_key = _cli("--remote", env=isolated)
    assert no_key.returncode == 2 and no_key.stderr.startswith("error: No NDIF API key")
    assert no_key.stderr.count("\n") == 1
    host = isolated | {"NDIF_API_KEY": SECRET, "NDIF_HOST": UNREACHABLE, "HF_HUB_CACHE": str(tmp_path / "hub")}
    unreachable = _cli("--backend", "nnsight", "--remote", env=host, model=hub_stories)
    assert unreachable.returncode == 2
    *status, error = unreachable.stderr.splitlines()
    assert error == f"error: NDIF cannot be reached at {UNREACHABLE}; check the network, or try again later."
    assert all(line.startswith("ndif: ") and line.endswith("of at most 300 s)") for line in status)


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
    assert [unescaped(e.value) for e in app.error] == [
        "No NDIF API key: set NDIF_API_KEY (or the app's NDIF_API_KEY secret); get a key at https://login.ndif.us."
    ]
    assert len(app.sidebar.text_area) == 1  # the rest of the app is still there


def test_app_allowlist_limits_ndif_models(app, monkeypatch):
    monkeypatch.setenv("LENS_MODEL_ALLOWLIST", "ndif:meta-llama/Llama-3.1-8B")
    app.run()
    options = app.selectbox(key="model").options
    assert "Llama 3.1 8B (on NDIF)" in options and "Llama 3.1 70B (on NDIF)" not in options


@pytest.fixture
def app_on_local_ndif(app, hub_stories, monkeypatch):
    """The app with stories260K's hub id offered "on NDIF" (LENS_NDIF_MODELS) and a key, so runs reach the backend."""
    from nnsight import CONFIG

    monkeypatch.setenv("LENS_NDIF_MODELS", hub_stories)
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    monkeypatch.setattr(CONFIG.API, "HOST", UNREACHABLE)
    app.query_params["model"] = f"{hub_stories} (on NDIF)"
    return app


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        ("ndif:lens-test/not-offered", "'lens-test/not-offered' is not among the NDIF models this server offers"),
        ("ndif:/etc", "NDIF runs models from the Hugging Face hub: name one by its hub id, not a folder."),
        ("ndif:/no/such/folder", "NDIF runs models from the Hugging Face hub: name one by its hub id, not a folder."),
    ],
)
def test_app_ndif_names_are_limited_and_never_read_the_file_system(app_on_local_ndif, typed, line):
    app_on_local_ndif.query_params["model"] = typed
    app_on_local_ndif.run()
    assert not app_on_local_ndif.exception
    errors = [unescaped(e.value) for e in app_on_local_ndif.error]
    assert len(errors) == 1 and errors[0].startswith(line), errors


def test_app_unreachable_ndif_is_one_line(app_on_local_ndif):
    app_on_local_ndif.run()
    assert not app_on_local_ndif.exception
    assert [unescaped(e.value) for e in app_on_local_ndif.error] == [
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
