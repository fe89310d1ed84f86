"""The logit lens: one forward pass, then the model's final norm and unembedding on every cell.

A cell is a (row, position) pair; a row is one residual-stream point. The full
[rows x positions x vocab] tensor is never held: cells go through the unembedding in
chunks, and each chunk is reduced to the statistics people look at before the next.

Three identities keep the per-chunk work to one exp pass over the vocabulary:

* entropy        H(p)      = log Z - E_p[logit]
* KL to final    KL(f || p) = log Z_p - E_f[logit_p] - H(f),  with log Z_p the row's normaliser
* exact rank     1 + #{v : logit_v > logit_target}

Chunks hold every row for a block of positions, so the final row's distribution f is
in the same chunk as the rows compared with it. Logits are shifted by their maximum
before exp: besides avoiding overflow, it keeps log Z and E_p[logit] small, so their
difference (the entropy) does not lose fp32 digits to cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from lens.errors import LensError
from lens.model import LensModel
from lens.result import LensResult

POINTS = ("resid_pre", "resid_mid", "resid_post")
CHUNK_BYTES = 288 * 2**20  # ~750 cells of GPT-2: vocab-major matmuls run fastest with many cells
TOPK_BLOCK = 64


@dataclass(frozen=True)
class Row:
    """One residual-stream point the lens reads: a hook name and the label people see."""

    hook: str
    label: str
    layer: int


def lens_rows(model: LensModel, points: Sequence[str] = ("resid_post",)) -> list[Row]:
    """Rows bottom-up. The final block's output is always included, as the last row."""
    unknown = set(points) - set(POINTS)
    if unknown:
        raise LensError(f"Unknown residual point {min(unknown)!r}; choose from {', '.join(POINTS)}.")
    n = model.n_layers
    rows = []
    if "resid_pre" in points:
        rows.append(Row("blocks.0.hook_resid_pre", "embed", -1))
    for i in range(n):
        if "resid_mid" in points:
            rows.append(Row(f"blocks.{i}.hook_resid_mid", f"L{i} attn", i))
        if "resid_post" in points or i == n - 1:
            rows.append(Row(f"blocks.{i}.hook_resid_post", f"L{i}" if i < n - 1 else f"L{i} (output)", i))
    return rows


def _encode(model: LensModel, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def uses_bos(model: LensModel, prepend_bos: bool | None) -> bool:
    """Whether a BOS token goes first: the model's default unless the caller says."""
    return model.default_prepend_bos if prepend_bos is None else bool(prepend_bos)


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


def tokenize_prompt(model: LensModel, prompt: str, prepend_bos: bool | None = None) -> list[int]:
    """The exact ids the model will be fed, after checking the prompt is usable."""
    check_text(prompt, "The prompt")
    if not prompt.strip():
        raise LensError("The prompt is empty: type some text to look at.")
    ids = _encode(model, prompt)
    if uses_bos(model, prepend_bos):
        if model.tokenizer.bos_token_id is None:
            raise LensError(f"Model '{model.name}' has no beginning-of-sequence token to prepend.")
        ids = [model.tokenizer.bos_token_id, *ids]
    if len(ids) > model.n_ctx:
        raise LensError(f"The prompt is {len(ids)} tokens long; model '{model.name}' reads at most {model.n_ctx}.")
    return ids


def tokenize_target(model: LensModel, target: str | int) -> list[int]:
    """Token ids of a target as it would continue a text.

    Tokenizers treat the start of a string specially (SentencePiece prepends a word
    boundary), so the target is tokenized after a newline and the newline's ids removed.
    An int is taken as a token id.
    """
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


def resolve_targets(model: LensModel, targets: Sequence[str | int]) -> tuple[list[int], list[str], list[str]]:
    """Ids, shown names and warnings for the targets; several-token targets use their first token.

    A single string or id is one target: iterating " Paris" would track its characters.
    """
    if isinstance(targets, (str, int, np.integer)):
        targets = [targets]
    ids, names, warnings = [], [], []
    for target in targets:
        pieces = tokenize_target(model, target)
        if len(pieces) > 1:
            shown = " + ".join(model.token_name(p) for p in pieces)
            warnings.append(
                f"Target {target!r} is {len(pieces)} tokens ({shown}); the lens tracks its first token, "
                f"{model.token_name(pieces[0])!r}."
            )
        if pieces[0] not in ids:
            ids.append(pieces[0])
            names.append(model.token_name(pieces[0]))
    return ids, names, warnings


def capture_normed(
    model: LensModel,
    token_ids: Sequence[int],
    rows: Sequence[Row],
    translate: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One forward pass; the final-norm output at every row, [rows, positions, d_model] fp32.

    ``translate(row_index, resid)`` (a tuned lens) maps a residual before the norm; the
    last row is never translated, so it stays the model's output.
    """
    return capture_normed_batch(model, [list(token_ids)], rows, translate)[:, 0]


def capture_normed_batch(
    model: LensModel,
    batch: Sequence[Sequence[int]],
    rows: Sequence[Row],
    translate: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`capture_normed` for equal-length sequences in one forward pass, [rows, batch, positions, d_model].

    The lock is held for the forward pass and the norm: both go through the shared
    model's hook points.
    """
    hooks = list(dict.fromkeys(r.hook for r in rows))
    device = model.unembed_weight.device
    tokens = torch.tensor([list(ids) for ids in batch], dtype=torch.long, device=device)
    with model.lock, torch.no_grad():
        try:
            # Stopping after the last block skips the model's own [positions x vocab] logits.
            _, cache = model.bridge.run_with_cache(tokens, names_filter=hooks, stop_at_layer=model.n_layers)
        except (ValueError, KeyError) as exc:
            raise LensError(f"Model '{model.name}' cannot provide these residual points: {exc}") from exc
        normed = []
        for index, row in enumerate(rows):
            if row.hook not in cache:
                raise LensError(f"Model '{model.name}' has no {row.hook.split('hook_')[-1]} point.")
            resid = cache[row.hook]
            if translate is not None and index < len(rows) - 1:
                resid = translate(index, resid)
            normed.append(model.final_norm(resid))
        del cache
    return torch.stack(normed)


def _ranks(logits: torch.Tensor, target_logits: torch.Tensor, greater: torch.Tensor) -> torch.Tensor:
    """1 + how many logits beat each target's, [cells, targets].

    ``logits`` is vocab-major [vocab, cells]; ``greater`` is bool scratch of that shape.
    """
    counts = [
        torch.gt(logits, target_logits[:, j], out=greater).view(torch.uint8).sum(0, dtype=torch.int64)
        for j in range(target_logits.shape[1])
    ]
    if not counts:
        return torch.ones(logits.shape[1], 0, dtype=torch.int64, device=logits.device)
    return 1 + torch.stack(counts, dim=1)


def _top_k_columns(padded: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every column of vocab-major logits, [cells, k] values and ids, largest first.

    ``padded`` has ``-inf`` rows up to a multiple of TOPK_BLOCK. torch.topk along the
    vocabulary of a vocab-major tensor is ~10x slower than along a contiguous row, so
    columns are split into blocks: only the k blocks with the largest maxima can hold the
    top k, and the top k is taken among those few candidates.
    """
    n_blocks = padded.shape[0] // TOPK_BLOCK
    cells = padded.shape[1]
    block_max = padded.view(n_blocks, TOPK_BLOCK, cells).amax(1)
    best = torch.topk(block_max.t(), min(k, n_blocks), dim=1).indices
    offsets = torch.arange(TOPK_BLOCK, device=padded.device)
    candidates = (best.unsqueeze(2) * TOPK_BLOCK + offsets).reshape(cells, -1)
    values, picked = torch.topk(torch.gather(padded.t(), 1, candidates), k, dim=1)
    return values, torch.gather(candidates, 1, picked)


def _store(out: dict[str, np.ndarray], name: str, value: torch.Tensor, positions: slice, n_rows: int) -> None:
    """Write one chunk, cell-major ([cells, ...] or [targets, cells]), into its [..., rows, positions, ...] array."""
    array = out[name]
    width = positions.stop - positions.start
    if name.startswith("target_"):
        array[:, :, positions] = value.reshape(-1, n_rows, width).cpu().numpy()
    else:
        array[:, positions] = value.reshape(n_rows, width, *array.shape[2:]).cpu().numpy()


def _chunk_cells(vocab: int) -> int:
    """Cells per chunk: the two fp32 [vocab x cells] buffers stay within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (2 * 4 * vocab))


def cell_statistics(
    model: LensModel,
    normed: torch.Tensor,
    top_k: int,
    target_ids: Sequence[int],
    next_ids: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Exact per-cell statistics from final-norm outputs, chunk by chunk.

    Returns top-k ids and probabilities, log-normaliser, entropy, KL(final || row), and
    the targets' probabilities, logits and ranks. The final row must be ``normed[-1]``.
    ``next_ids`` gives one token per position (the text's actual next token); its logit
    in every cell comes back as ``next_logits``.
    """
    n_rows, n_pos, _ = normed.shape
    vocab = model.d_vocab
    k = min(top_k, vocab)
    device = normed.device
    targets = torch.tensor(list(target_ids), dtype=torch.long, device=device)
    block = max(1, _chunk_cells(vocab) // n_rows)
    out = {
        "top_ids": np.empty((n_rows, n_pos, k), np.int64),
        "top_probs": np.empty((n_rows, n_pos, k), np.float32),
        "log_normalizer": np.empty((n_rows, n_pos), np.float32),
        "entropy": np.empty((n_rows, n_pos), np.float32),
        "kl_to_final": np.empty((n_rows, n_pos), np.float32),
        "target_probs": np.empty((len(targets), n_rows, n_pos), np.float32),
        "target_logits": np.empty((len(targets), n_rows, n_pos), np.float32),
        "target_ranks": np.empty((len(targets), n_rows, n_pos), np.int64),
    }
    if next_ids is not None:
        next_tokens = torch.as_tensor(list(next_ids), dtype=torch.long, device=device)
        out["next_logits"] = np.empty((n_rows, n_pos), np.float32)
    scratch = _Scratch(vocab, n_rows, device, need_ranks=len(targets) > 0)
    for start in range(0, n_pos, block):
        stop = min(start + block, n_pos)
        width = stop - start
        n_cells = n_rows * width
        positions = slice(start, stop)
        padded, exps, greater, final = scratch.for_width(width)
        # Vocab-major [vocab, cells]: this product runs ~1.5x faster here than [cells, vocab].
        # Cells are row-major: column r * width + j is row r at position start + j.
        logits = padded[:vocab]
        model.unembed_columns(normed[:, start:stop].reshape(n_cells, -1), out=logits)

        top_values, top_ids = _top_k_columns(padded, k)
        target_logits = logits[targets].t()
        target_ranks = _ranks(logits, target_logits, greater)
        if next_ids is not None:
            wanted = next_tokens[start:stop].repeat(n_rows)
            _store(out, "next_logits", logits[wanted, torch.arange(n_cells, device=device)], positions, n_rows)

        shift = top_values[:, 0]
        logits.sub_(shift)
        exps = torch.exp(logits, out=exps)
        sum_exp = exps.sum(0)
        log_sum_exp = torch.log(sum_exp)
        log_normalizer = shift + log_sum_exp

        # Both expectations, E_p[logit] (entropy) and E_f[logit] (KL, f the final row's
        # distribution at the same position), are in-place products summed by torch's
        # cascade reduction: a dot product's long fp32 accumulation loses ~1e-5 over 50k
        # tokens. This works for soft-capped logits too, which are not linear in x.
        last = (n_rows - 1) * width
        final = torch.div(exps[:, last:], sum_exp[last:], out=final)
        entropy = log_sum_exp - exps.mul_(logits).sum(0) / sum_exp
        cross = logits.view(vocab, n_rows, width).mul_(final.unsqueeze(1)).sum(0)
        kl = (log_sum_exp.view(n_rows, width) - cross - entropy.view(n_rows, width)[-1]).clamp_min_(0)

        _store(out, "top_ids", top_ids, positions, n_rows)
        _store(out, "top_probs", torch.exp(top_values - log_normalizer[:, None]), positions, n_rows)
        _store(out, "log_normalizer", log_normalizer, positions, n_rows)
        _store(out, "entropy", entropy, positions, n_rows)
        _store(out, "kl_to_final", kl, positions, n_rows)
        _store(out, "target_logits", target_logits.T, positions, n_rows)
        _store(out, "target_probs", torch.exp(target_logits - log_normalizer[:, None]).T, positions, n_rows)
        _store(out, "target_ranks", target_ranks.T, positions, n_rows)
    return out


class _Scratch:
    """Reusable chunk buffers, made once per chunk width (fresh pages cost as much as exp)."""

    def __init__(self, vocab: int, n_rows: int, device: torch.device, need_ranks: bool) -> None:
        self.vocab, self.n_rows, self.device, self.need_ranks = vocab, n_rows, device, need_ranks
        self.padded_vocab = -(-vocab // TOPK_BLOCK) * TOPK_BLOCK
        self.by_width: dict[int, tuple[torch.Tensor, ...]] = {}

    def for_width(self, width: int) -> tuple[torch.Tensor, ...]:
        if width not in self.by_width:
            cells = self.n_rows * width
            padded = torch.full((self.padded_vocab, cells), -torch.inf, device=self.device)
            self.by_width[width] = (
                padded,
                torch.empty(self.vocab, cells, device=self.device),
                torch.empty(self.vocab, cells if self.need_ranks else 0, dtype=torch.bool, device=self.device),
                torch.empty(self.vocab, width, device=self.device),
            )
        return self.by_width[width]


def run_lens(
    model: LensModel,
    prompt: str,
    *,
    top_k: int = 10,
    targets: Sequence[str | int] = (),
    prepend_bos: bool | None = None,
    points: Sequence[str] = ("resid_post",),
    keep_unembed_input: bool = False,
    lens=None,
) -> LensResult:
    """Read the model's next-token distribution after every residual point of ``prompt``.

    ``prepend_bos=None`` follows the model's default. ``keep_unembed_input`` keeps the
    final-norm outputs in the result so :func:`retarget` can add targets without a
    forward pass. ``lens`` is a tuned lens; None reads the residual stream directly.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise LensError(f"top_k must be a whole number of at least 1, not {top_k!r}.")
    token_ids = tokenize_prompt(model, prompt, prepend_bos)
    target_ids, target_names, warnings = resolve_targets(model, targets)
    rows = lens_rows(model, points)
    translate = None
    if lens is not None:
        lens.check_compatible(model)
        translate = lens.translator_for(rows)
    normed = capture_normed(model, token_ids, rows, translate)
    stats = cell_statistics(model, normed, int(top_k), target_ids)
    return LensResult(
        model_name=model.name,
        prompt=prompt,
        tokens=model.token_name.many(token_ids),
        token_ids=token_ids,
        layers=[r.label for r in rows],
        points=[r.hook for r in rows],
        top_tokens=_names_array(model, stats.pop("top_ids"), stats),
        targets=target_names,
        target_ids=target_ids,
        lens_kind="logit" if lens is None else "tuned",
        prepend_bos=uses_bos(model, prepend_bos),
        warnings=warnings,
        unembed_input=normed.cpu().numpy() if keep_unembed_input else None,
        **stats,
    )


def _names_array(model: LensModel, top_ids: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Readable names for every top-k id (and puts the ids back into ``stats``).

    An object array of shared strings: 8 bytes a cell, where fixed-width numpy strings
    took 4 bytes per character of the longest name (15 MB of a 256-token result).
    """
    stats["top_ids"] = top_ids
    unique, inverse = np.unique(top_ids, return_inverse=True)
    names = np.empty(max(len(unique), 1), dtype=object)
    names[: len(unique)] = model.token_name.many(unique.tolist())
    return names[inverse].reshape(top_ids.shape)


def retarget(model: LensModel, result: LensResult, targets: Sequence[str | int]) -> LensResult:
    """The same result with other targets, from its kept final-norm outputs: no forward pass.

    Probabilities and logits take one small matmul per target; exact ranks need every
    logit of every cell, so they take a chunked pass of matmul and compare, without the
    exp, top-k and KL work of a full run.
    """
    if result.unembed_input is None:
        raise LensError(
            "This result did not keep its unembedding inputs; run the lens again with keep_unembed_input=True."
        )
    target_ids, target_names, warnings = resolve_targets(model, targets)
    normed = torch.from_numpy(result.unembed_input).to(model.unembed_weight.device)
    n_rows, n_pos, _ = normed.shape
    flat = normed.reshape(n_rows * n_pos, -1)
    ids = torch.tensor(target_ids, dtype=torch.long, device=flat.device)
    chunk = _chunk_cells(model.d_vocab)
    greater = torch.empty(model.d_vocab, min(chunk, flat.shape[0]), dtype=torch.bool, device=flat.device)
    target_logits, ranks = [], []
    for start in range(0, flat.shape[0], chunk):
        logits = model.unembed_columns(flat[start : start + chunk])
        target_logits.append(logits[ids].t())
        ranks.append(_ranks(logits, target_logits[-1], greater[:, : logits.shape[1]]))
    chosen = torch.cat(target_logits)
    log_normalizer = torch.from_numpy(result.log_normalizer).reshape(-1, 1).to(flat.device)
    shape = (-1, n_rows, n_pos)
    return replace(
        result,
        targets=target_names,
        target_ids=target_ids,
        target_logits=chosen.T.reshape(shape).cpu().numpy(),
        target_probs=torch.exp(chosen - log_normalizer).T.reshape(shape).cpu().numpy(),
        target_ranks=torch.cat(ranks).T.reshape(shape).cpu().numpy(),
        warnings=[w for w in result.warnings if not w.startswith("Target ")] + warnings,
    )
