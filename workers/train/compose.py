"""Skip-gram (SGNS) over compositional embedding tables: each id is a combination of shared rows.

A full table holds one row per id; a compositional table holds K << n rows and a *code* per id:
R row indices (and, for weighted sums, R importance weights). The id's vector is composed on the
fly inside the kernel, and the gradient flows back into every row (and weight) it used:

    combine = "sum":      v(i) = sum_r  w[i, r] * T[code[i, r]]      (hashing trick R=1, hash
                                                                    embeddings, QR-sum, partition codes)
    combine = "product":  v(i) = prod_r T[code[i, r]] (elementwise)   (quotient-remainder, Shi et al. 2020)

The same kernel serves both sides of skip-gram: the context (input) side and the centre/negative
(output) side each have their own codes and table, or one shared table (Unified Embedding's
feature multiplexing: the two sides, and several entity types, index one table with their own
hash functions). Which rows an id uses is decided before training by workers/compress/compose.py;
this module only trains.

The loop is the HogBatch window of workers/train/sgns_parts.py (as in skipgram.py) (negatives drawn once per centre, a
[contexts x (1 + negatives)] block of dot products on local buffers), with composition before and
scatter after. Hogwild across threads; with threads=1 the result is bit-for-bit reproducible
(every random draw comes from a splitmix64 stream of (seed, epoch, sentence), as in skipgram.py).
"""
from __future__ import annotations

import time
from typing import Callable

import numba as nb
import numpy as np

from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.train.sgns_parts import (blocks_per_chunk, draw_negatives, keep_thresholds, linear_lr,
                                                kept_tokens, noise_alias, numba_threads, seed_state,
                                                sentence_chunks, sigmoid_tables, token_counts, using_numba_threads,
                                                window_contexts, window_step)

COMBINES = {"sum": 0, "product": 1}


@nb.njit(inline="always")
def _compose(T, code, wt, row, combine, out, k):
    """out[k] = the composed vector of id `row` (sum of weighted rows, or elementwise product)."""
    dim = T.shape[1]
    R = code.shape[1]
    if combine == 0:
        for d in range(dim):
            out[k, d] = 0.0
        for r in range(R):
            c = code[row, r]
            w = wt[row, r]
            for d in range(dim):
                out[k, d] += w * T[c, d]
    else:
        c = code[row, 0]
        for d in range(dim):
            out[k, d] = T[c, d]
        for r in range(1, R):
            c = code[row, r]
            for d in range(dim):
                out[k, d] *= T[c, d]


@nb.njit(inline="always")
def _scatter(T, code, wt, row, combine, grad, k, learn_w, lr_w, tmp):
    """Push the gradient grad[k] of id `row`'s composed vector into its rows (and weights)."""
    dim = T.shape[1]
    R = code.shape[1]
    if combine == 0:
        for r in range(R):
            c = code[row, r]
            w = wt[row, r]
            if learn_w:
                s = np.float32(0.0)
                for d in range(dim):
                    s += T[c, d] * grad[k, d]
                wt[row, r] = w + lr_w * s
            for d in range(dim):
                T[c, d] += w * grad[k, d]
    else:
        # d/dT[c_r] of prod_s T[c_s] = grad * prod_{s != r} T[c_s]; R is small (2-3): recompute
        for r in range(R):
            for d in range(dim):
                tmp[d] = grad[k, d]
            for s in range(R):
                if s != r:
                    cs = code[row, s]
                    for d in range(dim):
                        tmp[d] *= T[cs, d]
            c = code[row, r]
            for d in range(dim):
                T[c, d] += tmp[d]


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _compose_chunk(tokens, offsets, s_lo, s_hi, T_in, code_in, w_in, T_out, code_out, w_out, combine,
                   learn_w, lr_w_scale, keep_thr, use_sample, alias_thr, alias_idx, sig_tab, logsig_tab, window,
                   negatives, lr0, min_lr, pos_base, work_total, seed, epoch, nblocks, maxlen, sent_loss,
                   sent_pairs, sent_kept):
    nsent = s_hi - s_lo
    dim = T_in.shape[1]
    nout_max = negatives + 1
    cmax = 2 * window
    for blk in nb.prange(nblocks):
        a = s_lo + (nsent * blk) // nblocks
        b = s_lo + (nsent * (blk + 1)) // nblocks
        buf = np.empty(maxlen, np.int32)
        pos = np.empty(maxlen, np.int64)
        ctx = np.empty(cmax, np.int32)
        outs = np.empty(nout_max, np.int32)
        g = np.empty((cmax, nout_max), np.float32)
        dIn = np.empty((cmax, dim), np.float32)
        Cb = np.empty((cmax, dim), np.float32)
        Ob = np.empty((nout_max, dim), np.float32)
        tmp = np.empty(dim, np.float32)
        for s in range(a, b):
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
                lr_w = np.float32(lr * lr_w_scale)
                state, nout = draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
                for c in range(B):
                    _compose(T_in, code_in, w_in, ctx[c], combine, Cb, c)
                for o in range(nout):
                    _compose(T_out, code_out, w_out, outs[o], combine, Ob, o)
                loss += window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab)
                for o in range(nout):
                    _scatter(T_out, code_out, w_out, outs[o], combine, Ob, o, learn_w, lr_w, tmp)
                for c in range(B):
                    _scatter(T_in, code_in, w_in, ctx[c], combine, dIn, c, learn_w, lr_w, tmp)
                pairs += B
            sent_loss[s - s_lo] = loss
            sent_pairs[s - s_lo] = pairs
            sent_kept[s - s_lo] = n


def _check_codes(name: str, code: np.ndarray, wt: np.ndarray | None, n_ids: int, rows: int) -> tuple:
    code = np.ascontiguousarray(code, dtype=np.int32)
    if code.ndim == 1:
        code = code[:, None]
    if code.ndim != 2 or code.shape[0] != n_ids or code.shape[1] < 1:
        raise ValueError(f"{name} codes must have shape ({n_ids}, R >= 1), got {code.shape}")
    if code.size and (code.min() < 0 or code.max() >= rows):
        raise ValueError(f"{name} codes must index rows 0..{rows - 1}")
    if wt is None:      # 1/sqrt(R): a step on each of the R rows moves the sum by one full step
        wt = np.full(code.shape, 1.0 / np.sqrt(code.shape[1]), np.float32)
    wt = np.array(wt, dtype=np.float32, order="C", copy=True)
    if wt.shape != code.shape:
        raise ValueError(f"{name} weights must have the codes' shape {code.shape}, got {wt.shape}")
    return code, wt


def init_table(rows: int, dim: int, combine: str, seed: int, side: str, first_rows: np.ndarray | None = None
               ) -> np.ndarray:
    """Initial rows. Sum: word2vec's U(-0.5, 0.5)/dim input rows and zero output rows. Product: a
    zero factor would stop every gradient of its partners, so all rows start at U(-0.5, 0.5)/dim
    except the rows of the first factor (`first_rows`, e.g. QR's quotient table), which start near
    1: at the start a composed vector is its last factor, as in the hashing trick."""
    rng = np.random.default_rng([seed, 0 if side == "in" else 1])
    T = (rng.random((rows, dim), dtype=np.float32) - np.float32(0.5)) / np.float32(dim)
    if combine == "sum":
        return np.zeros((rows, dim), np.float32) if side == "out" else T
    if first_rows is not None:
        fr = np.unique(first_rows)
        T[fr] = np.float32(1.0) + (rng.random((len(fr), dim), dtype=np.float32) - np.float32(0.5)) * np.float32(0.02)
    return T


def train_composed(tokens, offsets, n_ids: int, *, code_in, rows_in: int, w_in=None, code_out=None, rows_out=None,
                   w_out=None, shared_table: bool = False, combine: str = "sum", learn_weights: bool = False,
                   weight_lr_scale: float = 1.0, counts=None, dim=128, window=10, negatives=5, ns_exponent=0.75,
                   epochs=1, lr=0.025, min_lr=1e-4, sample=0.0, seed=0, threads=0, init=None,
                   progress: Callable[[int, int, float], None] | None = None,
                   chunk_tokens: int | None = None) -> dict:
    """Train compositional SGNS tables on sentences of ids in [0, n_ids) (-1 = padding).

    code_in int32[n_ids, R] rows of the input table (rows_in rows) used by each id; w_in float32
    [n_ids, R] their weights (None = all 1). code_out/rows_out/w_out the same for the output side
    (None = the input side's codes). shared_table: both sides index ONE table (rows_in rows).
    learn_weights: train the weights too (sum only; hash embeddings' importance weights), at
    weight_lr_scale x the learning rate. init: dict of tables to continue from.

    Returns {"T_in", "T_out" (the same array when shared), "w_in", "w_out", "stats"}.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {sorted(COMBINES)}, got {combine!r}")
    if window < 1 or negatives < 0 or epochs < 1 or dim < 1:
        raise ValueError("window >= 1, negatives >= 0, epochs >= 1, dim >= 1 required")
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if len(tokens) and (tokens.max(initial=-1) >= n_ids or tokens.min(initial=0) < -1):
        raise ValueError("tokens must lie in [0, n_ids) or be -1 (padding)")
    code_in, w_in, code_out, w_out, rows_out = _side_codes(n_ids, code_in, rows_in, w_in, code_out, rows_out, w_out,
                                                           shared_table)
    T_in, T_out = _start_tables(code_in, rows_in, code_out, rows_out, shared_table, combine, dim, seed, init)
    S = len(offsets) - 1
    if counts is None:
        counts = token_counts(tokens[offsets[0]:offsets[-1]] if S > 0 else tokens[:0], n_ids)
    counts = np.asarray(counts, dtype=np.int64)
    alias_thr, alias_idx = noise_alias(counts, ns_exponent)
    keep = keep_thresholds(counts, sample)
    sig_tab, logsig_tab = sigmoid_tables()
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    chunks = sentence_chunks(offsets, chunk_tokens or max(65536, per_epoch // 100))
    tables = (T_in, *read_only(code_in), w_in, T_out, *read_only(code_out), w_out, COMBINES[combine],
              bool(learn_weights and combine == "sum"), float(weight_lr_scale), keep, sample > 0, alias_thr,
              alias_idx, sig_tab, logsig_tab, int(window), int(negatives), float(lr), float(min_lr))
    stats = _train_epochs(tokens, offsets, tables, chunks, numba_threads(threads), epochs=epochs, seed=seed,
                          progress=progress)
    stats["combine"] = combine
    return {"T_in": T_in, "T_out": T_out, "w_in": w_in, "w_out": w_out, "stats": stats}


def _side_codes(n_ids: int, code_in, rows_in: int, w_in, code_out, rows_out, w_out, shared_table: bool) -> tuple:
    """The checked codes and weights of both sides, and the output side's row count: without its own
    codes the output side reuses the input side's (and its weights unless given); one shared table
    has the input side's rows."""
    code_in, w_in = _check_codes("input", code_in, w_in, n_ids, rows_in)
    if shared_table:
        rows_out = rows_in
    if code_out is None:
        code_out, w_out, rows_out = code_in, (w_in if w_out is None else w_out), rows_in if rows_out is None else rows_out
    rows_out = int(rows_out if rows_out is not None else rows_in)
    code_out, w_out = _check_codes("output", code_out, w_out, n_ids, rows_out)
    return code_in, w_in, code_out, w_out, rows_out


def _start_tables(code_in, rows_in: int, code_out, rows_out: int, shared_table: bool, combine: str, dim: int,
                  seed: int, init) -> tuple[np.ndarray, np.ndarray]:
    """(T_in, T_out) to train from: copies of `init`'s tables, or fresh ones (init_table); a shared
    table is one array on both sides. A product's first factor rows start near 1 (init_table)."""
    if init is not None:
        T_in = np.array(init["T_in"], np.float32, order="C", copy=True)
        T_out = T_in if shared_table else np.array(init["T_out"], np.float32, order="C", copy=True)
        return T_in, T_out
    first = code_in[:, 0] if combine == "product" and code_in.shape[1] > 1 else None
    T_in = init_table(rows_in, dim, combine, seed, "in", first)
    if shared_table:
        return T_in, T_in
    first = code_out[:, 0] if combine == "product" and code_out.shape[1] > 1 else None
    return T_in, init_table(rows_out, dim, combine, seed, "out", first)


def _train_epochs(tokens, offsets, tables: tuple, chunks: list[tuple[int, int]], nthreads: int, *, epochs: int,
                  seed: int, progress) -> dict:
    """Every epoch, chunk after chunk, on `nthreads` numba threads; `tables` are _compose_chunk's
    arguments from T_in to min_lr (trained in place). Progress is reported between chunks from this
    thread. Returns the run's stats (loss of the first chunk with pairs and of the last chunk)."""
    S = len(offsets) - 1
    maxlen = int(np.diff(offsets).max()) if S else 0
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    total_work = max(1, per_epoch * epochs)
    sent_loss = np.zeros(S, np.float64)
    sent_pairs = np.zeros(S, np.int64)
    sent_kept = np.zeros(S, np.int64)
    total_pairs = 0
    done = 0
    loss_first = float("nan")
    # read-only whether they came from Ray's object store or not: one compile of the kernel (kernel_inputs)
    tokens, offsets = read_only(tokens, offsets)
    with using_numba_threads(nthreads):
        t0 = time.perf_counter()
        for ep in range(epochs):
            pos_base = ep * per_epoch - int(offsets[0]) if S else 0
            for lo, hi in chunks:
                _compose_chunk(tokens, offsets, lo, hi, *tables, pos_base, float(total_work), int(seed), ep,
                               blocks_per_chunk(nthreads, hi - lo), maxlen, sent_loss[lo:hi], sent_pairs[lo:hi],
                               sent_kept[lo:hi])
                done += int(offsets[hi] - offsets[lo])
                p = int(sent_pairs[lo:hi].sum())
                chunk_loss = float(sent_loss[lo:hi].sum() / p) if p else float("nan")
                if loss_first != loss_first and p:
                    loss_first = chunk_loss
                if progress is not None:
                    progress(done, total_work, chunk_loss)
            total_pairs += int(sent_pairs.sum())
        seconds = time.perf_counter() - t0
    p_last = int(sent_pairs[chunks[-1][0]:chunks[-1][1]].sum()) if chunks else 0
    loss_last = float(sent_loss[chunks[-1][0]:chunks[-1][1]].sum() / p_last) if p_last else float("nan")
    real = int(np.count_nonzero(tokens[offsets[0]:offsets[-1]] >= 0)) * epochs if S else 0
    return {"tokens": real, "pairs": total_pairs, "seconds": seconds,
            "tokens_per_s": real / seconds if seconds > 0 else float("nan"), "loss_first": loss_first,
            "loss_last": loss_last, "threads": nthreads, "engine": "numba-compose"}


def materialise(T: np.ndarray, code: np.ndarray, wt: np.ndarray | None, combine: str = "sum",
                rows: np.ndarray | None = None) -> np.ndarray:
    """The composed vectors of ids `rows` (default all ids): float32 [len(rows), dim]."""
    code = np.asarray(code)
    if code.ndim == 1:
        code = code[:, None]
    idx = np.arange(code.shape[0]) if rows is None else np.asarray(rows)
    c = code[idx]
    if combine == "product":
        out = T[c[:, 0]].copy()
        for r in range(1, c.shape[1]):
            out *= T[c[:, r]]
        return out
    w = np.full(c.shape, 1.0 / np.sqrt(c.shape[1]), np.float32) if wt is None else np.asarray(wt, np.float32)[idx]
    out = np.zeros((len(idx), T.shape[1]), np.float32)
    for r in range(c.shape[1]):
        out += w[:, r:r + 1] * T[c[:, r]]
    return out
