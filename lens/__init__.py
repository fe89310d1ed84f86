"""Logit lens on TransformerLens 4: what a language model predicts after each layer.

Importable without Streamlit; the dashboard and the CLI are thin layers over this.
Every model, whichever library runs it, is a :class:`Backend`; every lens (logit,
tuned, Jacobian) is a :class:`Lens`; every run returns a :class:`LensResult`.
``charts``, ``attribution_charts`` and ``patch_charts`` (Altair chart builders) and ``provenance``
(what a view was made from, for exports and "Reproduce in Python") are submodules, imported on use.
"""

__version__ = "0.1.0"  # as in pyproject.toml; JSON exports record it

from lens.attribution import Attribution, CellWrites, attribute, cell_writes, head_attention
from lens.attribution import token_text as typable_token
from lens.backend import (
    POINTS,
    Backend,
    BlockWrites,
    Capabilities,
    ComponentWrites,
    OutputTransform,
    Patch,
    Readout,
    Row,
    lens_rows,
)
from lens.compare import js_divergence, last_position_log_probs, same_vocabulary, token_text
from lens.corpus import corpus_stats
from lens.engine import retarget, run_lens
from lens.errors import LensError
from lens.exports import safe_csv
from lens.jacobian import FitCancelled, JacobianLens, fit_jacobian_lens, has_published_lens, published_jacobian_lens
from lens.lenses import LOGIT_LENS, Lens, LogitLens
from lens.loading import DEFAULT_MODEL, load_model
from lens.model import LensModel
from lens.nnsight_backend import NnsightModel
from lens.patching import METRICS as PATCH_METRICS
from lens.patching import PATCH_POINTS, PatchResult, patch, patched_lens, replace_word
from lens.patching import words as prompt_words
from lens.prompt_set import PromptSetResult, prompt_set, read_prompt_rows
from lens.result import LensResult
from lens.settings import Settings
from lens.tokens import resolve_targets, tokenize_prompt, tokenize_target
from lens.tuned import PUBLISHED_LENSES, TunedLens, train_tuned_lens, training_key

__all__ = [
    "Attribution",
    "Backend",
    "BlockWrites",
    "Capabilities",
    "CellWrites",
    "ComponentWrites",
    "DEFAULT_MODEL",
    "FitCancelled",
    "JacobianLens",
    "LOGIT_LENS",
    "Lens",
    "LensError",
    "LensModel",
    "LensResult",
    "LogitLens",
    "NnsightModel",
    "OutputTransform",
    "PATCH_METRICS",
    "PATCH_POINTS",
    "Patch",
    "PatchResult",
    "POINTS",
    "PUBLISHED_LENSES",
    "PromptSetResult",
    "Readout",
    "Row",
    "Settings",
    "TunedLens",
    "attribute",
    "attribution_charts",
    "cell_writes",
    "charts",
    "patch_charts",
    "provenance",
    "corpus_stats",
    "fit_jacobian_lens",
    "has_published_lens",
    "head_attention",
    "js_divergence",
    "last_position_log_probs",
    "lens_rows",
    "patch",
    "patched_lens",
    "prompt_words",
    "replace_word",
    "load_model",
    "prompt_set",
    "published_jacobian_lens",
    "read_prompt_rows",
    "resolve_targets",
    "retarget",
    "run_lens",
    "safe_csv",
    "same_vocabulary",
    "token_text",
    "tokenize_prompt",
    "tokenize_target",
    "train_tuned_lens",
    "training_key",
    "typable_token",
]
