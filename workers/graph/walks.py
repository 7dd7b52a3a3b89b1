"""Random-walk engine: DeepWalk (uniform / weighted first order) and node2vec (second order).

Why it looks like this
- One parallel numba driver (`prange` over walks, PecanPy style); every walk owns its output row,
  so threads never share state.
- Determinism: walk k from node v draws from a counter-based generator (splitmix64) seeded by a
  hash of (seed, v, k). The output of one walk therefore does not depend on the thread count, on
  the order of `starts`, nor on how start nodes are split into partitions / Ray tasks.
- Memory O(edges): weighted first order uses per-node alias tables (8 bytes per arc: a 32-bit
  keep threshold and a 32-bit local alias packed in one uint64); node2vec uses rejection sampling (KnightKing) with the first
  order distribution as proposal, never per-edge (second order) alias tables.
- node2vec rejection: the target for the step t -> v -> x is w(v,x) * a(x) with a = 1/p (x == t),
  1 (x adjacent to t), 1/q (otherwise). The envelope is M = max(1, 1/q); when 1/p > M the return
  edge is an *outlier*: its excess mass w(v,t) * (1/p - M) is a separate box sampled directly, so
  a small p does not make almost every proposal fail. Adjacency t~x is tested by binary search in
  the sorted neighbour list of t, and only when the acceptance coin falls between the two
  possible acceptance levels (lazy test), which skips many searches.
- Dead ends (out-degree 0, directed graphs) end a walk; the rest of its row is -1. An isolated
  start node yields a walk of length 1.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from embedlake.config import WalkConfig
from embedlake.workers.kernel_inputs import read_only

__all__ = ["random_walks", "walk_steps", "walks_to_sentences", "build_alias", "walk_rng_key"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K1 = np.uint64(0xD6E8FEB86659FD93)
_K2 = np.uint64(0xCA5A826395121157)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
S32 = np.uint64(32)
_S11 = np.uint64(11)
LO32 = np.uint64(0xFFFFFFFF)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

MODES = ("deepwalk", "node2vec")


# ---------------------------------------------------------------------------------------------
# counter-based RNG (splitmix64). State is a uint64 carried in local variables: `s += GOLDEN;
# r = mix(s)` is one draw. Helpers return the new state so loops stay register-only.
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def walk_key(seed, v, k):
    """Initial generator state of walk k from node v (a hash of (seed, v, k))."""
    h = mix(np.uint64(seed) ^ _K1)
    h = mix(h ^ (np.uint64(v) * _K2 + GOLDEN))
    h = mix(h ^ (np.uint64(k) * _M1 + _K1))
    return h


@njit(cache=True, inline="always")
def randint(r, d):
    """Uniform int in [0, d) from the high 32 bits of r (Lemire; d < 2**32, bias < d / 2**32)."""
    return np.int64(((r >> S32) * np.uint64(d)) >> S32)


@njit(cache=True, inline="always")
def uniform(r):
    """Uniform float64 in [0, 1) from the high 53 bits of r."""
    return np.float64(r >> _S11) * _INV53


@njit(cache=True, inline="always")
def find_sorted(indices, lo, hi, x):
    """Position of x in the sorted slice indices[lo:hi], or -1. Plain binary search with early
    exit: measured faster here than a branch-free halving (which always runs log2(d) levels)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        val = indices[mid]
        if val < x:
            lo = mid + 1
        elif val > x:
            hi = mid
        else:
            return mid
    return -1


# ---------------------------------------------------------------------------------------------
# per-node alias tables (weighted first order; proposal of weighted node2vec)
# ---------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _build_alias(indptr, indices, weights, chunk):
    n = indptr.shape[0] - 1
    m = weights.shape[0]
    table = np.empty(m, dtype=np.uint64)
    rowsum = np.zeros(n, dtype=np.float64)
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        a = c * chunk
        b = min(n, a + chunk)
        maxd = 0
        for v in range(a, b):
            maxd = max(maxd, indptr[v + 1] - indptr[v])
        scaled = np.empty(maxd, dtype=np.float64)
        prob = np.empty(maxd, dtype=np.float64)
        alias = np.empty(maxd, dtype=np.int64)
        small = np.empty(maxd, dtype=np.int64)
        large = np.empty(maxd, dtype=np.int64)
        for v in range(a, b):
            lo = indptr[v]
            d = indptr[v + 1] - lo
            if d == 0:
                continue
            tot = 0.0
            for j in range(d):
                tot += weights[lo + j]
            rowsum[v] = tot
            ns = 0
            nl = 0
            for j in range(d):
                sc = weights[lo + j] * d / tot
                scaled[j] = sc
                prob[j] = 1.0
                alias[j] = j
                if sc < 1.0:
                    small[ns] = j
                    ns += 1
                else:
                    large[nl] = j
                    nl += 1
            while ns > 0 and nl > 0:       # Vose; leftovers (rounding) keep prob 1
                ns -= 1
                sj = small[ns]
                lj = large[nl - 1]
                prob[sj] = scaled[sj]
                alias[sj] = lj
                scaled[lj] = (scaled[lj] + scaled[sj]) - 1.0
                if scaled[lj] < 1.0:
                    nl -= 1
                    small[ns] = lj
                    ns += 1
            for j in range(d):
                thr = prob[j] * 4294967296.0
                t32 = np.uint64(4294967295) if thr >= 4294967295.0 else np.uint64(thr)
                table[lo + j] = (t32 << S32) | np.uint64(indices[lo + alias[j]])
    return table, rowsum


def build_alias(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, chunk: int = 4096):
    """Per-node alias tables (Vose) for weighted first-order steps.

    Returns (table uint64[m], rowsum float64[n]). Entry lo + j of row v packs the keep threshold
    of slot j as a 32-bit fraction (high half) and the *node id* of its alias (low half). A draw
    loads table[lo + j] and indices[lo + j] side by side and selects: the chain of dependent
    cache misses is as short as for an unweighted step. A slot with probability 1 aliases its
    own node. Build once per graph and pass to `random_walks(alias=...)` when several calls
    (partitions) share one graph.
    """
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if weights.size and not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError("walk weights must be finite and > 0")
    if weights.shape != indices.shape:
        raise ValueError("weights must have the shape of indices")
    return _build_alias(*read_only(indptr, indices, weights), int(chunk))


# ---------------------------------------------------------------------------------------------
# step kernels
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def first_order_step(indptr, indices, weights, table, weighted, need_w, v, s):
    """One first-order step from v: (next node or -1 at a dead end, weight of the arc taken,
    new rng state)."""
    lo = indptr[v]
    d = indptr[v + 1] - lo
    if d == 0:
        return np.int64(-1), 0.0, s
    s += GOLDEN
    r = mix(s)
    j = randint(r, d)
    x = np.int64(indices[lo + j])
    if weighted:
        e = table[lo + j]
        keep = (r & LO32) < (e >> S32)     # low half of the same draw is the alias coin
        if need_w:
            if keep:
                return x, np.float64(weights[lo + j]), s
            x = np.int64(e & LO32)
            return x, np.float64(weights[find_sorted(indices, lo, lo + d, x)]), s
        x = x if keep else np.int64(e & LO32)
    return x, 1.0, s


@njit(cache=True, inline="always")
def node2vec_proposal(indices, table, weighted, lo, d, s):
    """One proposal of node2vec's rejection loop from the row at `lo` of out-degree d: (x, its slot
    j or -1 when the alias was taken, the acceptance coin u, new rng state). The sharded engine
    draws through the same function, so both engines stay bit-identical."""
    s += GOLDEN
    r = mix(s)
    j = randint(r, d)
    x = np.int64(indices[lo + j])
    if weighted:
        e = table[lo + j]
        if (r & LO32) >= (e >> S32):
            x = np.int64(e & LO32)
            j = -1
    s += GOLDEN
    u = uniform(mix(s))
    return x, j, u, s


@njit(cache=True, inline="always")
def _second_order(indptr, indices, weights, table, rowsum, weighted, symmetric, need_w, t, v, w_tv, s,
                  inv_p, inv_q, env, inv_env):
    """One node2vec step t -> v -> x by rejection sampling with the return edge as an outlier.
    Returns (x or -1 at a dead end, weight of the arc v -> x, new rng state)."""
    lo = indptr[v]
    hi = indptr[v + 1]
    d = hi - lo
    if d == 0:
        return np.int64(-1), 0.0, s
    # the outlier box: excess mass of the return edge above the envelope. In a symmetric graph
    # the arc v -> t exists and weighs w(t, v), known from the previous step: no search.
    extra = 0.0
    w_vt = 0.0
    if inv_p > env:
        if symmetric:
            w_vt = w_tv
        else:
            pos = find_sorted(indices, lo, hi, t)
            if pos >= 0:
                w_vt = np.float64(weights[pos]) if weighted else 1.0
        extra = w_vt * (inv_p - env)
    total_w = rowsum[v] if weighted else np.float64(d)
    box = env * total_w + extra
    ret_acc = min(inv_p, env) * inv_env   # acceptance of a proposed return edge
    adj_acc = inv_env                     # x adjacent to t
    far_acc = inv_q * inv_env             # x at distance 2 from t
    lo_acc = min(adj_acc, far_acc)
    tlo = indptr[t]
    thi = indptr[t + 1]
    while True:
        if extra > 0.0:
            s += GOLDEN
            if uniform(mix(s)) * box < extra:
                return np.int64(t), w_tv, s
        x, j, u, s = node2vec_proposal(indices, table, weighted, lo, d, s)
        if x == t:
            if u < ret_acc:
                return x, w_tv, s   # need_w implies symmetric: w(v, t) = w(t, v)
            continue
        if not (u < lo_acc):     # else accepted whatever the adjacency: skip the search
            if adj_acc == far_acc:
                continue
            if find_sorted(indices, tlo, thi, x) >= 0:
                if not (u < adj_acc):
                    continue
            elif not (u < far_acc):
                continue
        # accepted; the arc weight is only needed to seed the next return box
        if not need_w:
            return x, 1.0, s
        if j < 0:
            j = find_sorted(indices, lo, hi, x) - lo
        return x, np.float64(weights[lo + j]), s


@njit(cache=True, parallel=True)
def _walk_kernel(indptr, indices, weights, table, rowsum, weighted, second, symmetric, starts,
                 walks_per_node, length, seed, walk_offset, inv_p, inv_q, group):
    """Walks advance in lockstep groups of `group` rows: one step of each walk in turn, so the
    cache misses of independent walks overlap (memory-level parallelism; ThunderRW-style step
    interleaving). Big graphs are latency bound, so this is worth 3-5x on first-order walks.
    Each walk keeps its own generator state: the output does not depend on `group`."""
    ns = starts.shape[0]
    nw = walks_per_node * ns
    out = np.empty((nw, length), dtype=np.int32)
    env = max(1.0, inv_q)
    inv_env = 1.0 / env
    need_w = second and symmetric and weighted   # arc weight only feeds the next return box
    ngroups = (nw + group - 1) // group
    for gi in prange(ngroups):
        r0 = gi * group
        g = min(nw, r0 + group) - r0
        cur = np.empty(g, np.int64)
        prev = np.empty(g, np.int64)
        wlast = np.empty(g, np.float64)
        state = np.empty(g, np.uint64)
        for a in range(g):
            r = r0 + a
            k = r // ns
            v = starts[r - k * ns]
            state[a] = walk_key(seed, v, k + walk_offset)
            out[r, 0] = v
            cur[a] = v
            prev[a] = -1
        alive = g
        step = 1
        while step < length and alive > 0:
            for a in range(g):
                c = cur[a]
                if c < 0:
                    out[r0 + a, step] = -1
                    continue
                s = state[a]
                if second and prev[a] >= 0:
                    nxt, wa, s = _second_order(indptr, indices, weights, table, rowsum, weighted,
                                               symmetric, need_w, prev[a], c, wlast[a], s, inv_p, inv_q, env,
                                               inv_env)
                else:
                    nxt, wa, s = first_order_step(indptr, indices, weights, table, weighted, need_w, c, s)
                state[a] = s
                wlast[a] = wa
                out[r0 + a, step] = nxt
                prev[a] = c
                cur[a] = nxt
                if nxt < 0:
                    alive -= 1
            step += 1
        while step < length:   # every walk of the group has ended
            for a in range(g):
                out[r0 + a, step] = -1
            step += 1
    return out


def _check_graph(indptr, indices, weights):
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError("indptr must be int64[n+1] with indptr[0] == 0 and indptr[-1] == len(indices)")
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        if weights.shape != indices.shape:
            raise ValueError("weights must have the shape of indices")
    return indptr, indices, weights


def random_walks(indptr, indices, weights, starts, walks_per_node, length, seed,
                 p=1.0, q=1.0, mode="deepwalk", threads=0, *, walk_offset=0, alias=None,
                 symmetric=False, group=32) -> np.ndarray:
    """Random walks from every node in `starts`, `walks_per_node` times each.

    indptr int64[n+1], indices int32[m] (sorted within each row), weights float32[m] or None.
    starts: global node ids (one partition). mode: "deepwalk" (uniform when weights is None, else
    weighted first order) or "node2vec" (second order with return p and in-out q; p == q == 1 is
    exactly first order and takes that path).

    Returns int32 [walks_per_node * len(starts), length]; row k * len(starts) + i is walk
    k + walk_offset from starts[i]; a walk that hits a dead end is padded with -1.
    Walk k from v depends only on (seed, v, k): identical for any thread count and partitioning.

    walk_offset: first walk index k (lets a caller split the walks of one node over calls).
    alias: (table, rowsum) from `build_alias`, to reuse across calls on a weighted graph.
    threads: numba threads for this call (0 = all); the previous setting is restored.
    symmetric: promise that every arc u->v has its reverse v->u with the same weight (undirected
    CSR from `build_csr(directed=False)`). node2vec with p < min(1, q) then knows the return
    arc and its weight without a search. Output is identical either way; True on a graph that
    is not symmetric gives wrong probabilities.
    group: walks advanced in lockstep per thread (overlaps cache misses); output-neutral.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (p > 0 and q > 0 and np.isfinite(p) and np.isfinite(q)):
        raise ValueError("p and q must be finite and > 0")
    walks_per_node = int(walks_per_node)
    length = int(length)
    if walks_per_node < 0 or length < 1:
        raise ValueError("walks_per_node must be >= 0 and length >= 1")
    indptr, indices, weights = _check_graph(indptr, indices, weights)
    n = indptr.size - 1
    starts = np.ascontiguousarray(starts, dtype=np.int64).ravel()
    if starts.size and (starts.min() < 0 or starts.max() >= n):
        raise ValueError("start node id out of range")
    weighted = weights is not None
    if weighted:
        table, rowsum = alias if alias is not None else build_alias(indptr, indices, weights)
        if table.shape != indices.shape or rowsum.shape[0] != n:
            raise ValueError("alias tables do not match the graph")
        w = weights
    else:
        table = np.zeros(0, np.uint64)
        rowsum = np.zeros(0, np.float64)
        w = np.zeros(0, np.float32)
    second = mode == "node2vec" and not (p == 1.0 and q == 1.0)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    old = numba.get_num_threads()
    want = numba.config.NUMBA_NUM_THREADS if not threads else min(int(threads), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(want)
    try:
        return _walk_kernel(*read_only(indptr, indices, w, table, rowsum), weighted, second, bool(symmetric),
                            *read_only(starts),
                            walks_per_node, length, np.uint64(seed), np.int64(walk_offset),
                            1.0 / float(p), 1.0 / float(q), max(1, int(group)))
    finally:
        numba.set_num_threads(old)


def walk_rng_key(seed: int, v: int, k: int) -> int:
    """The generator state that walk k from node v starts from (exposed for tests / debugging)."""
    return int(_walk_key_py(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), np.int64(v), np.int64(k)))


@njit(cache=True)
def _walk_key_py(seed, v, k):
    return walk_key(seed, v, k)


# ---------------------------------------------------------------------------------------------
# padded matrix -> token counts / flat sentences
# ---------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _row_lengths(walks):
    nr, L = walks.shape
    lens = np.empty(nr, dtype=np.int64)
    for r in prange(nr):
        n = L
        for j in range(L):
            if walks[r, j] < 0:
                n = j
                break
        lens[r] = n
    return lens


@njit(cache=True, parallel=True)
def _gather(walks, offsets, tokens):
    for r in prange(walks.shape[0]):
        a = offsets[r]
        for j in range(offsets[r + 1] - a):
            tokens[a + j] = walks[r, j]


def walk_steps(walks: np.ndarray) -> int:
    """Number of non-padding tokens (nodes visited, start nodes included)."""
    walks = np.ascontiguousarray(walks)
    if walks.size == 0:
        return 0
    return int(_row_lengths(walks).sum())


def walks_to_sentences(walks: np.ndarray, min_length: int = 1):
    """Padded walk matrix -> (tokens int32[T], offsets int64[R+1]); sentence r is
    tokens[offsets[r]:offsets[r+1]]. Rows shorter than `min_length` are dropped (default keeps
    every walk, including the length-1 walks of isolated nodes)."""
    walks = np.ascontiguousarray(walks, dtype=np.int32)
    if walks.ndim != 2:
        raise ValueError("walks must be a 2-d matrix")
    if walks.shape[0] == 0:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    lens = _row_lengths(walks)
    if min_length > 1:
        keep = lens >= min_length
        walks, lens = np.ascontiguousarray(walks[keep]), lens[keep]
    offsets = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    if walks.shape[0]:
        _gather(walks, offsets, tokens)
    return tokens, offsets


def walks_mb(num_nodes: int, walk_cfg: WalkConfig) -> float:
    """MiB of int32 walks a walk config produces for num_nodes start nodes."""
    return num_nodes * walk_cfg.walks_per_node * walk_cfg.length * 4 / 2**20


def should_stream(num_nodes: int, walk_cfg: WalkConfig) -> bool:
    """walk.stream: always / never, or auto = more than walk.stream_threshold_mb of walks. Streamed
    training holds one round (one walk per node) at a time instead of all walks."""
    if walk_cfg.stream == "always":
        return True
    if walk_cfg.stream == "never":
        return False
    return walks_mb(num_nodes, walk_cfg) > walk_cfg.stream_threshold_mb
