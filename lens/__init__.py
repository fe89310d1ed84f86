"""Logit lens on TransformerLens 4: what a language model predicts after each layer.

Importable without Streamlit; the dashboard and the CLI are thin layers over this.
"""

__version__ = "0.1.0"  # as in pyproject.toml; JSON exports record it

from lens.attribution import Attribution, attribute
from lens.corpus import corpus_stats
from lens.engine import lens_rows, resolve_targets, retarget, run_lens, tokenize_prompt, tokenize_target
from lens.errors import LensError
from lens.model import DEFAULT_MODEL, LensModel, load_model
from lens.nnsight_backend import NnsightModel
from lens.result import LensResult

__all__ = [
    "Attribution",
    "attribute",
    "DEFAULT_MODEL",
    "LensError",
    "LensModel",
    "LensResult",
    "NnsightModel",
    "corpus_stats",
    "lens_rows",
    "load_model",
    "resolve_targets",
    "retarget",
    "run_lens",
    "tokenize_prompt",
    "tokenize_target",
]
