"""Skip-gram with negative sampling (SGNS) on the CPU: a numba, multi-threaded Hogwild kernel.

Shared by graph walks (DeepWalk / node2vec) and text sentences: the input is one flat int32 token
array plus int64 sentence offsets, so no Python object per sentence ever exists.

The maths is word2vec's skip-gram (the same as gensim's ``sg=1, hs=0``): for a centre token at
position i an effective window b is drawn uniformly in 1..window, every token within b positions
is a context, and each context's *input* vector learns to predict the centre's *output* vector
against ``negatives`` words drawn from unigram ** ns_exponent. Frequent tokens are dropped before
windowing with word2vec's subsampling formula; the learning rate decays linearly from ``lr`` to
``min_lr`` over all epochs.

Why it is faster than gensim: word2vec updates one (context, centre) pair at a time with
vector-vector operations. Here the negatives are drawn once per centre and shared by all of its
contexts (Ji et al. 2016, "Parallelizing word2vec in shared and distributed memory", HogBatch),
so one window becomes a [contexts x (1 + negatives)] block of dot products, i.e. three small dense
matrix products on contiguous float32 rows that stay in L1. That reads ~4x fewer random output
rows per token than gensim and lets the compiler vectorise the inner loops. Sigmoid and
log-sigmoid come from precomputed tables (word2vec's MAX_EXP = 6 clamp). Threads update the shared
tables without locks (Hogwild); with ``threads=1`` the result is bit-for-bit reproducible because
every random draw comes from a splitmix64 stream seeded by (seed, epoch, sentence). The threads
take ~8 192-token blocks of the text from one queue (an atomic counter, sgns_parts.take_next), as
gensim's workers take jobs: they train neighbouring text, and a slow (descheduled) thread holds
nobody up until the launch's last block. The shared-negative window (the graph default) takes a
sentence's random draws first and prefetches each next window's rows while the current one trains
(sgns_parts.window_draws, window_sentence): the same values, ~20 % more tokens per CPU-second. At five
negatives a window's step is fused (sgns_parts.six_window: a context's six scores in one pass over d,
its input step and its share of the six output steps in one more), and the tables start on a cache
line (sgns_parts.cache_aligned): ~1.7x more tokens per CPU-second on BlogCatalog (eighth pass).

``shared_negatives=False`` (the embed-corpus default, config train.negatives_per=pair) runs
word2vec's own order instead: context after context, fresh negatives per pair, each step applied
before the next pair (sgns_parts.pair_window, fused: at negatives=5 one pass over d for a pair's
six scores and one for all its steps, sgns_parts.five_rows / five_scores / five_steps; other counts
two negatives' rows per pass). On Brown it
matches gensim's SimLex figure, which the shared window misses by ~.008; on BlogCatalog the shared window scores better at 10 % labels, so graphs keep it (docs/skipgram.md).
At two or more threads its negatives are split (thread_noise): neighbouring blocks draw them from
different parts of the vocabulary, so the threads do not write the same output rows, which on a
2-vCPU VM cost two threads most of their second core (issue 20, ninth pass); the 16 or so most
frequent words stay in both parts, which keeps the analogies of one table (tenth pass).

The pieces every SGNS kernel shares (random streams, window, negatives, sigmoid tables, the window
step) live in sgns_parts.py; this module is the one-table kernel and its driver.
"""
from __future__ import annotations

import time
from typing import Callable

import numba as nb
import numpy as np

from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.train.sgns_parts import (ABL_PAIR_NEGATIVES, block_segments, cache_aligned, draw_negatives,
                                                hogbatch_mode, keep_thresholds, kept_tokens, linear_lr, noise_alias,
                                                numba_threads, pack_alias, pair_window, seed_state, sigmoid_tables,
                                                take_next, text_blocks, token_counts, using_numba_threads,
                                                window_contexts, window_draws, window_sentence)


# ----------------------------------------------------------------------------- kernel

# Both default schemes (per pair, and the shared window) sum their loss on every LOSS_SAMPLE-th
# sentence only (sentence index % 8 == 0, the same sentences every run); the others record NaN and
# the reported losses (stats, progress) are means over the sampled ones. Summing the loss of every
# pair cost ~15 % of the per-pair kernel's time (issue 20, seventh pass) and ~10 % of the window
# kernel's (eighth pass); the loss only reports progress, it trains nothing. The ablation modes sum it all.
LOSS_SAMPLE = 8


@nb.njit(inline="always")
def _thread_buffers(maxlen, window, negatives, dim):
    """One thread's scratch arrays, allocated once per kernel launch: the kept tokens and their
    positions, a window's contexts and draws, the window step's L1 blocks, a sentence's draws."""
    nout_max = negatives + 1
    cmax = 2 * window
    return (np.empty(maxlen, np.int32), np.empty(maxlen, np.int64), np.empty(cmax, np.int32),
            np.empty(max(nout_max, cmax * negatives), np.int32), np.empty((cmax, nout_max), np.float32),
            np.empty((cmax, dim), np.float32), np.empty((cmax, dim), np.float32),
            np.empty((nout_max, dim), np.float32), np.empty((nout_max, dim), np.float32),
            np.empty(nout_max, np.float32), np.empty(2 * maxlen, np.int64), np.empty(maxlen * nout_max, np.int32))


# The three kernels below share their arguments and their shell (threads taking blocks from one
# queue, sentence after sentence); each holds one scheme's sentence step, so a run compiles only
# the scheme it trains: one kernel holding all three took ~110 s to compile on a 2-core machine,
# paid by the first run of every fresh checkout and every uploaded Ray Jobs working dir.
# Arguments: train on blocks [b_lo, b_hi) of the text (block k = sentences [block_starts[k],
# block_starts[k + 1])). Each of the `nthreads` threads takes the next untrained block (take_next on
# next_block[0], which starts at 0) until none is left: the threads train neighbouring blocks in
# text order, and one thread trains them all in order. Per-sentence loss sums (default schemes:
# every LOSS_SAMPLE-th sentence, NaN for the others), pair and kept-token counts go to sent_*[s].
# pos_base + token position = work done before that token (for the lr).

@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _window_blocks(tokens, offsets, block_starts, b_lo, b_hi, next_block, nthreads, W_in, W_out, keep_thr, use_sample,
                   alias_thr, alias_idx, noise, sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base,
                   work_total, seed, epoch, maxlen, sent_loss, sent_pairs, sent_kept, mode):
    """The graph default (negatives shared per window): a sentence's draws first, each next
    window's rows prefetched while the current one trains (sgns_parts.window_sentence)."""
    nout_max = negatives + 1
    for _t in nb.prange(nthreads):
        buf, pos, ctx, outs, g, dIn, Cb, Ob, Oo, g1, draws, wouts = _thread_buffers(maxlen, window, negatives,
                                                                                      W_in.shape[1])
        blk = b_lo + take_next(next_block)
        while blk < b_hi:
            for s in range(block_starts[blk], block_starts[blk + 1]):
                state, n = kept_tokens(tokens, offsets[s], offsets[s + 1], keep_thr, use_sample,
                                       seed_state(seed, epoch, s), buf, pos)
                state = window_draws(state, n, window, negatives, noise, buf, draws, wouts)
                want_loss = s % LOSS_SAMPLE == 0
                loss, pairs = window_sentence(W_in, W_out, buf, pos, n, draws, wouts, nout_max, ctx, Cb, Ob, g, dIn,
                                              lr0, min_lr, pos_base, work_total, sig_tab, logsig_tab, want_loss)
                sent_loss[s] = loss if want_loss else np.nan
                sent_pairs[s] = pairs
                sent_kept[s] = n
            blk = b_lo + take_next(next_block)


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _pair_blocks(tokens, offsets, block_starts, b_lo, b_hi, next_block, nthreads, W_in, W_out, keep_thr, use_sample,
                 alias_thr, alias_idx, noise, sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base, work_total,
                 seed, epoch, maxlen, sent_loss, sent_pairs, sent_kept, mode):
    """The text default (word2vec's order): context after context, fresh negatives per pair, each
    step applied before the next pair (sgns_parts.pair_window). `noise` holds P packed noise tables
    (thread_noise): block k of epoch e draws its negatives from table (k + e) % P, so with P =
    nthreads the threads, which train neighbouring blocks, draw from different tables."""
    for _t in nb.prange(nthreads):
        buf, pos, ctx, outs, g, dIn, Cb, Ob, Oo, g1, draws, wouts = _thread_buffers(maxlen, window, negatives,
                                                                                      W_in.shape[1])
        blk = b_lo + take_next(next_block)
        while blk < b_hi:
            tnoise = noise[(blk + epoch) % noise.shape[0]]
            for s in range(block_starts[blk], block_starts[blk + 1]):
                state, n = kept_tokens(tokens, offsets[s], offsets[s + 1], keep_thr, use_sample,
                                       seed_state(seed, epoch, s), buf, pos)
                loss = 0.0
                pairs = 0
                want_loss = s % LOSS_SAMPLE == 0
                for i in range(n):
                    state, B = window_contexts(state, buf, n, i, window, ctx)
                    if B == 0:
                        continue
                    lr = linear_lr(lr0, min_lr, pos_base + pos[i], work_total)
                    state, dl = pair_window(W_in, W_out, ctx, B, buf[i], state, negatives, tnoise, outs, Cb[0], Ob[0],
                                            Oo[0], dIn[0], g1, lr, sig_tab, logsig_tab, want_loss)
                    loss += dl
                    pairs += B
                sent_loss[s] = loss if want_loss else np.nan
                sent_pairs[s] = pairs
                sent_kept[s] = n
            blk = b_lo + take_next(next_block)


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _ablation_blocks(tokens, offsets, block_starts, b_lo, b_hi, next_block, nthreads, W_in, W_out, keep_thr,
                     use_sample, alias_thr, alias_idx, noise, sig_tab, logsig_tab, window, negatives, lr0, min_lr,
                     pos_base, work_total, seed, epoch, maxlen, sent_loss, sent_pairs, sent_kept, mode):
    """The quality experiments' kernel (``ablation`` != 0, docs/skipgram.md): the shared window's
    unfused HogBatch step with each ABL_* change toward gensim's kernel; the loss of every pair."""
    for _t in nb.prange(nthreads):
        buf, pos, ctx, outs, g, dIn, Cb, Ob, Oo, g1, draws, wouts = _thread_buffers(maxlen, window, negatives,
                                                                                      W_in.shape[1])
        blk = b_lo + take_next(next_block)
        while blk < b_hi:
            for s in range(block_starts[blk], block_starts[blk + 1]):
                state, n = kept_tokens(tokens, offsets[s], offsets[s + 1], keep_thr, use_sample,
                                       seed_state(seed, epoch, s), buf, pos)
                loss = 0.0
                pairs = 0
                for i in range(n):
                    state, B = window_contexts(state, buf, n, i, window, ctx)
                    if B == 0:
                        continue
                    center = buf[i]
                    lr = linear_lr(lr0, min_lr, pos_base + pos[i], work_total)
                    if mode & ABL_PAIR_NEGATIVES:
                        # word2vec's pairs (own negatives per context) on the L1 buffers of the window step
                        for c in range(B):
                            state, nout = draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
                            loss += hogbatch_mode(W_in, W_out, ctx[c:], 1, outs, nout, Cb, Ob, Oo, g, dIn, lr,
                                                  sig_tab, logsig_tab, mode)
                    else:
                        state, nout = draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
                        loss += hogbatch_mode(W_in, W_out, ctx, B, outs, nout, Cb, Ob, Oo, g, dIn, lr, sig_tab,
                                              logsig_tab, mode)
                    pairs += B
                sent_loss[s] = loss
                sent_pairs[s] = pairs
                sent_kept[s] = n
            blk = b_lo + take_next(next_block)


NOISE_GROUP = 16      # thread_noise deals the words to the parts in runs of this many consecutive rows
NOISE_PARTS = 2       # at most this many parts: two is what was measured (quality and speed, ninth pass)
NOISE_SHARED = 0.12   # the most frequent runs, until they hold this share of the noise mass, are in every part


def thread_noise(counts: np.ndarray, ns_exponent: float, nthreads: int, split: bool,
                 shared: float = NOISE_SHARED) -> np.ndarray:
    """The per-pair kernel's noise tables (packed, pack_alias), P x vocabulary: block k of epoch e
    draws its negatives from table (k + e) % P (_pair_blocks).

    Without split (and always at one thread) P = 1: the one table of noise_alias(counts). With
    split, P = min(nthreads, NOISE_PARTS) = 2 (more parts, each block drawing from a smaller share
    of the vocabulary, were not measured). The vocabulary is cut into runs of NOISE_GROUP
    consecutive rows (so that two parts' rows rarely share a cache line: a row of d=100 floats is
    6.25 lines). Largest runs first, runs go to the shared head until it holds `shared` of the
    noise mass (on Brown at 0.12: the 16 most frequent words), then each run to the part with the
    least noise mass so far (the parts' masses end up equal to ~1e-4). Table p draws among the
    head's words with their own probabilities and among part p's words with P times theirs, so
    over the blocks (each part gets 1 / P of them, rotated every epoch) every word is drawn with its
    unigram ** ns_exponent probability, whatever the threads' speeds. The threads train
    neighbouring blocks, so they draw from different parts (unless one gets a whole block ahead)
    and write the same rows as negatives only in the head.

    Why: two threads writing the same W_out rows ran at 1.0-1.2x one thread's speed on the
    2026-12-07 machine, at times 0.35x (issue 20, ninth pass). Why the shared head: splitting the
    most frequent words too (shared=0, the ninth pass) cost analogies -.002 against one table, 12
    seeds paired, and splitting only them (the 192 most frequent words) cost the same; with the
    16 most frequent in every table the analogies were level (tenth pass, docs/skipgram.md)."""
    counts = np.asarray(counts)
    parts = min(nthreads, NOISE_PARTS)
    if not split or parts < 2 or np.count_nonzero(counts) < 2 * parts * NOISE_GROUP:
        return pack_alias(*noise_alias(counts, ns_exponent))[None]
    w = np.where(counts > 0, np.power(np.maximum(counts, 1).astype(np.float64), ns_exponent), 0.0)
    group = np.arange(len(counts)) // NOISE_GROUP
    mass = np.bincount(group, weights=w) / w.sum()
    load = np.zeros(parts)
    head = 0.0
    owner_of = np.empty(len(mass), np.int64)
    for g in np.argsort(-mass, kind="stable"):        # one pass over V / NOISE_GROUP runs
        if head < shared:                             # -1: the shared head
            owner_of[g] = -1
            head += mass[g]
            continue
        t = int(np.argmin(load))
        owner_of[g] = t
        load[t] += mass[g]
    owner = owner_of[group]
    return np.stack([pack_alias(*noise_alias(np.where(owner < 0, w, np.where(owner == t, parts * w, 0.0)), 1.0))
                     for t in range(parts)])


def scheme_kernel(shared: bool, mode: int):
    """The kernel of a run's scheme: the shared window (the graph default), per pair (the text
    default) or, with ablation bits, the quality experiments' kernel."""
    if not shared:
        return _pair_blocks
    return _ablation_blocks if mode else _window_blocks


# ----------------------------------------------------------------------------- driver


def mean_loss(loss: np.ndarray, pairs: np.ndarray) -> float:
    """Mean loss per pair over the sentences whose loss was summed (NaN marks a sentence the
    kernel did not sample, LOSS_SAMPLE); NaN when none was."""
    summed = ~np.isnan(loss)
    p = pairs[summed].sum()
    return float(loss[summed].sum() / p) if p > 0 else float("nan")


def _edge_loss(loss: np.ndarray, pairs: np.ndarray, positions: np.ndarray, frac: float, last: bool) -> float:
    """Mean loss per pair over the (sampled) sentences covering the first (or last) `frac` of positions."""
    if len(positions) == 0:
        return float("nan")
    span = positions[-1] - positions[0]
    if last:
        sel = positions[1:] > positions[-1] - frac * span
    else:
        sel = positions[:-1] < positions[0] + frac * span
    return mean_loss(loss[sel], pairs[sel])


def prepare(tokens, offsets, vocab_size, counts, dim, init, seed, aligned=False):
    """Validate inputs and build the initial tables (shared with the torch kernel).

    ``aligned``: the tables start on a cache line (`cache_aligned`), for the window scheme (the graph
    default), where it was measured to help (eighth pass). The per-pair scheme keeps numpy's own
    tables: with aligned copies it ran 3.6x slower at two threads on Brown on the 2026-12-07 machine
    (0.59-0.60 M tokens/s against 2.13-2.20 M, same run; cause not found, docs/skipgram.md)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError("offsets must be a 1-d int64 array of S + 1 sentence boundaries")
    if len(offsets) > 1 and (offsets[0] < 0 or offsets[-1] > len(tokens) or np.any(np.diff(offsets) < 0)):
        raise ValueError("offsets must be non-decreasing and within [0, len(tokens)]")
    if len(tokens) and (tokens.max(initial=-1) >= vocab_size or tokens.min(initial=0) < -1):
        raise ValueError("tokens must lie in [0, vocab_size) or be -1 (padding)")
    if counts is None:
        counts = token_counts(tokens[offsets[0]:offsets[-1]] if len(offsets) > 1 else tokens[:0], vocab_size)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (vocab_size,):
        raise ValueError(f"counts must have shape ({vocab_size},), got {counts.shape}")
    if init is not None:                              # copies: the caller's init untouched
        W_in = np.array(init[0], dtype=np.float32, order="C", copy=True)
        W_out = np.array(init[1], dtype=np.float32, order="C", copy=True)
        if W_in.shape != (vocab_size, dim) or W_out.shape != (vocab_size, dim):
            raise ValueError(f"init tables must both have shape ({vocab_size}, {dim})")
    else:
        rng = np.random.default_rng(seed)
        W_in = ((rng.random((vocab_size, dim), dtype=np.float32) - np.float32(0.5)) / np.float32(dim))
        W_out = np.zeros((vocab_size, dim), dtype=np.float32)
    if aligned:
        W_in, W_out = cache_aligned(W_in), cache_aligned(W_out)
    return tokens, offsets, counts, W_in, W_out


def train_sgns(tokens, offsets, vocab_size, *, counts=None, dim=128, window=10, negatives=5,
               ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0, seed=0, threads=0,
               init=None, progress: Callable[[int, int, float], None] | None = None,
               chunk_tokens: int | None = None, shared_negatives: bool = True, start_epoch: int = 0,
               on_epoch: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
               ablation: int = 0, block_tokens: int = 8192, split_negatives: bool = True,
               split_shared: float = NOISE_SHARED) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train SGNS embeddings on sentences tokens[offsets[s]:offsets[s+1]] (-1 = padding, skipped).

    Returns (W_in, W_out, stats): W_in float32[vocab, dim] are the embeddings, W_out the context
    table (keep both to resume with ``init=(W_in, W_out)``). stats: tokens (non-padding tokens x
    epochs), tokens_trained (after subsampling), pairs, seconds, tokens_per_s, pairs_per_s,
    loss_first / loss_last (mean SGNS loss per positive pair over the first / last ~5% of the
    work; over every LOSS_SAMPLE-th sentence of it, a fixed sample, unless `ablation` is set),
    compile_s, threads, chunks.
    threads=0 uses all numba threads; threads=1 with a fixed seed is bit-for-bit reproducible.
    progress(done_tokens, total_tokens, chunk_loss) is called between kernel launches from this thread.
    Resuming (a killed run, docs/reliability.md): ``init=(W_in, W_out)`` saved after epoch k plus
    ``start_epoch=k`` runs epochs k..epochs-1 on exactly the learning-rate schedule and random
    streams of an uninterrupted run (one thread: bit-identical result). on_epoch(k, W_in, W_out)
    is called after each epoch (k = epochs done) with the live tables, e.g. to checkpoint them.
    ablation: sgns_parts.ABL_* bits, the quality experiments' changes toward gensim's kernel.
    block_tokens (default 8 192), chunk_tokens (default max(262 144, 5 % of an epoch)): one kernel
    launch trains chunk_tokens of text, its threads taking the next ~block_tokens block from one
    queue (as gensim's workers take jobs), with no barrier between blocks; progress is reported
    between launches. One thread's result depends on neither (issue 20, sixth pass).
    split_negatives, split_shared (per-pair scheme, two or more threads; one thread is unaffected):
    neighbouring blocks draw their negatives from two halves of the vocabulary, the most frequent
    words (split_shared of the noise mass) in both (thread_noise; issue 20, ninth and tenth passes).
    """
    if window < 1 or negatives < 0 or epochs < 1 or dim < 1:
        raise ValueError("window >= 1, negatives >= 0, epochs >= 1, dim >= 1 required")
    if not 0 <= start_epoch <= epochs or (start_epoch > 0 and init is None):
        raise ValueError("start_epoch must lie in [0, epochs] and needs init=(W_in, W_out) of that epoch")
    tokens, offsets, counts, W_in, W_out = prepare(tokens, offsets, vocab_size, counts, dim, init, seed,
                                                   aligned=shared_negatives)
    t_compile = time.perf_counter()
    alias_thr, alias_idx = noise_alias(counts, ns_exponent)
    keep = keep_thresholds(counts, sample)
    sig_tab, logsig_tab = sigmoid_tables()
    t_compile = time.perf_counter() - t_compile
    nthreads = numba_threads(threads)
    S = len(offsets) - 1
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    if chunk_tokens is None:
        chunk_tokens = max(262144, per_epoch // 20)
    starts = text_blocks(offsets, block_tokens)
    chunks = block_segments(offsets, starts, chunk_tokens)
    kernel = dict(keep_thr=keep, use_sample=sample > 0, alias_thr=alias_thr, alias_idx=alias_idx,
                  noise=pack_alias(alias_thr, alias_idx), sig_tab=sig_tab,
                  logsig_tab=logsig_tab, window=int(window), negatives=int(negatives), lr0=float(lr),
                  min_lr=float(min_lr), seed=int(seed), shared=bool(shared_negatives), mode=int(ablation))
    if not shared_negatives:
        kernel["noise"] = thread_noise(counts, ns_exponent, nthreads, split_negatives, split_shared)
    run = _train_epochs(tokens, offsets, W_in, W_out, kernel, (starts, chunks), nthreads, epochs=epochs,
                        start_epoch=start_epoch, progress=progress, on_epoch=on_epoch)
    stats = _run_stats(run, tokens, offsets, epochs, start_epoch)
    stats.update(compile_s=t_compile + run["warm_s"], threads=nthreads, chunks=len(chunks) * (epochs - start_epoch),
                 engine="numba", start_epoch=int(start_epoch))
    return W_in, W_out, stats


def _train_epochs(tokens, offsets, W_in, W_out, kernel: dict, blocks: tuple[np.ndarray, list[tuple[int, int]]],
                  nthreads: int, *, epochs: int, start_epoch: int, progress, on_epoch) -> dict:
    """Epochs start_epoch..epochs-1, one kernel launch per segment of blocks (blocks = (the blocks'
    first sentences, the segments' (first, end) blocks)) on `nthreads` numba threads: the kernel
    trains W_in / W_out in place; between segments this thread reports progress, after each epoch
    it calls on_epoch. Kept apart from train_sgns so that the timed loop holds nothing but the work.

    Returns the per-sentence loss / pair / kept arrays of the last epoch, those of the first epoch
    run (`first`), the pair and kept totals, `seconds` in the kernel (on_epoch time left out) and
    `warm_s` (compiling or loading the cached kernel)."""
    S = len(offsets) - 1
    starts, segments = blocks
    maxlen = int(np.diff(offsets).max()) if S else 0
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    total_work = max(1, per_epoch * epochs)
    sent_loss = np.zeros(S, np.float64)
    sent_pairs = np.zeros(S, np.int64)
    sent_kept = np.zeros(S, np.int64)
    first = None
    total_pairs = 0
    total_kept = 0
    done = start_epoch * per_epoch
    t_hook = 0.0          # time in on_epoch (checkpoint writes), kept out of the kernel figures
    with using_numba_threads(nthreads):
        tc = time.perf_counter()
        blocks_kernel = scheme_kernel(kernel["shared"], kernel["mode"])
        _warm(blocks_kernel, kernel["sig_tab"], kernel["logsig_tab"])
        # read-only whether they came from Ray's object store or not, as in _warm: one compile (kernel_inputs)
        tokens, offsets = read_only(tokens, offsets)
        warm_s = time.perf_counter() - tc
        t0 = time.perf_counter()
        for ep in range(start_epoch, epochs):
            pos_base = ep * per_epoch - int(offsets[0]) if S else 0
            for b_lo, b_hi in segments:
                blocks_kernel(tokens, offsets, starts, b_lo, b_hi, np.zeros(1, np.int64), nthreads, W_in, W_out,
                             kernel["keep_thr"], kernel["use_sample"], kernel["alias_thr"], kernel["alias_idx"],
                             kernel["noise"],
                             kernel["sig_tab"], kernel["logsig_tab"], kernel["window"], kernel["negatives"],
                             kernel["lr0"], kernel["min_lr"], pos_base, float(total_work), kernel["seed"], ep, maxlen,
                             sent_loss, sent_pairs, sent_kept, kernel["mode"])
                lo, hi = int(starts[b_lo]), int(starts[b_hi])
                done += int(offsets[hi] - offsets[lo])
                if progress is not None:
                    progress(done, total_work, mean_loss(sent_loss[lo:hi], sent_pairs[lo:hi]))
            total_pairs += int(sent_pairs.sum())
            total_kept += int(sent_kept.sum())
            if ep == start_epoch:
                first = (sent_loss.copy(), sent_pairs.copy())
            if on_epoch is not None:
                tc = time.perf_counter()
                on_epoch(ep + 1, W_in, W_out)
                t_hook += time.perf_counter() - tc
        seconds = time.perf_counter() - t0 - t_hook
    return {"sent_loss": sent_loss, "sent_pairs": sent_pairs, "first": first, "pairs": total_pairs,
            "kept": total_kept, "seconds": seconds, "warm_s": warm_s}


def _run_stats(run: dict, tokens: np.ndarray, offsets: np.ndarray, epochs: int, start_epoch: int) -> dict:
    """train_sgns's throughput and loss figures from what _train_epochs returned: the loss over the
    first / last ~5 % of the work (the first epoch run / the last one) shows whether training moved."""
    S = len(offsets) - 1
    seconds, first = run["seconds"], run["first"]
    frac = min(1.0, 0.05 * (epochs - start_epoch))
    if S and first is not None:
        loss_first = _edge_loss(first[0], first[1], offsets, frac, last=False)
        loss_last = _edge_loss(run["sent_loss"], run["sent_pairs"], offsets, frac, last=True)
    else:
        loss_first = loss_last = float("nan")
    real_tokens = int(np.count_nonzero(tokens[offsets[0]:offsets[-1]] >= 0)) if S else 0
    tok = real_tokens * (epochs - start_epoch)
    return {
        "tokens": tok, "tokens_trained": run["kept"], "pairs": run["pairs"], "seconds": seconds,
        "tokens_per_s": tok / seconds if seconds > 0 else float("nan"),
        "pairs_per_s": run["pairs"] / seconds if seconds > 0 else float("nan"),
        "loss_first": loss_first, "loss_last": loss_last,
    }


_WARMED: set = set()


def _warm(blocks_kernel, sig_tab, logsig_tab):
    """Compile (or load from the on-disk cache) a scheme's kernel on a tiny input, outside the timings."""
    if blocks_kernel in _WARMED:
        return
    toks = np.array([0, 1, 2, 1], np.int32)
    offs = np.array([0, 4], np.int64)
    Wi = np.zeros((3, 4), np.float32)
    Wo = np.zeros((3, 4), np.float32)
    thr, ali = noise_alias(np.ones(3, np.int64))
    keep = keep_thresholds(np.ones(3, np.int64), 0.0)
    z = np.zeros(1, np.float64)
    zi = np.zeros(1, np.int64)
    zk = np.zeros(1, np.int64)
    noise = pack_alias(thr, ali)
    blocks_kernel(*read_only(toks, offs), np.array([0, 1], np.int64), 0, 1, np.zeros(1, np.int64), 1, Wi, Wo, keep,
                  False, thr, ali, noise[None] if blocks_kernel is _pair_blocks else noise, sig_tab, logsig_tab, 2, 1, 0.025, 1e-4,
                  0, 4.0, 0, 0, 4, z, zi, zk, 0)
    _WARMED.add(blocks_kernel)
