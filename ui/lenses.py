"""Which lenses exist for a model: tuned or Jacobian, made here (on disk) or published on the hub.

A lens is named by a source string, kept in the URL: a tuned-lens folder or ``hub:<model>``,
a Jacobian-lens file as ``jlens:<path>`` or ``jlens-hub:<model>``; None is the logit lens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lens import PUBLISHED_LENSES, has_published_lens
from lens.provenance import HUB_PREFIX, JACOBIAN_HUB_PREFIX, JACOBIAN_PREFIX, lens_kind
from lens.sources import path_exists
from lens.tuned import model_key
from ui import config

KIND_LABELS = {"logit": "logit lens", "tuned": "tuned lens", "jacobian": "Jacobian lens"}


def lens_root() -> Path:
    """Where lenses trained in the app are kept, shared by every session of this server."""
    return config.server().cache_dir / "tuned-lenses"


def jacobian_root() -> Path:
    return config.server().cache_dir / "jacobian-lenses"


def trained_folder(model_name: str, key: str) -> Path:
    return lens_root() / model_key(model_name) / key


kind = lens_kind  # 'logit', 'tuned' or 'jacobian': what a source names


def available(model_name: str) -> dict[str, str]:
    """Label -> source (a folder, or hub:<model>) for every tuned lens this model can use."""
    found: dict[str, str] = {}
    folder = lens_root() / model_key(model_name)
    if path_exists(folder) and folder.is_dir():
        for config_file in sorted(folder.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                base = json.loads(config_file.read_text()).get("base_model_name_or_path", "")
            except (OSError, ValueError):
                continue
            if model_key(base) == model_key(model_name):
                found[f"Trained here: {config_file.parent.name}"] = str(config_file.parent)
    if model_name in PUBLISHED_LENSES:
        found["Published by the tuned-lens project (hub)"] = HUB_PREFIX + model_name
    return found


def available_jacobian(model_name: str) -> dict[str, str]:
    """Label -> source for every Jacobian lens fitted here for this model, and the published one if any.

    A file is matched to the model by the folder it was saved in; reading it checks its
    shapes and unembedding against the model (``JacobianLens.check_compatible``).
    """
    found: dict[str, str] = {}
    folder = jacobian_root() / model_key(model_name)
    if path_exists(folder) and folder.is_dir():
        for file in sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
            found[f"Fitted here: {file.stem}"] = JACOBIAN_PREFIX + str(file)
    if has_published_lens(model_name):
        found["Published (neuronpedia/jacobian-lens, hub)"] = JACOBIAN_HUB_PREFIX + model_name
    return found


def jacobian_file(model_name: str, texts: Sequence[str], prompts: int, tokens: int) -> Path:
    """Where a fit of these texts and settings is kept: the same inputs give the same lens, so reuse it."""
    digest = hashlib.sha256("\x00".join([model_name, *texts]).encode()).hexdigest()[:12]
    return jacobian_root() / model_key(model_name) / f"{model_key(model_name)}-{digest}-p{prompts}-t{tokens}.pt"


def first_of_each_kind(model_name: str, picked: str | None) -> dict[str, str]:
    """The picked lens and the first other lens of each kind this model has: kind -> source."""
    sources = {kind(picked): picked} if picked else {}
    for kind_name, found in (("tuned", available(model_name)), ("jacobian", available_jacobian(model_name))):
        if kind_name not in sources and found:
            sources[kind_name] = next(iter(found.values()))
    return {k: sources[k] for k in ("tuned", "jacobian") if k in sources}


def published_models() -> list[str]:
    return sorted({m for m in PUBLISHED_LENSES if "/" in m})
