"""The shared SGNS kernel toolkit: what every skip-gram kernel here (one table in skipgram.py, blocks
in blocks.py, compositional tables in compose.py, torch in torch_engine.py) must compute the same way.

Why one module: the kernels differ only in where their rows live (one table, two shards, composed
rows); the random streams, the dynamic window, the negative draws, the sigmoid tables and the
HogBatch window step are one definition, so a run is bit-identical whichever kernel shares them and
a fix lands in every kernel at once. One exception: the one-table kernel's windows of six outputs
take the fused six_window (issue 20, eighth pass), equal to hogbatch up to float32 summation order.
The numba functions are ``inline="always"``: each kernel compiles them into its own loop (no call
cost; the kernel's own fastmath flags apply).

Random draws: splitmix64 streams. The constants below are numba uint64 operands (a shift count of
np.uint64 keeps the arithmetic in uint64 instead of promoting to float).
"""
from __future__ import annotations

from contextlib import contextmanager

import numba as nb
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from embedlake.workers.prefetch import prefetch_row

MAX_EXP = 6.0                                   # word2vec's sigmoid clamp: |x| >= 6 is saturated
TABLE_SIZE = 1024                               # points of the sigmoid / log-sigmoid tables
U32 = 1 << 32                                   # 2^32: keep / alias thresholds compare to a u32 draw
GOLDEN = np.uint64(0x9E3779B97F4A7C15)          # splitmix64's increment (2^64 / golden ratio)
M1 = np.uint64(0xBF58476D1CE4E5B9)              # splitmix64's two finaliser multipliers
M2 = np.uint64(0x94D049BB133111EB)
LOW32 = np.uint64(0xFFFFFFFF)
S27 = np.uint64(27)
S30 = np.uint64(30)
S31 = np.uint64(31)
S32 = np.uint64(32)
S33 = np.uint64(33)
THR33 = np.uint64((1 << 33) - 1)                # pack_alias: the low 33 bits hold a threshold (<= 2^32)

# Ablation switches of the issue-20 quality experiments (docs/skipgram.md, "Quality against gensim"):
# bits of train_sgns(ablation=...); 0 is the default kernel. Each one changes one thing toward gensim.
ABL_SATURATION_SKIP = 1     # gensim: a pair with |<in, out>| >= MAX_EXP gets no update at all
ABL_SATURATION_EXACT = 2    # word2vec.c: sigmoid exactly 0 / 1 beyond MAX_EXP (ours: the table's end points)
ABL_TRUNCATED_INDEX = 4     # gensim's sigmoid-table index is truncated (ours rounds to the nearest point)
ABL_SEQUENTIAL_WINDOW = 8   # shared negatives, but context after context (each sees the previous updates)
ABL_PAIR_NEGATIVES = 16     # own negatives per (context, centre) pair, on the window step's L1 buffers


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
        return np.full(len(c), U32, dtype=np.uint64)
    thr = sample * c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (np.sqrt(c / thr) + 1.0) * thr / c
    p = np.where(c > 0, np.minimum(p, 1.0), 1.0)
    return np.minimum(np.floor(p * U32), U32).astype(np.uint64)


@nb.njit(cache=True)
def build_alias(p):
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
    return build_alias(w / w.sum())


def pack_alias(alias_thr: np.ndarray, alias_idx: np.ndarray) -> np.ndarray:
    """noise_alias's two tables as one uint64 per row: the alias in the high 31 bits, the threshold
    (at most 2^32) in the low 33. Why: a draw then reads one word, and the choice between the drawn
    row and its alias is a conditional move. With two tables LLVM's x86 backend turns that choice
    into a branch around the alias load, taken at random: ~6 ns a draw against ~1.4 ns (issue 20,
    seventh pass; a window of the per-pair kernel draws 5 per pair). The same draws either way."""
    if len(alias_idx) >= 1 << 31:
        raise ValueError(f"pack_alias: a vocabulary of {len(alias_idx)} rows does not fit 31 bits")
    return (np.asarray(alias_idx).astype(np.uint64) << S33) | np.asarray(alias_thr, np.uint64)


CACHE_LINE = 64                                 # bytes


def cache_aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of the 2-d table `a` whose data starts on a cache-line boundary.

    Why: a large numpy array starts wherever malloc put it, usually 16 bytes past a 64-byte line, so
    at d=128 every 64-byte vector access of every row straddles two lines (a split load or store):
    the window kernel ran ~1.5x slower on such tables in a micro-benchmark (issue 20, eighth pass).
    The copy has the same values; it is a view into a slightly larger buffer."""
    a = np.asarray(a, dtype=np.float32)
    raw = np.empty(a.size + CACHE_LINE // 4, np.float32)
    k = (-raw.ctypes.data % CACHE_LINE) // 4
    out = raw[k:k + a.size].reshape(a.shape)
    out[...] = a
    return out


# ----------------------------------------------------------------------------- numba device functions

@intrinsic
def take_next(typingctx, counter):
    """Atomically add 1 to counter[0] (a 1-d int64 array) and return its previous value: the job
    queue of the threads of one kernel launch (each takes the next block of text when it is free,
    as gensim's workers take the next job), with no lock and no barrier between blocks."""
    if not (isinstance(counter, types.Array) and counter.ndim == 1 and counter.dtype == types.int64):
        return None
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)],
                                       wraparound=False)
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1), "monotonic")

    return sig, codegen


@nb.njit(inline="always")
def prefetch_pair(W_in, W_out, crow, negs, base, negatives):
    """Prefetch one pair's rows: the context's input row and its negatives' output rows negs[base:base+negatives]."""
    prefetch_row(W_in, crow)
    for k in range(negatives):
        prefetch_row(W_out, negs[base + k])


@nb.njit(inline="always")
def splitmix64(state):
    """splitmix64: returns (new state, 64 random bits)."""
    state = state + GOLDEN
    z = state
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return state, z ^ (z >> S31)


@nb.njit(inline="always")
def seed_state(seed, epoch, sent):
    s = np.uint64(seed) * M1 + np.uint64(epoch) * M2 + np.uint64(sent) * GOLDEN
    s, z = splitmix64(s)
    return z


@nb.njit(inline="always")
def kept_tokens(tokens, lo, hi, keep_thr, use_sample, state, buf, pos):
    """Copy sentence tokens[lo:hi] into buf (padding dropped; with use_sample, each token kept with
    probability keep_thr / 2^32) and their stream positions into pos. Returns (state, count)."""
    n = 0
    for t in range(lo, hi):
        w = tokens[t]
        if w < 0:
            continue
        if use_sample:
            state, r = splitmix64(state)
            if (r & LOW32) >= keep_thr[w]:
                continue
        buf[n] = w
        pos[n] = t
        n += 1
    return state, n


@nb.njit(inline="always")
def window_contexts(state, buf, n, i, window, ctx):
    """word2vec's dynamic window around position i: b uniform in 1..window, the tokens within b
    positions (not i itself) go to ctx. Returns (state, number of contexts)."""
    state, r = splitmix64(state)
    bw = 1 + np.int64(((r >> S32) * np.uint64(window)) >> S32)
    lo = max(0, i - bw)
    hi = min(n, i + bw + 1)
    B = 0
    for j in range(lo, hi):
        if j != i:
            ctx[B] = buf[j]
            B += 1
    return state, B


@nb.njit(inline="always")
def linear_lr(lr0, min_lr, done, work_total):
    """word2vec's learning rate after `done` of `work_total` units: lr0 falling linearly to min_lr,
    never below it (one formula for every engine, so their schedules cannot drift apart)."""
    lr = lr0 - (lr0 - min_lr) * done / work_total
    return lr if lr >= min_lr else min_lr


@nb.njit(inline="always")
def draw_negatives(state, outs, center, negatives, alias_thr, alias_idx):
    """outs[0] = center, then up to `negatives` draws from the alias noise table (a draw equal to
    the centre is skipped). Returns (state, number of outputs)."""
    nal = np.uint64(alias_thr.shape[0])
    outs[0] = center
    nout = 1
    for k in range(negatives):
        state, r = splitmix64(state)
        jj = np.int64(((r >> S32) * nal) >> S32)
        neg = jj if (r & LOW32) < alias_thr[jj] else alias_idx[jj]
        if neg == center:
            continue
        outs[nout] = neg
        nout += 1
    return state, nout


@nb.njit(inline="always")
def noise_pick(r, noise):
    """The noise row for 64 random bits r from pack_alias's table: the same row as draw_negatives
    picks from (alias_thr, alias_idx) for the same bits, without a branch."""
    jj = np.int64(((r >> S32) * np.uint64(noise.shape[0])) >> S32)
    p = noise[jj]
    return jj if (r & LOW32) < (p & THR33) else np.int64(p >> S33)


@nb.njit(inline="always")
def pair_grad(f, positive, lr, sig_tab, logsig_tab):
    """SGNS on one score f = <input, output>: returns (loss term, gradient scale (label - sigmoid(f)) * lr)
    with word2vec's MAX_EXP clamp and table sigmoid / log-sigmoid.

    Branch-free on purpose: the clamp is a min / max on the table index and the saturated loss a
    select, so the compiler emits no jump that depends on f. The earlier if / elif form computed
    the same values (the same float64 index expression, the same end points) but cost ~20 ns per
    call on random scores against ~1.6 ns for this one (docs/skipgram.md, third pass), the largest
    single cost of the per-pair kernel."""
    return pair_loss(f, positive, logsig_tab), pair_scale(f, positive, lr, sig_tab)


@nb.njit(inline="always")
def pair_loss(f, positive, logsig_tab):
    """pair_grad's loss term alone: -log sigmoid(x), x = f for the positive and -f for a negative,
    from the table, -x below -MAX_EXP and 0 above. Apart from the step so that a kernel can leave it
    out where nobody reads it (pair_window: a sample of the sentences, issue 20 seventh pass)."""
    half = TABLE_SIZE / (2.0 * MAX_EXP)
    x = f if positive else -f
    loss = -logsig_tab[np.int64(min(max((x + MAX_EXP) * half + 0.5, 0.0), TABLE_SIZE + 0.0))]
    loss = -x if x <= -MAX_EXP else loss
    return 0.0 if x >= MAX_EXP else loss


@nb.njit(inline="always")
def pair_scale(f, positive, lr, sig_tab):
    """pair_grad's step scale alone: (label - sigmoid(f)) * lr, sigmoid from the table, clamped."""
    half = TABLE_SIZE / (2.0 * MAX_EXP)
    sg = sig_tab[np.int64(min(max((f + MAX_EXP) * half + 0.5, 0.0), TABLE_SIZE + 0.0))]
    lab = np.float32(1.0) if positive else np.float32(0.0)
    return (lab - sg) * lr


@nb.njit(inline="always")
def pair_grad_mode(f, positive, lr, sig_tab, logsig_tab, mode):
    """pair_grad with the ablation switches (the ABL_* bits above) in `mode`; mode 0 is pair_grad."""
    half = TABLE_SIZE / (2.0 * MAX_EXP)
    x = f if positive else -f
    loss = 0.0
    if x <= -MAX_EXP:
        loss = -x
    elif x < MAX_EXP:
        loss = -logsig_tab[np.int64((x + MAX_EXP) * half + 0.5)]
    rnd = 0.0 if mode & ABL_TRUNCATED_INDEX else 0.5
    lab = np.float32(1.0) if positive else np.float32(0.0)
    if f <= -MAX_EXP:
        if mode & ABL_SATURATION_SKIP:
            return loss, np.float32(0.0)
        sg = np.float32(0.0) if mode & ABL_SATURATION_EXACT else sig_tab[0]
    elif f >= MAX_EXP:
        if mode & ABL_SATURATION_SKIP:
            return loss, np.float32(0.0)
        sg = np.float32(1.0) if mode & ABL_SATURATION_EXACT else sig_tab[TABLE_SIZE]
    else:
        sg = sig_tab[np.int64((f + MAX_EXP) * half + rnd)]
    return loss, (lab - sg) * lr


@nb.njit(inline="always")
def window_step_mode(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab, mode):
    """window_step with pair_grad_mode's ablation switches. ABL_SEQUENTIAL_WINDOW: context after
    context, each against the output rows as the previous contexts left them (word2vec's order,
    the window's shared negatives kept); Ob then holds the updated rows, not the steps."""
    dim = Cb.shape[1]
    loss = 0.0
    if mode & ABL_SEQUENTIAL_WINDOW:
        for c in range(B):
            for o in range(nout):
                f = np.float32(0.0)
                for d in range(dim):
                    f += Cb[c, d] * Ob[o, d]
                dl, gg = pair_grad_mode(f, o == 0, lr, sig_tab, logsig_tab, mode)
                loss += dl
                g[c, o] = gg
            for d in range(dim):
                dIn[c, d] = 0.0
            for o in range(nout):
                gg = g[c, o]
                for d in range(dim):
                    dIn[c, d] += gg * Ob[o, d]
                for d in range(dim):
                    Ob[o, d] += gg * Cb[c, d]
        return loss
    for c in range(B):
        for o in range(nout):
            f = np.float32(0.0)
            for d in range(dim):
                f += Cb[c, d] * Ob[o, d]
            dl, gg = pair_grad_mode(f, o == 0, lr, sig_tab, logsig_tab, mode)
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
def hogbatch_mode(W_in, W_out, ctx, B, outs, nout, Cb, Ob, Oo, g, dIn, lr, sig_tab, logsig_tab, mode):
    """hogbatch with pair_grad_mode's ablation switches (Oo: the output rows as read, for
    ABL_SEQUENTIAL_WINDOW, whose window step leaves the updated rows in Ob)."""
    dim = W_in.shape[1]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            Cb[c, d] = W_in[crow, d]
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            Ob[o, d] = W_out[orow, d]
            Oo[o, d] = Ob[o, d]
    loss = window_step_mode(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab, mode)
    if mode & ABL_SEQUENTIAL_WINDOW:
        for o in range(nout):
            orow = outs[o]
            for d in range(dim):
                Ob[o, d] -= Oo[o, d]
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            W_out[orow, d] += Ob[o, d]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            W_in[crow, d] += dIn[c, d]
    return loss


@nb.njit(inline="always")
def window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab):
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
            dl, gg = pair_grad(f, o == 0, lr, sig_tab, logsig_tab)
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
def hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab):
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
    loss = window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab)
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            W_out[orow, d] += Ob[o, d]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            W_in[crow, d] += dIn[c, d]
    return loss


@nb.njit(inline="always")
def window_draws(state, n, window, negatives, noise, buf, draws, outs):
    """All random draws of a sentence's shared-negative windows, taken before any window trains, in
    the order window_contexts and draw_negatives take them centre by centre (negatives only for a
    window with a context): draws[i] = centre i's window b, draws[n + i] = its number of outputs
    (0: no context), outs[i * (negatives + 1):] those outputs (the centre, then its negatives).

    Why: the draws do not depend on the tables, so taking them first changes no value, and window
    i can then prefetch window i + 1's random output rows (window_sentence). Returns state."""
    k1 = negatives + 1
    for i in range(n):
        state, r = splitmix64(state)
        bw = 1 + np.int64(((r >> S32) * np.uint64(window)) >> S32)
        draws[i] = bw
        draws[n + i] = 0
        if min(n, i + bw + 1) - max(0, i - bw) - 1 == 0:
            continue
        center = buf[i]
        outs[i * k1] = center
        nout = 1
        for k in range(negatives):          # draw_negatives's draws, from the packed table (noise_pick)
            state, r = splitmix64(state)
            neg = noise_pick(r, noise)
            if neg != center:
                outs[i * k1 + nout] = neg
                nout += 1
        draws[n + i] = nout
    return state


@nb.njit(inline="always")
def prefetch_window(W_in, W_out, buf, n, i, draws, outs, k1):
    """Prefetch the rows of window i that window i - 1 did not read: its outputs' rows (the centre,
    the negatives: random rows of W_out) and the context row entering on the right."""
    for o in range(draws[n + i]):
        prefetch_row(W_out, outs[i * k1 + o])
    j = i + draws[i]
    if j < n:
        prefetch_row(W_in, buf[j])


@nb.njit(inline="always")
def six_scores(W_in, W_out, crow, r0, r1, r2, r3, r4, r5):
    """The six scores of one context row of W_in against the window's six output rows, in one pass
    over d (loads only: six vector accumulators, no alias checks)."""
    dim = W_in.shape[1]
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    s4 = np.float32(0.0)
    s5 = np.float32(0.0)
    for d in range(dim):
        x = W_in[crow, d]
        s0 += x * W_out[r0, d]
        s1 += x * W_out[r1, d]
        s2 += x * W_out[r2, d]
        s3 += x * W_out[r3, d]
        s4 += x * W_out[r4, d]
        s5 += x * W_out[r5, d]
    return s0, s1, s2, s3, s4, s5


@nb.njit(inline="always")
def six_window(W_in, W_out, ctx, B, outs, St, dIn, g, lr, sig_tab, logsig_tab, want_loss):
    """hogbatch for a window of six outputs (the centre and five negatives, none equal to the
    centre: the graph default's usual case), on the tables directly: the rows are read in place (no
    gather into L1 buffers: nothing is written to the tables before the window's end, so they read
    as hogbatch's copies do), each context's six scores in one pass over d (six_scores), each
    context's input step dIn[c] = sum_o g[c, o] row_o in one pass that also adds its share
    g[c, o] * context to the six output steps St[o]; then the steps are added to the tables in
    hogbatch's order. The same values as hogbatch up to float32 summation order in the scores; the
    loss only when want_loss (else 0). Returns the loss."""
    dim = W_in.shape[1]
    r0 = outs[0]
    r1 = outs[1]
    r2 = outs[2]
    r3 = outs[3]
    r4 = outs[4]
    r5 = outs[5]
    loss = 0.0
    for c in range(B):
        s0, s1, s2, s3, s4, s5 = six_scores(W_in, W_out, ctx[c], r0, r1, r2, r3, r4, r5)
        g[c, 0] = pair_scale(s0, True, lr, sig_tab)
        g[c, 1] = pair_scale(s1, False, lr, sig_tab)
        g[c, 2] = pair_scale(s2, False, lr, sig_tab)
        g[c, 3] = pair_scale(s3, False, lr, sig_tab)
        g[c, 4] = pair_scale(s4, False, lr, sig_tab)
        g[c, 5] = pair_scale(s5, False, lr, sig_tab)
        if want_loss:
            loss += (pair_loss(s0, True, logsig_tab) + pair_loss(s1, False, logsig_tab)
                     + pair_loss(s2, False, logsig_tab) + pair_loss(s3, False, logsig_tab)
                     + pair_loss(s4, False, logsig_tab) + pair_loss(s5, False, logsig_tab))
    for c in range(B):
        crow = ctx[c]
        g0 = g[c, 0]
        g1 = g[c, 1]
        g2 = g[c, 2]
        g3 = g[c, 3]
        g4 = g[c, 4]
        g5 = g[c, 5]
        if c == 0:
            for d in range(dim):
                x = W_in[crow, d]
                o0 = W_out[r0, d]
                o1 = W_out[r1, d]
                o2 = W_out[r2, d]
                o3 = W_out[r3, d]
                o4 = W_out[r4, d]
                o5 = W_out[r5, d]
                dIn[c, d] = g0 * o0 + g1 * o1 + g2 * o2 + g3 * o3 + g4 * o4 + g5 * o5
                St[0, d] = g0 * x
                St[1, d] = g1 * x
                St[2, d] = g2 * x
                St[3, d] = g3 * x
                St[4, d] = g4 * x
                St[5, d] = g5 * x
        else:
            for d in range(dim):
                x = W_in[crow, d]
                o0 = W_out[r0, d]
                o1 = W_out[r1, d]
                o2 = W_out[r2, d]
                o3 = W_out[r3, d]
                o4 = W_out[r4, d]
                o5 = W_out[r5, d]
                dIn[c, d] = g0 * o0 + g1 * o1 + g2 * o2 + g3 * o3 + g4 * o4 + g5 * o5
                St[0, d] += g0 * x
                St[1, d] += g1 * x
                St[2, d] += g2 * x
                St[3, d] += g3 * x
                St[4, d] += g4 * x
                St[5, d] += g5 * x
    for o in range(6):
        orow = outs[o]
        for d in range(dim):
            W_out[orow, d] += St[o, d]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            W_in[crow, d] += dIn[c, d]
    return loss


@nb.njit(inline="always")
def window_sentence(W_in, W_out, buf, pos, n, draws, outs, k1, ctx, Cb, Ob, g, dIn, lr0, min_lr, pos_base, work_total,
                    sig_tab, logsig_tab, want_loss):
    """The shared-negative windows of one sentence (the graph default) from window_draws's draws,
    each window prefetching the next one's rows while it trains: the same steps as window_contexts
    + draw_negatives + hogbatch centre by centre, with the random row reads of the next window
    overlapped with this window's arithmetic (issue 20, sixth pass: ~20 % more tokens per
    CPU-second at one thread). A window of six outputs (five negatives, none equal to the centre)
    takes six_window's fused step (eighth pass; the same values up to float32 summation order),
    any other hogbatch's. The loss is summed only when want_loss (else 0; six_window's windows).
    Returns (loss, pairs)."""
    loss = 0.0
    pairs = 0
    if n > 0:
        prefetch_window(W_in, W_out, buf, n, 0, draws, outs, k1)
    for i in range(n):
        nout = draws[n + i]
        if nout == 0:
            continue
        if i + 1 < n:
            prefetch_window(W_in, W_out, buf, n, i + 1, draws, outs, k1)
        B = 0
        for j in range(max(0, i - draws[i]), min(n, i + draws[i] + 1)):
            if j != i:
                ctx[B] = buf[j]
                B += 1
        lr = linear_lr(lr0, min_lr, pos_base + pos[i], work_total)
        if nout == 6:
            loss += six_window(W_in, W_out, ctx, B, outs[i * k1:], Ob, dIn, g, lr, sig_tab, logsig_tab, want_loss)
        else:
            dl = hogbatch(W_in, W_out, ctx, B, outs[i * k1:], nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab)
            loss += dl if want_loss else 0.0
        pairs += B
    return loss, pairs


@nb.njit(inline="always")
def pair_scores(W_out, Cb, negs, base, negatives, center, g, lr, sig_tab, logsig_tab):
    """The scores of one pair's negatives negs[base:base+negatives] against the context row Cb, two
    rows per pass over d (half the loops, their reductions interleaved); g[o] = the step scale, 0 for
    a draw equal to the centre (skipped, as in word2vec). Returns their loss."""
    dim = Cb.shape[0]
    loss = 0.0
    o = 0
    while o + 1 < negatives:
        ra = negs[base + o]
        rb = negs[base + o + 1]
        sa = np.float32(0.0)
        sb = np.float32(0.0)
        for d in range(dim):
            sa += Cb[d] * W_out[ra, d]
            sb += Cb[d] * W_out[rb, d]
        dla, ga = pair_grad(sa, False, lr, sig_tab, logsig_tab)
        dlb, gb = pair_grad(sb, False, lr, sig_tab, logsig_tab)
        g[o] = 0.0 if ra == center else ga
        g[o + 1] = 0.0 if rb == center else gb
        loss += (0.0 if ra == center else dla) + (0.0 if rb == center else dlb)
        o += 2
    if o < negatives:
        ra = negs[base + o]
        sa = np.float32(0.0)
        for d in range(dim):
            sa += Cb[d] * W_out[ra, d]
        dla, ga = pair_grad(sa, False, lr, sig_tab, logsig_tab)
        g[o] = 0.0 if ra == center else ga
        loss += 0.0 if ra == center else dla
    return loss


@nb.njit(inline="always")
def pair_steps(W_out, Cb, dIn, negs, base, negatives, g):
    """One pair's negative steps, two rows per pass over d: dIn += g[o] * row (as read), then
    row += g[o] * Cb. Two equal draws go one after the other (the second reads the first's step,
    word2vec's order); a zero step (a draw equal to the centre) changes nothing."""
    dim = Cb.shape[0]
    o = 0
    while o + 1 < negatives:
        ra = negs[base + o]
        rb = negs[base + o + 1]
        ga = np.float32(g[o])
        gb = np.float32(g[o + 1])
        if ra == rb:
            for d in range(dim):
                dIn[d] += ga * W_out[ra, d]
                W_out[ra, d] += ga * Cb[d]
            for d in range(dim):
                dIn[d] += gb * W_out[ra, d]
                W_out[ra, d] += gb * Cb[d]
        else:
            for d in range(dim):
                wa = W_out[ra, d]
                wb = W_out[rb, d]
                dIn[d] += ga * wa + gb * wb
                W_out[ra, d] = wa + ga * Cb[d]
                W_out[rb, d] = wb + gb * Cb[d]
        o += 2
    if o < negatives:
        ra = negs[base + o]
        ga = np.float32(g[o])
        for d in range(dim):
            dIn[d] += ga * W_out[ra, d]
            W_out[ra, d] += ga * Cb[d]


@nb.njit(inline="always")
def five_rows(negs, base):
    """A pair's five negative rows negs[base:base + 5], as five scalars (five_scores, five_steps)."""
    return negs[base], negs[base + 1], negs[base + 2], negs[base + 3], negs[base + 4]


@nb.njit(inline="always")
def five_scores(W_in, W_out, crow, oc, negs, base):
    """The six scores of one pair at negatives=5 in one pass over d: the context row (read from the
    table, not copied) against the centre's buffered output row oc and its five negatives' rows.
    Only loads, so LLVM vectorises it with six independent accumulators and no alias checks."""
    dim = W_in.shape[1]
    r0, r1, r2, r3, r4 = five_rows(negs, base)
    s = np.float32(0.0)
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    s4 = np.float32(0.0)
    for d in range(dim):
        c = W_in[crow, d]
        s += c * oc[d]
        s0 += c * W_out[r0, d]
        s1 += c * W_out[r1, d]
        s2 += c * W_out[r2, d]
        s3 += c * W_out[r3, d]
        s4 += c * W_out[r4, d]
    return s, s0, s1, s2, s3, s4


@nb.njit(inline="always")
def five_distinct(negs, base):
    """True when a pair's five negative draws are five different rows (five_steps's condition)."""
    for a in range(base, base + 4):
        for b in range(a + 1, base + 5):
            if negs[a] == negs[b]:
                return False
    return True


@nb.njit(inline="always")
def five_steps(W_in, W_out, crow, oc, negs, base, g0, g):
    """All steps of one pair at negatives=5 in one pass over d: the context row's step
    g0 * oc + sum_k g[k] * row_k (rows as read), the centre's buffered row oc += g0 * context, each
    negative's row += g[k] * context, the context row += its step. The same values as the pair's
    steps one after the other when the five rows are distinct (five_distinct; otherwise the caller
    steps them in word2vec's order); a zero step (a draw equal to the centre) changes nothing."""
    dim = W_in.shape[1]
    r0, r1, r2, r3, r4 = five_rows(negs, base)
    g1 = np.float32(g[0])
    g2 = np.float32(g[1])
    g3 = np.float32(g[2])
    g4 = np.float32(g[3])
    g5 = np.float32(g[4])
    for d in range(dim):
        c = W_in[crow, d]
        o = oc[d]
        w0 = W_out[r0, d]
        w1 = W_out[r1, d]
        w2 = W_out[r2, d]
        w3 = W_out[r3, d]
        w4 = W_out[r4, d]
        W_in[crow, d] = c + (g0 * o + g1 * w0 + g2 * w1 + g3 * w2 + g4 * w3 + g5 * w4)
        oc[d] = o + g0 * c
        W_out[r0, d] = w0 + g1 * c
        W_out[r1, d] = w1 + g2 * c
        W_out[r2, d] = w2 + g3 * c
        W_out[r3, d] = w3 + g4 * c
        W_out[r4, d] = w4 + g5 * c


@nb.njit(inline="always")
def negative_scale(f, row, center, lr, sig_tab):
    """pair_scale of a negative's score f, or 0 when the draw equals the centre (skipped, as in
    word2vec: a zero step changes nothing)."""
    gg = pair_scale(f, False, lr, sig_tab)
    return np.float32(0.0) if row == center else gg


@nb.njit(inline="always")
def five_loss(s, s0, s1, s2, s3, s4, negs, base, center, logsig_tab):
    """The loss of one pair at negatives=5 from its six scores (a draw equal to the centre adds nothing)."""
    loss = pair_loss(s, True, logsig_tab)
    loss += 0.0 if negs[base] == center else pair_loss(s0, False, logsig_tab)
    loss += 0.0 if negs[base + 1] == center else pair_loss(s1, False, logsig_tab)
    loss += 0.0 if negs[base + 2] == center else pair_loss(s2, False, logsig_tab)
    loss += 0.0 if negs[base + 3] == center else pair_loss(s3, False, logsig_tab)
    loss += 0.0 if negs[base + 4] == center else pair_loss(s4, False, logsig_tab)
    return loss


@nb.njit(inline="always")
def five_pair(W_in, W_out, crow, oc, negs, base, center, g, lr, sig_tab, logsig_tab, want_loss):
    """One pair at negatives=5: its six scores in one pass (five_scores), then, when its five
    draws are distinct rows, all its steps in one more pass (five_steps). Returns (loss, g0, done):
    done False leaves the steps to the caller (a repeated draw: word2vec's order, one after the
    other), with g0 and g[0:5] set. The loss only when want_loss (else 0): it cost ~15 % of the
    kernel's time (seventh pass)."""
    s, s0, s1, s2, s3, s4 = five_scores(W_in, W_out, crow, oc, negs, base)
    g0 = np.float32(pair_scale(s, True, lr, sig_tab))
    g[0] = negative_scale(s0, negs[base], center, lr, sig_tab)
    g[1] = negative_scale(s1, negs[base + 1], center, lr, sig_tab)
    g[2] = negative_scale(s2, negs[base + 2], center, lr, sig_tab)
    g[3] = negative_scale(s3, negs[base + 3], center, lr, sig_tab)
    g[4] = negative_scale(s4, negs[base + 4], center, lr, sig_tab)
    loss = five_loss(s, s0, s1, s2, s3, s4, negs, base, center, logsig_tab) if want_loss else 0.0
    if five_distinct(negs, base):
        five_steps(W_in, W_out, crow, oc, negs, base, g0, g)
        return loss, g0, True
    return loss, g0, False


@nb.njit(inline="always")
def pair_window(W_in, W_out, ctx, B, center, state, negatives, noise, negs, Cb, oc, oc0, dIn, g, lr, sig_tab,
                logsig_tab, want_loss):
    """One centre in word2vec's (gensim's) order: context after context, each (context, centre)
    pair with its own `negatives` draws, every step applied before the next pair reads the rows.

    Why a kernel of its own (the `shared_negatives=False` scheme): fresh negatives per pair and no
    staleness within the window are what the text benchmark rewards (docs/skipgram.md, issue 20);
    done in one fused pass per pair it keeps most of the shared kernel's speed. The centre's output
    row lives in the local buffer oc for the whole window (oc0: as read; the difference is added
    back at the end, Hogwild), the negatives' rows are stepped in the table, the context row is
    copied to Cb first (its step goes to dIn, then to W_in). Scores of one pair are taken before
    any of its steps (word2vec takes them one negative after the other; they differ only when a
    pair draws the same negative twice).

    Speed (issue 20, third pass): the window's B x `negatives` draws are taken first into negs
    (at least 2 * window * negatives long; the same stream order as drawing them pair by pair, so
    the result is unchanged), and while pair c runs, the rows of pair c + 1 (its context's input
    row, its negatives' output rows) are prefetched: the kernel waited on those random row reads
    from tables far larger than L2. A negative equal to the centre is skipped, as before.

    Fourth pass: a pair's negatives are scored and stepped two rows per pass over d
    (pair_scores, pair_steps): at d=100 each pass is one 64-lane vector iteration, a 32-lane
    epilogue, 4 scalar lanes and a reduction, so the per-loop overhead, not the arithmetic, set
    the time; half the loops, ~6-10 % more tokens per CPU-second (docs/skipgram.md). The same
    steps as before up to float32 summation order.

    Seventh pass: at negatives=5 (the default) a pair takes two passes over d instead of nine
    (five_pair), the draws come from one packed table (noise_pick), rows are prefetched two pairs
    ahead, and the loss is summed only when want_loss (the caller asks for it on a sample of the
    sentences). Returns (state, loss); at negatives=5 the loss is 0 unless want_loss."""
    dim = W_in.shape[1]
    loss = 0.0
    for k in range(B * negatives):
        state, r = splitmix64(state)
        negs[k] = noise_pick(r, noise)
    prefetch_pair(W_in, W_out, ctx[0], negs, 0, negatives)
    if B > 1:
        prefetch_pair(W_in, W_out, ctx[1], negs, negatives, negatives)
    for d in range(dim):
        oc[d] = W_out[center, d]
        oc0[d] = oc[d]
    for c in range(B):
        if c + 2 < B:
            prefetch_pair(W_in, W_out, ctx[c + 2], negs, (c + 2) * negatives, negatives)
        crow = ctx[c]
        base = c * negatives
        if negatives == 5:
            dl, g0, done = five_pair(W_in, W_out, crow, oc, negs, base, center, g, lr, sig_tab, logsig_tab,
                                     want_loss)
            loss += dl
            if done:
                continue
            for d in range(dim):
                Cb[d] = W_in[crow, d]
        else:
            s = np.float32(0.0)
            for d in range(dim):
                Cb[d] = W_in[crow, d]
                s += Cb[d] * oc[d]
            dl, g0 = pair_grad(s, True, lr, sig_tab, logsig_tab)
            loss += dl
            loss += pair_scores(W_out, Cb, negs, base, negatives, center, g, lr, sig_tab, logsig_tab)
            g0 = np.float32(g0)
        for d in range(dim):
            dIn[d] = g0 * oc[d]
            oc[d] += g0 * Cb[d]
        pair_steps(W_out, Cb, dIn, negs, base, negatives, g)
        for d in range(dim):
            W_in[crow, d] += dIn[d]
    for d in range(dim):
        W_out[center, d] += oc[d] - oc0[d]
    return state, loss


# ----------------------------------------------------------------------------- driver helpers (Python)

def sentence_chunks(offsets: np.ndarray, target_tokens: int) -> list[tuple[int, int]]:
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


def numba_threads(threads: int) -> int:
    """The thread count a kernel runs with: every numba thread (NUMBA_NUM_THREADS) for threads <= 0,
    else at most `threads` (numba cannot start more threads than it was configured with; the
    kernels run by kernel_threads.run_on_threads keep the same cap)."""
    max_threads = nb.config.NUMBA_NUM_THREADS
    return max_threads if threads <= 0 else min(int(threads), max_threads)


def text_blocks(offsets: np.ndarray, block_tokens: int) -> np.ndarray:
    """The blocks the threads of skipgram._window_blocks and _pair_blocks take one at a time: consecutive runs of
    sentences of about block_tokens positions each, as the sentence index where each block starts
    plus S at the end (block k = sentences [starts[k], starts[k + 1]))."""
    S = len(offsets) - 1
    return np.array([lo for lo, _ in sentence_chunks(offsets, block_tokens)] + [S], np.int64)


def block_segments(offsets: np.ndarray, starts: np.ndarray, segment_tokens: int) -> list[tuple[int, int]]:
    """Consecutive runs of blocks (b_lo, b_hi) of about segment_tokens positions each: one kernel
    launch each (between launches the driver reports progress)."""
    return sentence_chunks(offsets[starts], segment_tokens)


def blocks_per_chunk(nthreads: int, nsent: int) -> int:
    """Sentence blocks of one chunk (a kernel's prange, or dealt round-robin by run_on_threads): a few
    per thread so that uneven sentence lengths balance; one thread gets one block, so sentences run
    in stream order (reproducible)."""
    return 1 if nthreads == 1 else max(1, min(nsent, 4 * nthreads))


@contextmanager
def using_numba_threads(nthreads: int):
    """Run the kernels of this block on `nthreads` numba threads, then give the caller's count back
    (the setting is per thread and outlives the call otherwise)."""
    prev = nb.get_num_threads()
    nb.set_num_threads(nthreads)
    try:
        yield
    finally:
        nb.set_num_threads(prev)
