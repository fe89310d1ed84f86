"""Token ids in and readable token strings out: the same for every backend.

Tokenizers store pieces in private alphabets: GPT-2's byte-level BPE writes a space as
``Ġ``; SentencePiece writes it as ``▁`` and keeps raw bytes as ``<0xE6>``. People should
see one convention whatever the model: whitespace made visible, and bytes that are not
valid UTF-8 on their own shown as ``\\xe6`` instead of ``�`` or nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache, cached_property
from typing import TYPE_CHECKING

import numpy as np

from lens.checks import flag, listed
from lens.errors import LensError

if TYPE_CHECKING:
    from lens.backend import Backend

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

    @cached_property
    def longest_token_bytes(self) -> int:
        """Bytes of the vocabulary's longest piece: no token stands for more characters than this."""
        pieces = self._tokenizer.get_vocab()
        return max((len(piece_bytes(p, self._byte_level)) for p in pieces), default=1)


def tokenizer_prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts a text with its BOS token (Llama's does, GPT-2's doesn't)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("x")["input_ids"][:1]) == [bos]


def _encode(model: Backend, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def uses_bos(model: Backend, prepend_bos: bool | None) -> bool:
    """Whether a BOS token goes first: the model's default unless the caller says."""
    prepend_bos = flag(prepend_bos, "prepend_bos", optional=True)
    return model.default_prepend_bos if prepend_bos is None else prepend_bos


def check_text(text: object, what: str) -> None:
    """Text the tokenizer can read: a str (not bytes) that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(text, str):
        raise LensError(f"{what} must be text (str), not {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LensError(
            f"{what} is not valid text: character {exc.start + 1} is a lone surrogate (invalid UTF-8 input)."
        ) from exc


def tokenize_prompt(model: Backend, prompt: str | Sequence[int], prepend_bos: bool | None = None) -> list[int]:
    """The exact ids the model will be fed, after checking the prompt is usable.

    A list of token ids is fed as it is (``prepend_bos`` is then ignored): a snippet that
    reproduces a page names its prompt by ids, which no re-tokenizing can change.
    """
    if isinstance(prompt, (list, tuple)):
        return _check_ids(model, prompt)
    check_text(prompt, "The prompt")
    if not prompt.strip():
        raise LensError("The prompt is empty: type some text to look at.")
    # Tokenizing 10 MB takes ~40 s; a text longer than n_ctx of the longest tokens can't fit.
    most = model.n_ctx * model.token_name.longest_token_bytes
    if len(prompt) > most:
        raise LensError(
            f"The prompt is {len(prompt):,} characters long; model '{model.name}' reads at most {model.n_ctx:,} "
            f"tokens, which hold at most {most:,} characters."
        )
    ids = _encode(model, prompt)
    if uses_bos(model, prepend_bos):
        if model.tokenizer.bos_token_id is None:
            raise LensError(f"Model '{model.name}' has no beginning-of-sequence token to prepend.")
        ids = [model.tokenizer.bos_token_id, *ids]
    if len(ids) > model.n_ctx:
        raise LensError(f"The prompt is {len(ids)} tokens long; model '{model.name}' reads at most {model.n_ctx}.")
    return ids


def _check_ids(model: Backend, ids: Sequence[int]) -> list[int]:
    if not ids:
        raise LensError("The prompt is empty: give at least one token id.")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        raise LensError("A prompt given as a list must hold whole-number token ids.")
    bad = next((int(i) for i in ids if not 0 <= int(i) < model.d_vocab), None)
    if bad is not None:
        raise LensError(f"Token id {bad} is outside the vocabulary (0 to {model.d_vocab - 1}).")
    if len(ids) > model.n_ctx:
        raise LensError(f"The prompt is {len(ids)} tokens long; model '{model.name}' reads at most {model.n_ctx}.")
    return [int(i) for i in ids]


def prompt_text(model: Backend, prompt: str | Sequence[int]) -> str:
    """The prompt as text: as typed, or the decoded ids."""
    return prompt if isinstance(prompt, str) else model.tokenizer.decode(list(prompt))


def fed_bos(model: Backend, prompt: str | Sequence[int], token_ids: Sequence[int], prepend_bos: bool | None) -> bool:
    """Whether a start token was read first: the setting for text, the ids themselves for ids."""
    if isinstance(prompt, str):
        return uses_bos(model, prepend_bos)
    return model.tokenizer.bos_token_id is not None and token_ids[0] == model.tokenizer.bos_token_id


def tokenize_target(model: Backend, target: str | int) -> list[int]:
    """Token ids of a target as it would continue a text.

    Tokenizers treat the start of a string specially (SentencePiece prepends a word
    boundary), so the target is tokenized after a newline and the newline's ids removed.
    An int is taken as a token id.
    """
    if isinstance(target, (bool, np.bool_)):
        raise LensError(f"A target is a token (str) or a token id (int), not {target!r}.")
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < model.d_vocab:
            raise LensError(f"Token id {target} is outside the vocabulary (0 to {model.d_vocab - 1}).")
        return [int(target)]
    check_text(target, "A target token")
    if target == "":
        raise LensError("A target token is empty.")
    context, joined = _encode(model, "\n"), _encode(model, "\n" + target)
    if joined[: len(context)] == context and len(joined) > len(context):
        return joined[len(context) :]
    return _encode(model, target)


def resolve_targets(model: Backend, targets: Sequence[str | int]) -> tuple[list[int], list[str], list[str]]:
    """Ids, shown names and warnings for the targets; several-token targets use their first token.

    A single string or id is one target: iterating " Paris" would track its characters.
    A word typed without its leading space ("Lily") that splits into several tokens is
    read as its one-token spaced form (" Lily") when there is one: that is what people mean.
    """
    targets = listed(targets, "targets", (str, int, np.integer), "a token (str), a token id (int) or a list of them")
    ids, names, warnings = [], [], []
    for target in targets:
        pieces = tokenize_target(model, target)
        spaced = tokenize_target(model, " " + target) if isinstance(target, str) and len(pieces) > 1 else []
        if len(spaced) == 1 and not target[:1].isspace():
            warnings.append(
                f"Target {target!r} is {len(pieces)} tokens without a leading space; the lens follows the "
                f"one-token {model.token_name(spaced[0])!r} instead."
            )
            pieces = spaced
        elif len(pieces) > 1:
            shown = " + ".join(model.token_name(p) for p in pieces)
            warnings.append(
                f"Target {target!r} is {len(pieces)} tokens ({shown}); the lens tracks its first token, "
                f"{model.token_name(pieces[0])!r}."
            )
        if pieces[0] not in ids:
            ids.append(pieces[0])
            names.append(model.token_name(pieces[0]))
    return ids, names, warnings


def spacing_twin(model: Backend, target: str | int) -> tuple[int, int] | None:
    """(the id followed, the other spelling's id) when a typed word is one token both with and
    without its leading space ("Paris" 40313 and " Paris" 6342 in GPT-2); else None.

    Both are real tokens with different meanings in context (after "city of", GPT-2 writes
    " Paris"), so a page says which one it follows and offers the other.
    """
    if not isinstance(target, str) or not target.strip():
        return None
    word = target.lstrip()
    bare, spaced = tokenize_target(model, word), tokenize_target(model, " " + word)
    if len(bare) != 1 or len(spaced) != 1 or bare == spaced:
        return None
    followed = resolve_targets(model, [target])[0][0]
    if followed not in (bare[0], spaced[0]):
        return None
    return followed, spaced[0] if followed == bare[0] else bare[0]


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as one user message in the tokenizer's chat format, ready for the assistant's reply.

    Instruction-tuned models answer far better inside their own format; the returned text
    holds the format's special tokens (a start token too, for most), which the tokenizer
    reads back as those tokens.
    """
    check_text(text, "The prompt")
    if not getattr(tokenizer, "chat_template", None):
        raise LensError("This model's tokenizer has no chat template.")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
