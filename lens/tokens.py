"""Readable token strings.

Tokenizers store pieces in private alphabets: GPT-2's byte-level BPE writes a space as
``Ġ``; SentencePiece writes it as ``▁`` and keeps raw bytes as ``<0xE6>``. People should
see one convention whatever the model: whitespace made visible, and bytes that are not
valid UTF-8 on their own shown as ``\\xe6`` instead of ``�`` or nothing.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@cache
def _byte_level_decoder() -> dict[str, int]:
    """Map GPT-2's printable stand-in characters back to the bytes they encode.

    Byte-level BPE keeps printable Latin-1 bytes as themselves and moves the other 68
    bytes (controls, space, and a few more) to code points 256 and up, in byte order.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {chr(b): b for b in kept}
    moved = (b for b in range(256) if b not in mapping.values())
    for offset, b in enumerate(moved):
        mapping[chr(256 + offset)] = b
    return mapping


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's pieces use GPT-2's byte-to-character alphabet."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The raw bytes a vocabulary piece stands for."""
    if byte_level:
        decoder = _byte_level_decoder()
        if all(ch in decoder for ch in piece):
            return bytes(decoder[ch] for ch in piece)
        return piece.encode("utf-8")
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def readable(raw: bytes) -> str:
    """Show bytes as text with whitespace and control characters made visible."""
    text = raw.decode("utf-8", errors="backslashreplace")
    out = []
    for ch in text:
        if ch in _VISIBLE_WHITESPACE:
            out.append(_VISIBLE_WHITESPACE[ch])
        elif unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


class TokenNamer:
    """Turns token ids into readable strings for one tokenizer, remembering each answer."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._byte_level = is_byte_level(tokenizer)
        self._special = set(tokenizer.all_special_ids)
        self._names: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        name = self._names.get(token_id)
        if name is None:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            if piece is None:
                name = f"<id {token_id}>"
            elif token_id in self._special:
                name = piece
            else:
                name = readable(piece_bytes(piece, self._byte_level))
            self._names[token_id] = name
        return name

    def many(self, token_ids) -> list[str]:
        return [self(i) for i in token_ids]
