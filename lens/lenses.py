"""Lenses: how a residual is carried to the model's readout before it is read.

The logit lens reads a residual as it is; the tuned lens first applies a learned affine
map per layer; the Jacobian lens a corpus-averaged Jacobian per layer. All three are
objects of one type, passed to every function as ``lens=``, so the engine, the charts
and the exports never ask which kind they hold. The model's own output row is never
transformed: every lens agrees there, and it is what KL is measured against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from lens.errors import LensError

if TYPE_CHECKING:
    from lens.backend import Backend, Row


class Lens(ABC):
    """A map from a residual at one row to the residual the readout then reads."""

    #: What results and exports call this lens: "logit", "tuned" or "jacobian".
    kind: str = ""

    @abstractmethod
    def transform(self, row: Row, resid: torch.Tensor) -> torch.Tensor:
        """The residual the readout should read in place of ``resid`` at ``row`` (never the output row)."""

    @abstractmethod
    def check_compatible(self, model: Backend) -> None:
        """Refuse, in one line, a lens made for a model of other shapes or another unembedding."""

    @property
    def description(self) -> str:
        """A short label for titles and exports."""
        return f"{self.kind} lens"


class LogitLens(Lens):
    """The residual read as it is: the model's final norm and unembedding applied to every layer."""

    kind = "logit"

    def transform(self, row: Row, resid: torch.Tensor) -> torch.Tensor:
        return resid

    def check_compatible(self, model: Backend) -> None:
        """Every model: the logit lens is the model's own readout."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogitLens)

    def __hash__(self) -> int:
        return hash(LogitLens)


LOGIT_LENS = LogitLens()


def check_lens(lens: object) -> Lens:
    """``lens`` as a Lens (None is the logit lens), or one line saying what was passed instead."""
    if lens is None:
        return LOGIT_LENS
    if not isinstance(lens, Lens):
        raise LensError(
            f"lens must be a lens object (lens.LogitLens(), a TunedLens or a JacobianLens) or None, "
            f"not {type(lens).__name__}."
        )
    return lens
