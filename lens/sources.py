"""Where a model comes from, read before any backend builds it: its folder or hub id, and its config.

Every backend's loader starts here, so the checks that must run before a download
(a local path, a hub id's spelling, a cached snapshot, the config file) are written once.
A load that fails becomes one line, classified by the exception's type, never by its text.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from lens.backend import Progress
from lens.errors import LensError

PACKAGE_DIR = Path(__file__).resolve().parent
# The bundled demo model: inside the package when installed (pyproject maps models/demo there),
# beside it in a checkout.
DEMO_MODEL_DIR = next(
    (p for p in (PACKAGE_DIR / "demo_model", PACKAGE_DIR.parent / "models" / "demo") if p.is_dir()),
    PACKAGE_DIR.parent / "models" / "demo",
)
DEMO_ALIASES = ("demo",)
HUB_PROBE_SECONDS = 4.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MAX_NAME_CHARS = 1024  # far past any hub id (96) or sensible path, short of the OS's "File name too long"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def resolve_model_source(name_or_path: str) -> tuple[str, str]:
    """Decide where a model comes from: (source to boot from, name to show people).

    A folder is used as is. A hub id is looked up in the local cache first, so a cached
    model loads with no network; an uncached one needs the hub, which is probed with a
    short timeout instead of the libraries' 40 s of retries.
    """
    name = check_model_name(name_or_path)
    if name.lower() in DEMO_ALIASES:
        return _model_folder(DEMO_MODEL_DIR, "demo"), "demo"
    path = Path(name).expanduser()
    if path_exists(path):
        return _model_folder(path, name), name
    if looks_like_path(name):
        raise LensError(f"There is no model folder at '{name}'.")
    check_repo_id(name)
    cached = cached_snapshot(name)
    if cached is not None:
        return cached, name
    if hub_offline():
        raise LensError(
            f"Could not download model '{name}': the Hugging Face hub cannot be reached "
            "and the model is not in the local cache."
        )
    return name, name


def check_model_name(name_or_path: object, what: str = "A model") -> str:
    """The name stripped, or one line saying why it can't name anything: not text, empty, too long, control characters.

    Checked before any path or hub call: a 10 kB name made the OS raise "File name too
    long", and a newline split every message that quotes the name into two lines.
    """
    if isinstance(name_or_path, Path):
        name_or_path = str(name_or_path)
    if name_or_path is not None and not isinstance(name_or_path, str):
        raise LensError(f"{what} is named by a string (hub id or folder), not {type(name_or_path).__name__}.")
    name = (name_or_path or "").strip()
    if not name:
        raise LensError("No model given: name a Hugging Face model id or a model folder.")
    if len(name) > MAX_NAME_CHARS:
        raise LensError(f"{what}'s name is {len(name):,} characters long; at most {MAX_NAME_CHARS:,} are read.")
    control = _CONTROL.search(name)
    if control:
        raise LensError(
            f"{what}'s name holds a control character ({control.group()!r} at character {control.start() + 1})."
        )
    return name


def path_exists(path: Path) -> bool:
    """Whether a path exists, False where the OS can't even look (a component past 255 bytes)."""
    try:
        return path.exists()
    except OSError:
        return False


def check_tokenizer(tokenizer, shown: str) -> None:
    """Refuse a tokenizer that can't read text: a folder without tokenizer.json loads one that knows 1 token."""
    if len(tokenizer) < 2:
        raise LensError(
            f"Model '{shown}' has no usable tokenizer (it knows {len(tokenizer)} token): "
            "its folder needs tokenizer.json or the tokenizer's vocabulary files."
        )


def looks_like_path(name: str) -> bool:
    """A name that can only be a file-system path: it starts like one or has more than one '/'."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_repo_id(name: str) -> None:
    """The hub library's own rules ('--', '..', 96 characters at most), as one line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    shown = name if len(name) <= 100 else name[:100] + "…"
    if not _REPO_ID.match(name):
        raise LensError(
            f"'{shown}' is neither a Hugging Face model id (like openai-community/gpt2) nor a model folder."
        )
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise LensError(
            f"'{shown}' is not a valid Hugging Face model id (letters, digits, '-', '_' and '.'; "
            "no '--' or '..'; at most 96 characters)."
        ) from exc


def _model_folder(path: Path, shown: str) -> str:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise LensError(f"'{shown}' is not a model folder: it has no config.json.")
    return str(path)


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of a hub model already in the local cache (its config.json there), or None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config, str) and Path(config).is_file():
        return str(Path(config).parent)
    return None


def hub_offline() -> bool:
    """True when the hub is switched off or does not answer within a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
            reachable.set()
        except OSError:
            pass

    # getaddrinfo ignores socket timeouts, so the probe runs in a thread we can stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 1)
    return not reachable.is_set()


def download_snapshot(repo_id: str, progress: Progress | None = None, *, weights: bool = True) -> str:
    """Fetch a hub model's config and tokenizer, and its weights (safetensors when the repo has them).

    Downloading before booting lets the caller show which file of how many is coming,
    and the boot then reads a plain local folder. ``weights=False`` fetches only the
    files that describe the model (an NDIF model's weights stay on NDIF).
    """
    from huggingface_hub import list_repo_files, snapshot_download
    from tqdm.auto import tqdm

    patterns = ["*.json", "*.txt", "*.model"]
    if weights:
        files = list_repo_files(repo_id)
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        patterns.append("*.safetensors" if has_safetensors else "pytorch_model*.bin")

    class ReportingBar(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            if progress is not None and self.total:
                progress(f"Downloading {repo_id}: file {self.n} of {self.total}", self.n / self.total)
            return shown

    return snapshot_download(repo_id, allow_patterns=patterns, tqdm_class=ReportingBar)


def read_config(source: str) -> dict:
    """A model's config.json, from its folder or as one small file from the hub (no weights)."""
    if Path(source).is_dir():
        path = Path(source) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, "config.json")
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; classified by type
            raise load_failure(exc, source) from exc
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LensError(f"The model's config.json could not be read: {exc}") from exc
    if not isinstance(config, dict):
        raise LensError("The model's config.json is not a JSON object.")
    return config


def exception_chain(exc: BaseException, depth: int = 6) -> list[BaseException]:
    """The exception and what caused it, outermost first (libraries wrap the cause that says what happened)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < depth and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (httpx, requests, the hub, a websocket handshake), or None."""
    code = getattr(exc, "status_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def first_line(exc: BaseException) -> str:
    """An exception's first line, at most 300 characters: what a person reads."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()[:300]


def load_failure(exc: BaseException, shown: str, source: str | None = None) -> LensError:
    """One line for a failed load, by the exception's type and status code, not its text."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = exception_chain(exc)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return LensError(f"Could not load model '{shown}': it is gated on the hub and needs an access token.")
    if any(isinstance(e, RepositoryNotFoundError) or status_code(e) == 404 for e in chain):
        return LensError(f"Could not load model '{shown}': no such model on the Hugging Face hub.")
    if source is not None and _pickled_weights_only(source):
        return LensError(
            f"Could not load model '{shown}': its weights are a pickled .bin file that could not be read "
            "safely; the lens needs safetensors."
        )
    return LensError(f"Could not load model '{shown}': {first_line(exc)}")


def _pickled_weights_only(source: str) -> bool:
    folder = Path(source)
    return folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin"))
