"""Word co-occurrence graph of a token stream: the graph whose structure codes a vocabulary's
learned `compose` table uses (embed-corpus -p train.table=compose, issue 8).

Two words co-occur when they sit at most `window` positions apart inside one sentence (the fixed
window, not word2vec's sampled one; the same sentence boundaries the trainer sees). The graph is
undirected and symmetric: entry (a, b) = entry (b, a) = the number of such position pairs; a word
next to itself adds nothing (no self-loops).

Counting is streamed: the sentences are cut into chunks of about `chunk_pairs` candidate pairs; a
numba kernel writes each chunk's pairs as int64 keys a * V + b (a < b), np.unique reduces them to
(key, count), and the running (key, count) arrays absorb each chunk. Memory is then the number of
DISTINCT pairs (plus one chunk), not window x tokens. Cap: when the distinct pairs exceed
`max_pairs`, the pairs seen once so far are dropped (on text those are mostly chance neighbours:
on Brown, 15,173 words at min_count 5, window 5, they are 69.6 % of the 1,242,744 distinct pairs
but 18.9 % of the 4.57 M position pairs), then, if still over, the lowest counts. The cap is
applied while streaming, so a pair dropped early loses what it had counted (counts never exceed
the true ones); below the cap the counts are exact. `top_k` > 0 additionally keeps only each
word's top_k heaviest neighbours (a pair stays when either side keeps it, so the graph stays
symmetric). What was dropped is reported in the info dict.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _pair_count(offsets, s_lo, s_hi, window):
    total = 0
    for s in range(s_lo, s_hi):
        L = offsets[s + 1] - offsets[s]
        for p in range(L):
            total += min(window, L - 1 - p)
    return total


@nb.njit(cache=True)
def _pair_keys(tokens, offsets, s_lo, s_hi, window, V, out):
    """Keys a * V + b (a < b) of every co-occurring position pair of sentences s_lo..s_hi-1."""
    k = 0
    for s in range(s_lo, s_hi):
        lo = offsets[s]
        hi = offsets[s + 1]
        for p in range(lo, hi):
            a = tokens[p]
            if a < 0:
                continue
            for q in range(p + 1, min(hi, p + window + 1)):
                b = tokens[q]
                if b < 0 or b == a:
                    continue
                if a < b:
                    out[k] = np.int64(a) * V + b
                else:
                    out[k] = np.int64(b) * V + a
                k += 1
    return k


def _merge(keys: np.ndarray, counts: np.ndarray, k2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum two sorted (key, count) sets."""
    if len(keys) == 0:
        return k2, c2
    allk = np.concatenate([keys, k2])
    u, inv = np.unique(allk, return_inverse=True)
    return u, np.bincount(inv, weights=np.concatenate([counts, c2]), minlength=len(u)).astype(np.int64)


def count_pairs(parts, vocab_size: int, window: int, *, chunk_pairs: int = 4_000_000,
                max_pairs: int = 50_000_000) -> tuple[np.ndarray, np.ndarray, dict]:
    """Distinct co-occurring pairs of the (tokens, offsets) shards `parts` (streamed, shard by shard).

    Returns (keys int64 a * V + b with a < b, sorted; counts int64; info)."""
    V = int(vocab_size)
    keys = np.zeros(0, np.int64)
    counts = np.zeros(0, np.int64)
    info = {"window": int(window), "position_pairs": 0, "dropped_singletons": 0, "dropped_low": 0}
    for tokens, offsets in parts:
        tokens = np.ascontiguousarray(tokens, np.int32)
        offsets = np.ascontiguousarray(offsets, np.int64)
        S = len(offsets) - 1
        s = 0
        while s < S:
            # grow the chunk sentence by sentence up to chunk_pairs candidate pairs (>= 1 sentence)
            e, n = s, 0
            while e < S and (e == s or n + (offsets[e + 1] - offsets[e]) * window <= chunk_pairs):
                n += int(offsets[e + 1] - offsets[e]) * window
                e += 1
            buf = np.empty(_pair_count(offsets, s, e, int(window)), np.int64)
            m = _pair_keys(tokens, offsets, s, e, int(window), V, buf)
            info["position_pairs"] += int(m)
            k2, c2 = np.unique(buf[:m], return_counts=True)
            keys, counts = _merge(keys, counts, k2, c2.astype(np.int64))
            if len(keys) > max_pairs:
                keys, counts = _cap(keys, counts, max_pairs, info)
            s = e
    return keys, counts, info


def _cap(keys, counts, max_pairs, info):
    once = counts <= 1
    if once.any():
        info["dropped_singletons"] += int(once.sum())
        keys, counts = keys[~once], counts[~once]
    if len(keys) > max_pairs:
        keep = np.sort(np.argsort(-counts, kind="stable")[:max_pairs])
        info["dropped_low"] += len(keys) - len(keep)
        keys, counts = keys[keep], counts[keep]
    return keys, counts


def cooccurrence_csr(parts, vocab_size: int, window: int, *, top_k: int = 0, chunk_pairs: int = 4_000_000,
                     max_pairs: int = 50_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Symmetric co-occurrence CSR (indptr int64[V + 1], indices int32 sorted per row, weights
    float32 = pair counts, info) of the shards `parts` = [(tokens int32, offsets int64), ...]."""
    V = int(vocab_size)
    keys, counts, info = count_pairs(parts, V, window, chunk_pairs=chunk_pairs, max_pairs=max_pairs)
    a = (keys // V).astype(np.int64)
    b = (keys % V).astype(np.int64)
    if top_k > 0 and len(keys):
        keep = _top_k_mask(a, b, counts, V, top_k)
        info["dropped_top_k"] = int((~keep).sum())
        a, b, counts = a[keep], b[keep], counts[keep]
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    w = np.concatenate([counts, counts]).astype(np.float32)
    order = np.lexsort((dst, src))
    src, dst, w = src[order], dst[order], w[order]
    indptr = np.zeros(V + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=V), out=indptr[1:])
    info.update(pairs=int(len(a)), edges=int(len(dst)), max_pairs=int(max_pairs), top_k=int(top_k))
    return indptr, dst.astype(np.int32), w, info


def _top_k_mask(a, b, c, V, k):
    """Pairs among the k heaviest neighbours of a or of b."""
    keep = np.zeros(len(a), bool)
    for side in (a, b):
        order = np.lexsort((-c, side))          # by word, heaviest first
        s = side[order]
        first = np.searchsorted(s, s, side="left")
        rank = np.arange(len(s)) - first
        keep[order[rank < k]] = True
    return keep
