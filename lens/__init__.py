"""Logit lens on TransformerLens 4: what a language model predicts after each layer.

Importable without Streamlit; the dashboard and the CLI are thin layers over this.
Every model, whichever library runs it, is a :class:`Backend`; every lens (logit,
tuned, Jacobian) is a :class:`Lens`; every run returns a :class:`LensResult`.
"""

from lens.attribution import Attribution, attribute
from lens.backend import POINTS, Backend, Capabilities, OutputTransform, Readout, Row, lens_rows
from lens.corpus import corpus_stats
from lens.engine import retarget, run_lens
from lens.errors import LensError
from lens.lenses import LOGIT_LENS, Lens, LogitLens
from lens.model import DEFAULT_MODEL, LensModel, load_model
from lens.nnsight_backend import NnsightModel
from lens.prompt_set import PromptSetResult, prompt_set, read_prompt_rows
from lens.result import LensResult
from lens.tokens import resolve_targets, tokenize_prompt, tokenize_target
from lens.tuned import TunedLens, train_tuned_lens

__all__ = [
    "Attribution",
    "Backend",
    "Capabilities",
    "DEFAULT_MODEL",
    "LOGIT_LENS",
    "Lens",
    "LensError",
    "LensModel",
    "LensResult",
    "LogitLens",
    "NnsightModel",
    "OutputTransform",
    "POINTS",
    "PromptSetResult",
    "Readout",
    "Row",
    "TunedLens",
    "attribute",
    "corpus_stats",
    "lens_rows",
    "load_model",
    "prompt_set",
    "read_prompt_rows",
    "resolve_targets",
    "retarget",
    "run_lens",
    "tokenize_prompt",
    "tokenize_target",
    "train_tuned_lens",
]
