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
every random draw comes from a splitmix64 stream seeded by (seed, epoch, sentence).
"""
from __future__ import annotations

import time
from typing import Callable

import numba as nb
import numpy as np

MAX_EXP = 6.0
TABLE_SIZE = 1024
_U32 = 1 << 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


# ----------------------------------------------------------------------------- tables (Python)

def sigmoid_tables() -> tuple[np.ndarray, np.ndarray]:
    """sigmoid(x) and log(sigmoid(x)) sampled at TABLE_SIZE + 1 points on [-MAX_EXP, MAX_EXP]."""
    x = (np.arange(TABLE_SIZE + 1, dtype=np.float64) / TABLE_SIZE * 2.0 - 1.0) * MAX_EXP
    sig = 1.0 / (1.0 + np.exp(-x))
    logsig = -np.log1p(np.exp(-x))
    return sig.astype(np.float32), logsig.astype(np.float32)


def token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each token id (padding -1 ignored)."""
    t = np.asarray(tokens)
    return np.bincount(t[t >= 0], minlength=vocab_size).astype(np.int64)[:vocab_size]


def keep_thresholds(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec subsampling as 32-bit thresholds: keep token w when a uniform u32 < thr[w].

    keep(w) = (sqrt(c_w / (sample * total)) + 1) * (sample * total) / c_w, capped at 1 (the
    formula of word2vec.c and gensim). sample <= 0 keeps everything.
    """
    c = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.full(len(c), _U32, dtype=np.uint64)
    thr = sample * c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.sqrt(c / thr) + 1.0) * thr / c
    p = np.where(c > 0, np.minimum(p, 1.0), 1.0)
    return np.minimum(np.floor(p * _U32), _U32).astype(np.uint64)


@nb.njit(cache=True)
def _build_alias(p):
    """Vose's alias method: O(1) draws with two table reads (exact, unlike a finite unigram table)."""
    n = p.shape[0]
    thr = np.zeros(n, np.uint64)
    alias = np.arange(n).astype(np.int32)
    scaled = p * n
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        l = large[nl]
        thr[s] = np.uint64(min(scaled[s] * 4294967296.0, 4294967296.0))
        alias[s] = l
        scaled[l] = (scaled[l] + scaled[s]) - 1.0
        if scaled[l] < 1.0:
            small[ns] = l
            ns += 1
        else:
            large[nl] = l
            nl += 1
    for k in range(nl):
        thr[large[k]] = np.uint64(4294967296)
    for k in range(ns):  # numerical leftovers: probability ~1
        thr[small[k]] = np.uint64(4294967296)
    return thr, alias


def noise_alias(counts: np.ndarray, ns_exponent: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Alias table (uint64 thresholds on a u32 uniform, int32 aliases) for unigram ** ns_exponent.

    Tokens with zero count are never drawn. If no token has a count, draws are uniform.
    """
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(c > 0, np.power(np.maximum(c, 1e-300), ns_exponent), 0.0)
    if w.sum() <= 0:
        w = np.ones_like(w)
    return _build_alias(w / w.sum())


# ----------------------------------------------------------------------------- kernel

@nb.njit(inline="always")
def _next(state):
    """splitmix64: returns (new state, 64 random bits)."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return state, z ^ (z >> _S31)


@nb.njit(inline="always")
def _seed_state(seed, epoch, sent):
    s = np.uint64(seed) * _M1 + np.uint64(epoch) * _M2 + np.uint64(sent) * _GOLDEN
    s, z = _next(s)
    return z


@nb.njit(inline="always")
def _kept_tokens(tokens, lo, hi, keep_thr, use_sample, state, buf, pos):
    """Copy sentence tokens[lo:hi] into buf (padding dropped; with use_sample, each token kept with
    probability keep_thr / 2^32) and their stream positions into pos. Returns (state, count)."""
    n = 0
    for t in range(lo, hi):
        w = tokens[t]
        if w < 0:
            continue
        if use_sample:
            state, r = _next(state)
            if (r & _LOW32) >= keep_thr[w]:
                continue
        buf[n] = w
        pos[n] = t
        n += 1
    return state, n


@nb.njit(inline="always")
def _window_contexts(state, buf, n, i, window, ctx):
    """word2vec's dynamic window around position i: b uniform in 1..window, the tokens within b
    positions (not i itself) go to ctx. Returns (state, number of contexts)."""
    state, r = _next(state)
    bw = 1 + np.int64(((r >> _S32) * np.uint64(window)) >> _S32)
    lo = max(0, i - bw)
    hi = min(n, i + bw + 1)
    B = 0
    for j in range(lo, hi):
        if j != i:
            ctx[B] = buf[j]
            B += 1
    return state, B


@nb.njit(inline="always")
def _draw_negatives(state, outs, center, negatives, alias_thr, alias_idx):
    """outs[0] = center, then up to `negatives` draws from the alias noise table (a draw equal to
    the centre is skipped). Returns (state, number of outputs)."""
    nal = np.uint64(alias_thr.shape[0])
    outs[0] = center
    nout = 1
    for k in range(negatives):
        state, r = _next(state)
        jj = np.int64(((r >> _S32) * nal) >> _S32)
        neg = jj if (r & _LOW32) < alias_thr[jj] else alias_idx[jj]
        if neg == center:
            continue
        outs[nout] = neg
        nout += 1
    return state, nout


@nb.njit(inline="always")
def _pair_grad(f, positive, lr, sig_tab, logsig_tab):
    """SGNS on one score f = <input, output>: returns (loss term, gradient scale (label - sigmoid(f)) * lr)
    with word2vec's MAX_EXP clamp and table sigmoid / log-sigmoid."""
    half = TABLE_SIZE / (2.0 * MAX_EXP)
    x = f if positive else -f
    loss = 0.0
    if x <= -MAX_EXP:
        loss = -x
    elif x < MAX_EXP:
        loss = -logsig_tab[np.int64((x + MAX_EXP) * half + 0.5)]
    if f <= -MAX_EXP:
        sg = sig_tab[0]
    elif f >= MAX_EXP:
        sg = sig_tab[TABLE_SIZE]
    else:
        sg = sig_tab[np.int64((f + MAX_EXP) * half + 0.5)]
    lab = np.float32(1.0) if positive else np.float32(0.0)
    return loss, (lab - sg) * lr


@nb.njit(inline="always")
def _window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab):
    """One HogBatch window on local row buffers, shared by every SGNS kernel (one table, blocks,
    compositional): Cb[:B] context input vectors, Ob[:nout] output vectors (centre first, then
    negatives). Computes g[c, o] = (label - sigmoid(Cb[c].Ob[o])) * lr, then dIn[c] = sum_o g Ob[o]
    (the input-side step) and, IN PLACE of Ob, the output-side step sum_c g Cb[c]. Returns the
    window's SGNS loss (word2vec's MAX_EXP clamp, table sigmoid)."""
    dim = Cb.shape[1]
    loss = 0.0
    for c in range(B):
        for o in range(nout):
            f = np.float32(0.0)
            for d in range(dim):
                f += Cb[c, d] * Ob[o, d]
            dl, gg = _pair_grad(f, o == 0, lr, sig_tab, logsig_tab)
            loss += dl
            g[c, o] = gg
    for c in range(B):
        for d in range(dim):
            dIn[c, d] = 0.0
        for o in range(nout):
            gg = g[c, o]
            for d in range(dim):
                dIn[c, d] += gg * Ob[o, d]
    for o in range(nout):
        for d in range(dim):
            Ob[o, d] = 0.0
        for c in range(B):
            gg = g[c, o]
            for d in range(dim):
                Ob[o, d] += gg * Cb[c, d]
    return loss


@nb.njit(inline="always")
def _hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab):
    """One window on full-row tables: gather the B context rows of W_in and the nout output rows
    of W_out into local buffers, take the window step, add the steps back (Hogwild). Returns the
    window's loss."""
    dim = W_in.shape[1]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            Cb[c, d] = W_in[crow, d]
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            Ob[o, d] = W_out[orow, d]
    loss = _window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab)
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            W_out[orow, d] += Ob[o, d]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            W_in[crow, d] += dIn[c, d]
    return loss


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _sgns_chunk(tokens, offsets, s_lo, s_hi, W_in, W_out, keep_thr, use_sample, alias_thr, alias_idx,
                sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base, work_total, seed, epoch,
                nblocks, maxlen, sent_loss, sent_pairs, sent_kept, shared):
    """Train on sentences [s_lo, s_hi). Per-sentence loss sums, pair and kept-token counts go to
    sent_*[s - s_lo]. pos_base + token position = work done before that token (for the lr)."""
    nsent = s_hi - s_lo
    dim = W_in.shape[1]
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
        for s in range(a, b):
            state, n = _kept_tokens(tokens, offsets[s], offsets[s + 1], keep_thr, use_sample,
                                    _seed_state(seed, epoch, s), buf, pos)
            loss = 0.0
            pairs = 0
            for i in range(n):
                state, B = _window_contexts(state, buf, n, i, window, ctx)
                if B == 0:
                    continue
                center = buf[i]
                lr = lr0 - (lr0 - min_lr) * (pos_base + pos[i]) / work_total
                if lr < min_lr:
                    lr = min_lr
                if not shared:
                    # word2vec order: pair by pair, own negatives, output rows move at once
                    for c in range(B):
                        crow = ctx[c]
                        for d in range(dim):
                            dIn[0, d] = 0.0
                        for o in range(nout_max):
                            if o == 0:
                                orow = center
                            else:
                                state, r = _next(state)
                                jj = np.int64(((r >> _S32) * np.uint64(alias_thr.shape[0])) >> _S32)
                                orow = jj if (r & _LOW32) < alias_thr[jj] else alias_idx[jj]
                                if orow == center:
                                    continue
                            f = np.float32(0.0)
                            for d in range(dim):
                                f += W_in[crow, d] * W_out[orow, d]
                            dl, gg = _pair_grad(f, o == 0, lr, sig_tab, logsig_tab)
                            loss += dl
                            gg = np.float32(gg)
                            for d in range(dim):
                                dIn[0, d] += gg * W_out[orow, d]
                            for d in range(dim):
                                W_out[orow, d] += gg * W_in[crow, d]
                        for d in range(dim):
                            W_in[crow, d] += dIn[0, d]
                    pairs += B
                    continue
                state, nout = _draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
                loss += _hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab)
                pairs += B
            sent_loss[s - s_lo] = loss
            sent_pairs[s - s_lo] = pairs
            sent_kept[s - s_lo] = n


# ----------------------------------------------------------------------------- driver

def _chunks(offsets: np.ndarray, target_tokens: int) -> list[tuple[int, int]]:
    """Split sentences into consecutive runs of about target_tokens positions each."""
    S = len(offsets) - 1
    if S == 0:
        return []
    cuts = np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], max(1, target_tokens)), side="right") - 1
    cuts = np.unique(np.clip(cuts, 0, S))
    cuts = np.concatenate([cuts[cuts > 0], [S]])
    out, lo = [], 0
    for c in cuts:
        if c > lo:
            out.append((lo, int(c)))
            lo = int(c)
    return out


def _edge_loss(loss: np.ndarray, pairs: np.ndarray, positions: np.ndarray, frac: float, last: bool) -> float:
    """Mean loss per pair over the sentences covering the first (or last) `frac` of positions."""
    if len(positions) == 0:
        return float("nan")
    span = positions[-1] - positions[0]
    if last:
        sel = positions[1:] > positions[-1] - frac * span
    else:
        sel = positions[:-1] < positions[0] + frac * span
    p = pairs[sel].sum()
    return float(loss[sel].sum() / p) if p > 0 else float("nan")


def prepare(tokens, offsets, vocab_size, counts, dim, init, seed):
    """Validate inputs and build the initial tables (shared with the torch kernel)."""
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
    if init is not None:
        W_in = np.array(init[0], dtype=np.float32, order="C", copy=True)
        W_out = np.array(init[1], dtype=np.float32, order="C", copy=True)
        if W_in.shape != (vocab_size, dim) or W_out.shape != (vocab_size, dim):
            raise ValueError(f"init tables must both have shape ({vocab_size}, {dim})")
    else:
        rng = np.random.default_rng(seed)
        W_in = ((rng.random((vocab_size, dim), dtype=np.float32) - np.float32(0.5)) / np.float32(dim))
        W_out = np.zeros((vocab_size, dim), dtype=np.float32)
    return tokens, offsets, counts, W_in, W_out


def train_sgns(tokens, offsets, vocab_size, *, counts=None, dim=128, window=10, negatives=5,
               ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0, seed=0, threads=0,
               init=None, progress: Callable[[int, int, float], None] | None = None,
               chunk_tokens: int | None = None, shared_negatives: bool = True, start_epoch: int = 0,
               on_epoch: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train SGNS embeddings on sentences tokens[offsets[s]:offsets[s+1]] (-1 = padding, skipped).

    Returns (W_in, W_out, stats): W_in float32[vocab, dim] are the embeddings, W_out the context
    table (keep both to resume with ``init=(W_in, W_out)``). stats: tokens (non-padding tokens x
    epochs), tokens_trained (after subsampling), pairs, seconds, tokens_per_s, pairs_per_s,
    loss_first / loss_last (mean SGNS loss per positive pair over the first / last ~5% of the
    work), compile_s, threads, chunks.
    threads=0 uses all numba threads; threads=1 with a fixed seed is bit-for-bit reproducible.
    progress(done_tokens, total_tokens, chunk_loss) is called between chunks from this thread.
    Resuming (a killed run, docs/reliability.md): ``init=(W_in, W_out)`` saved after epoch k plus
    ``start_epoch=k`` runs epochs k..epochs-1 on exactly the learning-rate schedule and random
    streams of an uninterrupted run (one thread: bit-identical result). on_epoch(k, W_in, W_out)
    is called after each epoch (k = epochs done) with the live tables, e.g. to checkpoint them.
    """
    if window < 1 or negatives < 0 or epochs < 1 or dim < 1:
        raise ValueError("window >= 1, negatives >= 0, epochs >= 1, dim >= 1 required")
    if not 0 <= start_epoch <= epochs or (start_epoch > 0 and init is None):
        raise ValueError("start_epoch must lie in [0, epochs] and needs init=(W_in, W_out) of that epoch")
    tokens, offsets, counts, W_in, W_out = prepare(tokens, offsets, vocab_size, counts, dim, init, seed)
    S = len(offsets) - 1
    t_compile = time.perf_counter()
    alias_thr, alias_idx = noise_alias(counts, ns_exponent)
    keep = keep_thresholds(counts, sample)
    sig_tab, logsig_tab = sigmoid_tables()
    t_compile = time.perf_counter() - t_compile

    max_threads = nb.config.NUMBA_NUM_THREADS
    nthreads = max_threads if threads <= 0 else min(int(threads), max_threads)
    prev_threads = nb.get_num_threads()
    lens = np.diff(offsets)
    maxlen = int(lens.max()) if S else 0
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    real_tokens = int(np.count_nonzero(tokens[offsets[0]:offsets[-1]] >= 0)) if S else 0
    total_work = max(1, per_epoch * epochs)
    if chunk_tokens is None:
        chunk_tokens = max(65536, per_epoch // 100)
    chunks = _chunks(offsets, chunk_tokens)
    # blocks: a few per thread so uneven sentence lengths balance; one block = reproducible order
    nblocks_for = lambda ns: 1 if nthreads == 1 else max(1, min(ns, 4 * nthreads))

    sent_loss = np.zeros(S, np.float64)
    sent_pairs = np.zeros(S, np.int64)
    sent_kept = np.zeros(S, np.int64)
    first = None
    total_pairs = 0
    total_kept = 0
    done = start_epoch * per_epoch
    t_hook = 0.0          # time in on_epoch (checkpoint writes), kept out of the kernel figures
    nb.set_num_threads(nthreads)
    try:
        tc = time.perf_counter()
        _warm(sig_tab, logsig_tab)
        t_compile += time.perf_counter() - tc
        t0 = time.perf_counter()
        for ep in range(start_epoch, epochs):
            pos_base = ep * per_epoch - int(offsets[0]) if S else 0
            for lo, hi in chunks:
                _sgns_chunk(tokens, offsets, lo, hi, W_in, W_out, keep, sample > 0, alias_thr, alias_idx,
                            sig_tab, logsig_tab, int(window), int(negatives), float(lr), float(min_lr),
                            pos_base, float(total_work), int(seed), ep, nblocks_for(hi - lo), maxlen,
                            sent_loss[lo:hi], sent_pairs[lo:hi], sent_kept[lo:hi], bool(shared_negatives))
                done += int(offsets[hi] - offsets[lo])
                if progress is not None:
                    p = int(sent_pairs[lo:hi].sum())
                    progress(done, total_work, float(sent_loss[lo:hi].sum() / p) if p else float("nan"))
            total_pairs += int(sent_pairs.sum())
            total_kept += int(sent_kept.sum())
            if ep == start_epoch:
                first = (sent_loss.copy(), sent_pairs.copy())
            if on_epoch is not None:
                tc = time.perf_counter()
                on_epoch(ep + 1, W_in, W_out)
                t_hook += time.perf_counter() - tc
        seconds = time.perf_counter() - t0 - t_hook
    finally:
        nb.set_num_threads(prev_threads)

    frac = min(1.0, 0.05 * (epochs - start_epoch))
    if S and first is not None:
        loss_first = _edge_loss(first[0], first[1], offsets, frac, last=False)
        loss_last = _edge_loss(sent_loss, sent_pairs, offsets, frac, last=True)
    else:
        loss_first = loss_last = float("nan")
    tok = real_tokens * (epochs - start_epoch)
    stats = {
        "tokens": tok, "tokens_trained": total_kept, "pairs": total_pairs, "seconds": seconds,
        "tokens_per_s": tok / seconds if seconds > 0 else float("nan"),
        "pairs_per_s": total_pairs / seconds if seconds > 0 else float("nan"),
        "loss_first": loss_first, "loss_last": loss_last, "compile_s": t_compile,
        "threads": nthreads, "chunks": len(chunks) * (epochs - start_epoch), "engine": "numba",
        "start_epoch": int(start_epoch),
    }
    return W_in, W_out, stats


_WARMED = False


def _warm(sig_tab, logsig_tab):
    """Compile (or load from the on-disk cache) the kernel on a tiny input, outside the timings."""
    global _WARMED
    if _WARMED:
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
    _sgns_chunk(toks, offs, 0, 1, Wi, Wo, keep, False, thr, ali, sig_tab, logsig_tab, 2, 1, 0.025, 1e-4,
                0, 4.0, 0, 0, 1, 4, z, zi, zk, True)
    _WARMED = True
