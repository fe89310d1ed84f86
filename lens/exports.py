"""CSV that spreadsheets open as data: cells that would start a formula are escaped.

Token columns hold strings like ``=``, ``+1``, ``-`` and ``@x`` (dozens in every run);
Excel and LibreOffice execute a cell beginning with ``=``, ``+``, ``-``, ``@``, tab or
carriage return as a formula. OWASP's advice is to prefix such cells with ``'``, which
the spreadsheet shows as text. Numbers are written as numbers: a negative logit is data.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from lens.result import LensResult

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: object) -> object:
    """A text cell made inert for spreadsheets; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_csv(frame: pd.DataFrame) -> str:
    """``frame.to_csv(index=False)`` with every text cell and column name escaped (OWASP CSV injection).

    Lines end in CRLF (RFC 4180), so a cell holding a bare carriage return is quoted too.
    """
    escaped = frame.copy()
    for column in escaped.columns:
        if escaped[column].dtype == object or pd.api.types.is_string_dtype(escaped[column]):
            escaped[column] = escaped[column].map(escape_cell)
    escaped.columns = [escape_cell(str(c)) for c in escaped.columns]
    return escaped.to_csv(index=False, lineterminator="\r\n")


def comparison_frame(results: Mapping[str, LensResult]) -> pd.DataFrame:
    """Every compared run in one table: a ``run`` column, then each run's own frame.

    Each run keeps its own target columns; ``target*`` columns repeat its first target
    under one name, so runs whose models name the token differently stay in one column.
    """
    frames = []
    for label, result in results.items():
        frame = result.to_frame()
        if result.targets:
            frame.insert(0, "target", result.targets[0])
            frame["target_prob"] = result.target_probs[0].ravel()
            frame["target_rank"] = result.target_ranks[0].ravel()
        frame.insert(0, "run", label)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
