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

import ctypes
import functools
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from lens.backend import Backend, Patch, Progress, Readout, Row, check_backend, lens_rows
from lens.checks import callback, flag, whole_number
from lens.errors import LensError
from lens.lenses import LOGIT_LENS, Lens, check_lens
from lens.result import LensResult
from lens.tokens import fed_bos, prompt_text, resolve_targets, tokenize_prompt

T = TypeVar("T")

CHUNK_BYTES = 144 * 2**20  # ~750 cells of GPT-2: vocab-major matmuls run fastest with many cells
SLAB_BYTES = 8 * 2**20  # a slab of a chunk's logits, made by one matmul: it stays in the shared L3 cache
REDUCE_BYTES = 1 * 2**20  # the part of a slab each reduction reads: it stays in a core's L2 cache
TOPK_BLOCK = 64
GEMM_CELLS = 8  # the matmul runs ~1.4x faster here when its cell count is a multiple of 8 (744 against 732)


def capture_normed(
    model: Backend,
    token_ids: Sequence[int],
    rows: Sequence[Row],
    lens: Lens = LOGIT_LENS,
    patches: Mapping[str, Patch] | None = None,
) -> torch.Tensor:
    """One forward pass; the final-norm output at every row, [rows, positions, d_model] fp32.

    ``lens`` carries each residual to what the readout reads; the last row is never
    transformed, so it stays the model's output. ``patches`` are written into the run first.
    """
    return capture_normed_batch(model, [list(token_ids)], rows, lens, patches)[:, 0]


def capture_normed_batch(
    model: Backend,
    batch: Sequence[Sequence[int]],
    rows: Sequence[Row],
    lens: Lens = LOGIT_LENS,
    patches: Mapping[str, Patch] | None = None,
) -> torch.Tensor:
    """:func:`capture_normed` for equal-length sequences in one forward pass, [rows, batch, positions, d_model].

    The lock is held for the forward pass and the norm: both may go through the shared
    model's hook points.
    """
    readout = model.readout
    hooks = list(dict.fromkeys(r.hook for r in rows))
    tokens = torch.tensor([list(ids) for ids in batch], dtype=torch.long, device=readout.device)
    with model.lock, torch.no_grad():
        try:
            cache = model.capture_patched(tokens, hooks, patches) if patches else model.capture(tokens, hooks)
        except (ValueError, KeyError) as exc:
            raise LensError(f"Model '{model.name}' cannot provide these residual points: {exc}") from exc
        normed = []
        for index, row in enumerate(rows):
            if row.hook not in cache:
                raise LensError(f"Model '{model.name}' has no {row.hook.split('hook_')[-1]} point.")
            resid = cache[row.hook]
            if index < len(rows) - 1:
                resid = lens.transform(row, resid)
            normed.append(readout.normed(resid))
        del cache
    return torch.stack(normed)


def _count_greater(
    logits: torch.Tensor, target_logits: torch.Tensor, counts: torch.Tensor, greater: torch.Tensor
) -> None:
    """Add to ``counts`` [targets, cells] how many of a slab's logits beat each target's.

    ``logits`` is a vocab-major slab [rows, cells], ``target_logits`` [targets, cells] and
    ``greater`` fp32 scratch at least the slab's shape. Comparing the raw logits, never
    shifted ones, keeps ranks exact: a shift can round two different logits to one value.
    """
    greater = greater[: logits.shape[0]]
    for j in range(target_logits.shape[0]):
        # Comparisons written as fp32 0/1 and summed in fp32 run ~2x faster here than bool
        # ones summed as integers; fp32 counts are exact far beyond a slab's 2**24 rows.
        counts[j] += torch.gt(logits, target_logits[j], out=greater).sum(0).to(counts.dtype)


def _top_k_columns(padded: torch.Tensor, block_max: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every column of vocab-major logits, [cells, k] values and ids, largest first.

    ``padded`` has ``-inf`` rows up to a multiple of TOPK_BLOCK and ``block_max`` holds the
    maximum of every TOPK_BLOCK rows. torch.topk along the vocabulary of a vocab-major
    tensor is ~10x slower than along a contiguous row, so only the k blocks with the largest
    maxima, which must hold the top k, are gathered and searched.
    """
    n_blocks, cells = block_max.shape
    best = torch.topk(block_max.t(), min(k, n_blocks), dim=1).indices
    offsets = torch.arange(TOPK_BLOCK, device=padded.device)
    candidates = (best.unsqueeze(2) * TOPK_BLOCK + offsets).reshape(cells, -1)
    values, picked = torch.topk(torch.gather(padded.t(), 1, candidates), k, dim=1)
    return values, torch.gather(candidates, 1, picked)


def _store(
    out: dict[str, np.ndarray], name: str, value: torch.Tensor, positions: slice, n_rows: int, padded_width: int
) -> None:
    """Write one chunk, cell-major ([cells, ...] or [targets, cells]), into its [..., rows, positions, ...] array.

    The chunk's cells cover ``padded_width`` positions; those past ``positions`` are padding, dropped here.
    """
    array = out[name]
    width = positions.stop - positions.start
    if name.startswith("target_"):
        array[:, :, positions] = value.reshape(-1, n_rows, padded_width)[:, :, :width].cpu().numpy()
    else:
        array[:, positions] = value.reshape(n_rows, padded_width, *array.shape[2:])[:, :width].cpu().numpy()


def _chunk_cells(vocab: int) -> int:
    """Cells per chunk: the chunk's fp32 [vocab x cells] logits stay within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab))


def _chunk_width(n_pos: int, n_rows: int, vocab: int) -> int:
    """Positions per chunk: within CHUNK_BYTES, a whole number of GEMM steps, the chunks as even as that allows.

    Every chunk reads all of W_U, so a last chunk of a few positions (64 tokens on GPT-2:
    62 + 2) would pay a full read of it for a thin, slow matmul.
    """
    step = _position_step(n_rows)
    most = max(1, _chunk_cells(vocab) // n_rows // step) * step
    n_chunks = -(-n_pos // most)
    return padded_width(-(-n_pos // n_chunks), n_rows)


def _position_step(n_rows: int) -> int:
    """The fewest positions whose ``n_rows`` cells each number a multiple of GEMM_CELLS."""
    return GEMM_CELLS // math.gcd(n_rows, GEMM_CELLS)


def padded_width(width: int, n_rows: int) -> int:
    """The fewest positions, at least ``width``, whose cells number a multiple of GEMM_CELLS."""
    step = _position_step(n_rows)
    return -(-width // step) * step


def pad_positions(normed: torch.Tensor, width: int) -> torch.Tensor:
    """[rows, positions, d_model] extended to ``width`` positions by repeating the last one."""
    extra = width - normed.shape[1]
    return torch.cat([normed, normed[:, -1:].expand(-1, extra, -1)], dim=1) if extra else normed


def _slabs(stop: int, cells: int, slab_bytes: int | None = None, start: int = 0) -> list[slice]:
    """Vocabulary slabs of whole TOPK_BLOCKs from ``start``, each [rows x cells] fp32 within ``slab_bytes``."""
    rows = max(1, (slab_bytes or SLAB_BYTES) // (4 * cells * TOPK_BLOCK)) * TOPK_BLOCK  # SLAB_BYTES read at call time
    return [slice(a, min(a + rows, stop)) for a in range(start, stop, rows)]


class _SoftmaxSums:
    """Per-cell sums over the vocabulary, one set per slab, each slab shifted by its own maxima.

    For slab i with per-cell maximum m_i and s = logit - m_i: ``sum_exp`` = sum(exp(s)),
    ``expect`` = sum(exp(s) * s) and ``cross`` = sum(exp(s_final) * s), the final row's
    cells paired with every row's at the same position. Slabs are independent, so threads
    can fill them in any order; :meth:`statistics` combines them in slab order (the same
    figures every run), rescaled in fp64 to the largest maximum. Besides avoiding overflow,
    the shift keeps log Z and E_p[logit] small, so the entropy (their difference) loses no
    digits to cancellation. A part's sums are short fp32 reductions; they add up in fp64.
    """

    def __init__(self, n_slabs: int, n_rows: int, width: int, device: torch.device) -> None:
        self.n_rows, self.width = n_rows, width
        self.shift = torch.empty(n_slabs, n_rows * width, device=device)
        self.sum_exp, self.expect, self.cross = (
            torch.zeros(n_slabs, n_rows * width, dtype=torch.float64, device=device) for _ in range(3)
        )

    def add(self, slab: int, logits: torch.Tensor, buffers: tuple[torch.Tensor, ...]) -> None:
        """Add a part [rows, cells] of slab ``slab``'s vocab-major logits, after ``shift[slab]`` is set."""
        height = logits.shape[0]
        shifted, exps, product = (buffer[:height] for buffer in buffers)
        torch.sub(logits, self.shift[slab], out=shifted)
        torch.exp(shifted, out=exps)
        self.sum_exp[slab] += exps.sum(0)
        self.expect[slab] += torch.mul(exps, shifted, out=product).sum(0)
        by_row = (height, self.n_rows, self.width)
        final = exps[:, (self.n_rows - 1) * self.width :].unsqueeze(1)
        self.cross[slab] += torch.mul(shifted.view(by_row), final, out=product.view(by_row)).sum(0).view(-1)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log Z, entropy and KL(final || row), per cell."""
        shift = self.shift.double()
        top = shift.amax(0)
        # Slab i's sums in terms of the largest shift M: e^(l-M) = a_i e^(l-m_i), a_i = e^(m_i-M),
        # and e^(l-M) (l-M) = a_i e^(l-m_i) ((l-m_i) + (m_i-M)).
        lift = shift - top
        scale = torch.exp(lift)
        sum_exp = (scale * self.sum_exp).sum(0)
        expect = (scale * (self.expect + lift * self.sum_exp)).sum(0)
        # The cross sum takes the final row's exponentials (its scale) and each row's shift (its lift).
        by_row = (-1, self.n_rows, self.width)
        final_scale, final_sum = scale.view(by_row)[:, -1:], self.sum_exp.view(by_row)[:, -1:]
        cross = (final_scale * (self.cross.view(by_row) + lift.view(by_row) * final_sum)).sum(0)
        log_sum_exp = torch.log(sum_exp)
        entropy = log_sum_exp - expect / sum_exp
        # KL(f || p) = log Z_p - E_f[logit_p] - H(f), all with p's logits shifted by p's maximum.
        final_expect = cross / sum_exp.view(by_row[1:])[-1]
        kl = (log_sum_exp.view(by_row[1:]) - final_expect - entropy.view(by_row[1:])[-1]).clamp_min_(0)
        return top + log_sum_exp, entropy, kl


def cell_statistics(
    readout: Readout,
    normed: torch.Tensor,
    top_k: int,
    target_ids: Sequence[int] | np.ndarray,
    next_ids: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Exact per-cell statistics from final-norm outputs, chunk by chunk.

    Returns top-k ids and probabilities, log-normaliser, entropy, KL(final || row), and
    the targets' probabilities, logits and ranks. The final row must be ``normed[-1]``.
    ``target_ids`` is one list for every position, or a [targets, positions] array when
    each position has its own (positions that are different prompts' last tokens).
    ``next_ids`` gives one token per position (the text's actual next token); its logit
    in every cell comes back as ``next_logits``.

    Each chunk's logits are made slab by slab, and every slab is reduced (block maxima,
    softmax sums, target counts) right after the matmul wrote it, while it is still in
    cache: reading a 150 MB chunk again from memory for each statistic cost more than the
    matmul. Only the top-k search returns to the chunk, to a few blocks per cell. Slabs go
    to :func:`_slab_threads`, each thread making and reducing whole slabs.
    """
    n_rows, n_pos, _ = normed.shape
    vocab = readout.d_vocab
    k = min(top_k, vocab)
    device = normed.device
    targets = torch.as_tensor(
        np.asarray(target_ids, dtype=np.int64).reshape(-1, n_pos) if np.ndim(target_ids) == 2 else list(target_ids),
        dtype=torch.long,
        device=device,
    )
    target_set = frozenset(targets.flatten().tolist())  # the vocabulary rows whose slabs go first
    block = _chunk_width(n_pos, n_rows, vocab)
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
    threads = _slab_threads(torch.get_num_threads())
    scratch = _Scratch(vocab, n_rows, device, threads.count)
    for start in range(0, n_pos, block):
        stop = min(start + block, n_pos)
        positions = slice(start, stop)
        width = padded_width(stop - start, n_rows)
        n_cells = n_rows * width
        padded, block_max, parts = scratch.for_width(width)
        # Vocab-major [vocab, cells]: this product runs ~1.5x faster here than [cells, vocab].
        # Cells are row-major: column r * width + j is row r at position start + j.
        logits = padded[:vocab]
        cells = pad_positions(normed[:, positions], width).reshape(n_cells, -1)
        chunk = _Chunk(readout, cells, padded, block_max, parts, n_rows, targets, target_set)
        target_logits = chunk.run(threads, positions)
        sums, counts = chunk.sums, chunk.counts
        top_values, top_ids = _top_k_columns(padded, block_max, k)
        log_normalizer, entropy, kl = sums.statistics()
        at = (positions, n_rows, width)
        if next_ids is not None:
            wanted = pad_positions(next_tokens[None, positions, None], width).flatten().repeat(n_rows)
            _store(out, "next_logits", logits[wanted, torch.arange(n_cells, device=device)], *at)
        _store(out, "top_ids", top_ids, *at)
        _store(out, "top_probs", torch.exp(top_values - log_normalizer[:, None]), *at)
        _store(out, "log_normalizer", log_normalizer, *at)
        _store(out, "entropy", entropy, *at)
        _store(out, "kl_to_final", kl, *at)
        _store(out, "target_logits", target_logits, *at)
        _store(out, "target_probs", torch.exp(target_logits - log_normalizer), *at)
        _store(out, "target_ranks", 1 + counts.sum(0).to(torch.int64), *at)
    return out


class _Chunk:
    """A chunk's slabs, made and reduced on the slab threads; each slab's sums and rank counts have their own slot."""

    def __init__(
        self,
        readout: Readout,
        cells: torch.Tensor,
        padded: torch.Tensor,
        block_max: torch.Tensor,
        parts: list[tuple[torch.Tensor, ...]],
        n_rows: int,
        targets: torch.Tensor,
        target_set: frozenset[int],
    ) -> None:
        self.readout, self.cells, self.padded, self.block_max = readout, cells, padded, block_max
        self.parts, self.targets, self.n_rows = parts, targets, n_rows
        n_cells = cells.shape[0]
        self.logits = padded[: readout.d_vocab]
        self.slabs = _slabs(padded.shape[0], n_cells)
        self.first = [i for i, rows in enumerate(self.slabs) if any(rows.start <= t < rows.stop for t in target_set)]
        self.sums = _SoftmaxSums(len(self.slabs), n_rows, n_cells // n_rows, cells.device)
        self.counts = torch.zeros(len(self.slabs), len(targets), n_cells, device=cells.device)

    def run(self, threads: _SlabThreads, positions: slice) -> torch.Tensor:
        """Every slab's statistics; the targets' logits, [targets, cells].

        Ranks are counted against the targets' logits as the chunk holds them (the same
        product in another shape can round differently), so the slabs that hold a target
        are made first.
        """
        threads.run(self._make, self.first)
        width = self.cells.shape[0] // self.n_rows
        self.target_logits = _target_logits(self.logits, self.targets, positions, self.n_rows, width)
        threads.run(self._reduce, range(len(self.slabs)))
        return self.target_logits

    def _make(self, slab: int, thread: int) -> None:
        _make_slab(self.readout, self.cells, self.padded, self.block_max, self.slabs[slab])

    def _reduce(self, slab: int, thread: int) -> None:
        rows = self.slabs[slab]
        if slab not in self.first:
            self._make(slab, thread)
        blocks = self.block_max[rows.start // TOPK_BLOCK : rows.stop // TOPK_BLOCK]
        torch.amax(blocks, 0, out=self.sums.shift[slab])
        *buffers, greater = self.parts[thread]
        # The matmul's slab fits the shared cache; each reduction reads an L2-sized part of it.
        for part in _slabs(min(rows.stop, self.logits.shape[0]), self.cells.shape[0], REDUCE_BYTES, rows.start):
            if self.counts.shape[1]:
                _count_greater(self.logits[part], self.target_logits, self.counts[slab], greater)
            self.sums.add(slab, self.logits[part], tuple(buffers))


def _target_logits(
    logits: torch.Tensor, targets: torch.Tensor, positions: slice, n_rows: int, width: int
) -> torch.Tensor:
    """The targets' logits in every cell of a chunk, [targets, cells], from its vocab-major logits.

    ``targets`` is [targets] (the same in every cell) or [targets, positions] (each
    position its own); cells are row-major, so a position's targets repeat in every row.
    """
    if targets.ndim == 1:
        return logits[targets]
    per_cell = pad_positions(targets[:, positions, None], width)[..., 0].repeat(1, n_rows)
    return torch.gather(logits, 0, per_cell)


def _make_slab(
    readout: Readout, cells: torch.Tensor, padded: torch.Tensor, block_max: torch.Tensor, rows: slice
) -> None:
    """One slab of a chunk's vocab-major logits, and the maximum of each of its TOPK_BLOCKs."""
    written = slice(rows.start, min(rows.stop, readout.d_vocab))
    readout.unembed_columns(cells, out=padded[written], vocab=written)
    blocks = slice(rows.start // TOPK_BLOCK, rows.stop // TOPK_BLOCK)
    torch.amax(padded[rows].view(-1, TOPK_BLOCK, cells.shape[0]), 1, out=block_max[blocks])


class _SlabThreads:
    """Threads that each make and reduce whole slabs, with one torch intra-op thread apiece.

    A chunk's reductions are thousands of small ops. Run on torch's own threads, each op is
    a parallel region that ends in a barrier, and when other processes compete for the
    cores every barrier waits for whichever thread was descheduled: a 256-token run took
    65x its quiet time among 6 busy processes, where the floor (a few large matmuls) took
    8.5x. Here each thread takes the next slab when it is free and never waits for the
    other until the chunk is done.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool = _single_intra_op_threads(count, "lens-slabs") if count > 1 else None

    def run(self, work: Callable[[int, int], None], items: Iterable[int]) -> None:
        """``work(item, thread)`` for every item, each thread taking the next item when free."""
        if self.pool is None:
            for item in items:
                work(item, 0)
            return
        queue = iter(list(items))
        lock = threading.Lock()

        def drain(thread: int) -> None:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                work(item, thread)

        for future in [self.pool.submit(drain, thread) for thread in range(self.count)]:
            future.result()


def _single_intra_op_threads(count: int, prefix: str) -> ThreadPoolExecutor:
    """``count`` threads with one torch intra-op thread apiece; every other thread keeps its count."""
    pool = ThreadPoolExecutor(count, thread_name_prefix=prefix)
    threads = torch.get_num_threads()
    started = threading.Barrier(count)

    def one_intra_op_thread() -> None:
        # torch sets a thread's count from the default at its first parallel op (or count query):
        # that happens first, so that putting the default back below leaves this thread at one.
        torch.get_num_threads()
        torch.set_num_threads(1)
        started.wait()  # every task on a thread of its own

    for future in [pool.submit(one_intra_op_thread) for _ in range(count)]:
        future.result()
    torch.set_num_threads(threads)  # the workers' call also set the default for threads started later
    return pool


SMALL_OPS_PREFIX = "lens-small-ops"


@functools.cache
def _small_ops_threads(count: int) -> ThreadPoolExecutor:
    return _single_intra_op_threads(count, SMALL_OPS_PREFIX)


def on_one_intra_op_thread(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function`` on a thread with one torch intra-op thread: for work of many small ops.

    Each small op on torch's threads is a parallel region ending in a barrier; when other
    processes compete for the cores, every barrier waits for a descheduled thread (see
    :class:`_SlabThreads`). One thread has no barriers: direct logit attribution's hooked
    pass took 1.6-1.8x longer on a quiet machine but 1.1-2.6x less under 6 busy processes
    (README, "Under competing load"). Concurrent calls run side by side, one pool thread each.
    """

    @functools.wraps(function)
    def run(*args, **kwargs) -> T:
        if threading.current_thread().name.startswith(SMALL_OPS_PREFIX):
            return function(*args, **kwargs)
        return _small_ops_threads(max(torch.get_num_threads(), 1)).submit(function, *args, **kwargs).result()

    return run


@functools.cache
def _slab_threads(count: int) -> _SlabThreads:
    """One set of slab threads per process (and torch thread count), shared by every run."""
    return _SlabThreads(count)


class _Scratch:
    """Reusable chunk and slab buffers, made once per chunk width (fresh pages cost as much as exp).

    Each slab thread gets its own part buffers: three for the softmax sums and one for the rank counts.
    """

    def __init__(self, vocab: int, n_rows: int, device: torch.device, threads: int) -> None:
        self.vocab, self.n_rows, self.device, self.threads = vocab, n_rows, device, threads
        self.padded_vocab = -(-vocab // TOPK_BLOCK) * TOPK_BLOCK
        self.by_width: dict[int, tuple] = {}

    def for_width(self, width: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        if width not in self.by_width:
            cells = self.n_rows * width
            height = _slabs(self.padded_vocab, cells, REDUCE_BYTES)[0].stop
            self.by_width[width] = (
                torch.full((self.padded_vocab, cells), -torch.inf, device=self.device),
                torch.empty(self.padded_vocab // TOPK_BLOCK, cells, device=self.device),
                [tuple(torch.empty(height, cells, device=self.device) for _ in range(4)) for _ in range(self.threads)],
            )
        return self.by_width[width]


def run_lens(
    model: Backend,
    prompt: str | Sequence[int],
    *,
    top_k: int = 10,
    targets: Sequence[str | int] = (),
    prepend_bos: bool | None = None,
    points: Sequence[str] = ("resid_post",),
    keep_unembed_input: bool = False,
    lens: Lens | None = None,
    progress: Progress | None = None,
    patches: Mapping[str, Patch] | None = None,
) -> LensResult:
    """Read the model's next-token distribution after every residual point of ``prompt``.

    ``prompt`` is text or a list of token ids (fed as they are).
    ``prepend_bos=None`` follows the model's default. ``keep_unembed_input`` keeps the
    final-norm outputs in the result so :func:`retarget` can add targets without a
    forward pass. ``lens`` is a :class:`~lens.lenses.Lens` (None is the logit lens).
    A backend without local weights (NDIF) reduces the cells where the model runs;
    ``progress`` then hears its job's status (queued, running). ``patches`` write other
    activations into the run first (the lens view of a patched run, see lens.patching).
    """
    model = check_backend(model)
    lens = check_lens(lens)
    if patches:
        model.capabilities.require("patching", "activation patching", model.name)
    whole_number(top_k, "top_k", 1)
    flag(keep_unembed_input, "keep_unembed_input")
    callback(progress, "progress")
    token_ids = tokenize_prompt(model, prompt, prepend_bos)
    target_ids, target_names, warnings = resolve_targets(model, targets)
    rows = lens_rows(model, points)
    lens.check_compatible(model)
    normed = None
    if model.capabilities.local_weights:
        normed = capture_normed(model, token_ids, rows, lens, patches)
        stats = cell_statistics(model.readout, normed, int(top_k), target_ids)
    else:
        if keep_unembed_input:
            raise LensError(
                f"Model '{model.name}' runs remotely and keeps its final-norm outputs there; pass the targets "
                "to run_lens instead of retargeting."
            )
        if lens.kind != LOGIT_LENS.kind:
            model.capabilities.require("local_weights", f"the {lens.description}", model.name)
        stats = model.remote_statistics(token_ids, rows, int(top_k), target_ids, progress)
    result = LensResult(
        model_name=model.name,
        prompt=prompt_text(model, prompt),
        tokens=model.token_name.many(token_ids),
        token_ids=token_ids,
        layers=[r.label for r in rows],
        points=[r.hook for r in rows],
        top_tokens=names_array(model, stats.pop("top_ids"), stats),
        targets=target_names,
        target_ids=target_ids,
        lens_kind=lens.kind,
        prepend_bos=fed_bos(model, prompt, token_ids, prepend_bos),
        warnings=warnings,
        unembed_input=normed.cpu().numpy() if keep_unembed_input and normed is not None else None,
        **stats,
    )
    del normed, stats
    release_freed_memory()
    return result


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory on its own terms
        return None


def release_freed_memory() -> None:
    """Hand the heap pages freed by a run back to the system.

    glibc keeps the freed activations of a forward pass in its arenas: after a 1024-token
    run on GPT-2 small the process held ~1 GB more than after loading, all of it unused. On
    a small hosting box that is the room for a model, so every run gives it back.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def names_array(model: Backend, top_ids: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Readable names for every top-k id (and puts the ids back into ``stats``).

    An object array of shared strings: 8 bytes a cell, where fixed-width numpy strings
    took 4 bytes per character of the longest name (15 MB of a 256-token result).
    """
    stats["top_ids"] = top_ids
    unique, inverse = np.unique(top_ids, return_inverse=True)
    names = np.empty(max(len(unique), 1), dtype=object)
    names[: len(unique)] = model.token_name.many(unique.tolist())
    return names[inverse].reshape(top_ids.shape)


def retarget(model: Backend, result: LensResult, targets: Sequence[str | int]) -> LensResult:
    """The same result with other targets, from its kept final-norm outputs: no forward pass.

    Probabilities and logits take one small matmul per target; exact ranks need every
    logit of every cell, so they take a chunked pass of matmul and compare, without the
    exp, top-k and KL work of a full run.
    """
    model = check_backend(model)
    model.capabilities.require("local_weights", "retargeting (it reads the kept final-norm outputs here)", model.name)
    if not isinstance(result, LensResult):
        raise LensError(f"result must be a LensResult from run_lens, not {type(result).__name__}.")
    if result.unembed_input is None:
        raise LensError(
            "This result did not keep its unembedding inputs; run the lens again with keep_unembed_input=True."
        )
    target_ids, target_names, warnings = resolve_targets(model, targets)
    readout = model.readout
    normed = torch.from_numpy(result.unembed_input).to(readout.device)
    n_rows, n_pos, _ = normed.shape
    flat = normed.reshape(n_rows * n_pos, -1)
    ids = torch.tensor(target_ids, dtype=torch.long, device=flat.device)
    chunk = _chunk_cells(readout.d_vocab)
    target_logits, ranks = [], []
    for start in range(0, flat.shape[0], chunk):
        logits = readout.unembed_columns(flat[start : start + chunk])
        chosen = logits[ids]
        counts = torch.zeros_like(chosen, dtype=torch.int64)
        slabs = _slabs(readout.d_vocab, logits.shape[1])
        greater = torch.empty(slabs[0].stop, logits.shape[1], device=flat.device)
        for rows in slabs:
            _count_greater(logits[rows], chosen, counts, greater)
        target_logits.append(chosen.t())
        ranks.append(1 + counts.t())
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
