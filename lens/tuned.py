"""Tuned lens (Belrose et al. 2023): one learned affine translator per layer.

Each translator maps a residual h to h + A·h + b before the model's own final norm and
unembedding; A and b start at zero, so an untrained tuned lens is the logit lens. They
are trained to minimise KL(final output ‖ lens output) with the model frozen.

Saved lenses use the tuned-lens project's folder format (``config.json`` and
``params.pt``: translator ``i`` reads hidden state ``i``, where 0 is the embeddings and
``i`` the output of block ``i - 1``), so its published lenses load here too.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lens.backend import Backend, Row, check_backend, lens_rows
from lens.budget import check_fits
from lens.errors import LensError
from lens.lenses import Lens
from lens.tokens import uses_bos

PUBLISHED_REPO = "AlignmentResearch/tuned-lens"  # a Hugging Face space: lens/<model name>/
# Models whose published lenses the dashboard offers (hub id -> folder under lens/).
PUBLISHED_LENSES = {
    "openai-community/gpt2": "gpt2",
    "gpt2": "gpt2",
    "EleutherAI/pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "EleutherAI/pythia-160m-deduped": "EleutherAI/pythia-160m-deduped",
    "EleutherAI/pythia-410m-deduped": "EleutherAI/pythia-410m-deduped",
}
# progress(step, steps, loss, seconds_left)
TrainProgress = Callable[[int, int, float, "float | None"], None]


def model_key(name: str) -> str:
    """The part of a model name two spellings share: 'openai-community/gpt2' and 'gpt2'."""
    return name.rstrip("/\\").replace("\\", "/").split("/")[-1].lower()


@dataclass
class TunedLensConfig:
    """The tuned-lens project's config.json fields."""

    base_model_name_or_path: str
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    base_model_revision: str | None = None
    unembed_hash: str | None = None
    lens_type: str = "linear_tuned_lens"


class TunedLens(torch.nn.Module, Lens):
    """Affine translators for hidden states 0..n_layers-1; the last block's output needs none."""

    kind = "tuned"

    def __init__(self, config: TunedLensConfig) -> None:
        super().__init__()
        self.config = config
        self.history: list[float] = []  # mean KL per training step
        d = config.d_model
        self.translators = torch.nn.ModuleList(
            torch.nn.Linear(d, d, bias=config.bias) for _ in range(config.num_hidden_layers)
        )
        for translator in self.translators:
            torch.nn.init.zeros_(translator.weight)
            if translator.bias is not None:
                torch.nn.init.zeros_(translator.bias)

    @classmethod
    def for_model(cls, model: Backend) -> TunedLens:
        return cls(TunedLensConfig(model.name, model.d_model, model.n_layers))

    def translate(self, hidden_index: int, resid: torch.Tensor) -> torch.Tensor:
        translator = self.translators[hidden_index]
        return resid + translator(resid.to(translator.weight.dtype)).to(resid.dtype)

    def transform(self, row: Row, resid: torch.Tensor) -> torch.Tensor:
        """The translator of the hidden state this row reads (rows after attention have none)."""
        index = _hidden_index(row)
        return resid if index is None else self.translate(index, resid)

    def check_compatible(self, model: Backend) -> None:
        """Refuse a lens made for another model, in one line that says what differs."""
        c = self.config
        if c.d_model != model.d_model or c.num_hidden_layers != model.n_layers:
            raise LensError(
                f"This tuned lens was made for '{c.base_model_name_or_path}' ({c.num_hidden_layers} layers, "
                f"d_model {c.d_model}), not '{model.name}' ({model.n_layers} layers, d_model {model.d_model})."
            )
        if model_key(c.base_model_name_or_path) != model_key(model.name):
            raise LensError(f"This tuned lens was made for '{c.base_model_name_or_path}', not '{model.name}'.")

    def save(self, path: str | Path) -> Path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k.removeprefix("translators."): v for k, v in self.state_dict().items()}
        torch.save(state, folder / "params.pt")
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        if self.history:
            (folder / "history.json").write_text(json.dumps(self.history))
        return folder

    def archive(self) -> bytes:
        """The saved folder as a zip, for a download when the server can't keep it on disk."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save(Path(tmp) / "lens")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(folder.iterdir()):
                    archive.write(file, file.name)
        return buffer.getvalue()

    @classmethod
    def load(cls, path_or_model: str | Path) -> TunedLens:
        """Load a lens folder, or a published lens by model name from the hub.

        Whatever the files hold, the result is a lens or one LensError line: the config's
        size is checked before anything is allocated, and params.pt is read with
        ``weights_only``, so a pickled payload never runs.
        """
        folder = Path(path_or_model)
        if not folder.is_dir():
            folder = _download_published(str(path_or_model))
        try:
            raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("config.json is not a JSON object")
            config = TunedLensConfig(**{k: raw[k] for k in TunedLensConfig.__dataclass_fields__ if k in raw})
            _check_config(config)
            lens = cls(config)
            state = torch.load(folder / "params.pt", map_location="cpu", weights_only=True)
            lens.translators.load_state_dict(state)
            history = folder / "history.json"
            if history.is_file():
                lens.history = _read_history(history)
        except LensError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch and json raise many types (UnpicklingError, zip errors)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LensError(f"'{folder}' is not a tuned lens folder: {reason[:200]}") from exc
        return lens.eval()


def _check_config(config: TunedLensConfig) -> None:
    """Whole, positive dimensions that fit the memory budget, before a translator is allocated."""
    for name in ("d_model", "num_hidden_layers"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LensError(f"A tuned lens's config.json gives {name} = {value!r}; it must be a positive whole number.")
    d = config.d_model
    check_fits(config.num_hidden_layers * (d * d + d), "This tuned lens")


def _read_history(path: Path) -> list[float]:
    history = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(history, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in history
    ):
        raise ValueError("history.json is not a list of numbers")
    return [float(x) for x in history]


def _hidden_index(row: Row) -> int | None:
    if row.hook.endswith("hook_resid_pre"):
        return 0
    if row.hook.endswith("hook_resid_post"):
        return row.layer + 1
    return None


def _download_published(model_name: str) -> Path:
    folder = PUBLISHED_LENSES.get(model_name, model_name)
    try:
        from huggingface_hub import hf_hub_download

        config = hf_hub_download(PUBLISHED_REPO, f"lens/{folder}/config.json", repo_type="space")
        hf_hub_download(PUBLISHED_REPO, f"lens/{folder}/params.pt", repo_type="space")
    except Exception as exc:  # network, missing lens, offline mode: one line for people
        raise LensError(f"Could not fetch a published tuned lens for '{model_name}' from the hub.") from exc
    return Path(config).parent


def _token_windows(model: Backend, texts: Iterable[str], length: int, use_bos: bool) -> Iterator[list[int]]:
    """Endless windows of ``length`` tokens over the texts, in order, cycling."""
    body = length - use_bos
    buffer: list[int] = []
    while True:
        produced = False
        for text in texts:
            buffer += model.tokenizer(text, add_special_tokens=False)["input_ids"]
            while len(buffer) >= body:
                window, buffer = buffer[:body], buffer[body:]
                produced = True
                yield [model.tokenizer.bos_token_id] * use_bos + window
        if not produced and len(buffer) < 2:
            raise LensError("The training texts hold too few tokens to train on.")
        if not produced:
            yield [model.tokenizer.bos_token_id] * use_bos + buffer
            buffer = []


def train_tuned_lens(
    model: Backend,
    texts: Sequence[str],
    *,
    steps: int = 300,
    lr: float = 1e-3,
    window: int = 128,
    seed: int = 0,
    progress: TrainProgress | None = None,
) -> TunedLens:
    """Train translators to minimise KL(final ‖ lens) on ``texts``, the model frozen.

    Each step reads one window of ``window`` tokens with the engine's forward pass, then
    fits every layer's translator through the model's own final norm and unembedding.
    Layers are fitted one after another, so memory holds one layer's [tokens x vocab]
    logits at a time. The same seed, texts and settings give the same lens.
    """
    for name, value, least in (("steps", steps, 1), ("window", window, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise LensError(f"{name} must be a whole number of at least {least}, not {value!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise LensError(f"The learning rate must be a positive number, not {lr!r}.")
    if isinstance(texts, str):
        texts = [texts]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise LensError("Give some text to train the tuned lens on.")
    model = check_backend(model)
    model.capabilities.require("local_weights", "tuned-lens training (it needs the weights here)", model.name)
    readout = model.readout
    torch.manual_seed(seed)
    lens = TunedLens.for_model(model).to(readout.device)
    rows = lens_rows(model, ("resid_pre", "resid_post"))
    hooks = [r.hook for r in rows]
    order = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    windows = _token_windows(model, list(order.permutation(texts)), min(window, model.n_ctx), uses_bos(model, None))
    started = time.monotonic()
    for step in range(1, steps + 1):
        tokens = torch.tensor([next(windows)], device=readout.device)
        with model.lock:
            with torch.no_grad():
                cache = model.capture(tokens, hooks)
                residuals = [cache[h][0].float() for h in hooks]
                final_log_probs = torch.log_softmax(readout(residuals[-1]), -1)
                final_probs = final_log_probs.exp()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for index, resid in enumerate(residuals[:-1]):
                log_probs = torch.log_softmax(readout(lens.translate(index, resid)), -1)
                loss = (final_probs * (final_log_probs - log_probs)).sum(-1).mean()
                grads = torch.autograd.grad(loss, list(lens.translators[index].parameters()))
                for param, grad in zip(lens.translators[index].parameters(), grads, strict=True):
                    param.grad = grad
                total += loss.item()
        optimizer.step()
        lens.history.append(total / (len(residuals) - 1))
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(step, steps, lens.history[-1], elapsed / step * (steps - step))
    lens.config.base_model_name_or_path = model.name
    return lens.eval()


def training_key(model: Backend, texts: Sequence[str], steps: int, lr: float, window: int, seed: int) -> str:
    """A name for a trained lens's folder: the same inputs give the same lens, so reuse it."""
    digest = hashlib.sha256("\x00".join([model.name, *texts]).encode()).hexdigest()[:12]
    return f"{model_key(model.name)}-{digest}-s{steps}-lr{lr:g}-w{window}-seed{seed}"
