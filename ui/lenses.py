"""Which tuned lenses exist for a model: trained here (on disk) or published on the hub."""

from __future__ import annotations

import json
from pathlib import Path

from lens import PUBLISHED_LENSES
from lens.tuned import model_key
from ui import config

HUB_PREFIX = "hub:"


def lens_root() -> Path:
    """Where lenses trained in the app are kept, shared by every session of this server."""
    return config.server().cache_dir / "tuned-lenses"


def trained_folder(model_name: str, key: str) -> Path:
    return lens_root() / model_key(model_name) / key


def available(model_name: str) -> dict[str, str]:
    """Label -> source (a folder, or hub:<model>) for every tuned lens this model can use."""
    found: dict[str, str] = {}
    folder = lens_root() / model_key(model_name)
    if folder.is_dir():
        for config in sorted(folder.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                base = json.loads(config.read_text()).get("base_model_name_or_path", "")
            except (OSError, ValueError):
                continue
            if model_key(base) == model_key(model_name):
                found[f"Trained here: {config.parent.name}"] = str(config.parent)
    if model_name in PUBLISHED_LENSES:
        found["Published by the tuned-lens project (hub)"] = HUB_PREFIX + model_name
    return found


def published_models() -> list[str]:
    return sorted({m for m in PUBLISHED_LENSES if "/" in m})
