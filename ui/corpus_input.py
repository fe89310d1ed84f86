"""Turning what people paste or upload into a list of texts, with one-line errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lens.errors import LensError

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_corpus.txt"
KINDS = (".txt", ".csv", ".jsonl")


def lines(text: str) -> list[str]:
    """One text per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def sample_texts() -> list[str]:
    return lines(SAMPLE.read_text(encoding="utf-8"))


def decode(name: str, data: bytes) -> str:
    if not data.strip():
        raise LensError(f"The file {name} is empty.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LensError(
            f"The file {name} is not UTF-8 text (byte {exc.start} cannot be read); save it as UTF-8."
        ) from exc


def table_columns(name: str, data: bytes) -> list[str]:
    """Column names of a CSV, or string fields of a JSON Lines file's first record."""
    text = decode(name, data)
    if name.lower().endswith(".csv"):
        return list(next(csv.reader(io.StringIO(text)), []))
    first = _records(name, text)[0]
    return [key for key, value in first.items() if isinstance(value, str)]


def texts_from_file(name: str, data: bytes, column: str | None = None) -> list[str]:
    """Texts from a .txt (one per line), .csv (one column) or .jsonl (one field) file."""
    suffix = Path(name).suffix.lower()
    if suffix not in KINDS:
        raise LensError(f"{name}: upload a .txt, .csv or .jsonl file.")
    text = decode(name, data)
    if suffix == ".txt":
        texts = lines(text)
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not column:
            raise LensError(f"{name} has no column named 'text': choose the column that holds the texts.")
        if column not in (reader.fieldnames or []):
            found = ", ".join(reader.fieldnames or []) or "none"
            raise LensError(f"{name} has no column '{column}'; its columns are: {found}.")
        texts = [str(row.get(column) or "").strip() for row in reader]
    else:
        records = _records(name, text)
        if not column or not any(column in r for r in records):
            raise LensError(f"{name} has no field '{column}' in its records.")
        texts = [str(r.get(column) or "").strip() for r in records]
    texts = [t for t in texts if t]
    if not texts:
        raise LensError(f"{name} holds no text.")
    return texts


def _records(name: str, text: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LensError(f"{name}, line {number}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(record, dict):
            raise LensError(f"{name}, line {number}: each line must be a JSON object.")
        records.append(record)
    if not records:
        raise LensError(f"The file {name} is empty.")
    return records
