"""Learnable compressed table by the hashing trick: K << n rows trained directly by skip-gram.

Every node id is hashed to one of K buckets, the walks are rewritten in bucket ids and the SGNS
kernel trains a K-row table; a node's vector is its bucket's row. Colliding nodes share a row:
that is the hashing trick itself (Weinberger et al. 2009; as in hashed embedding tables of
recommender models), not an approximation of it. Stored per row: the 4-byte bucket index (it is
also recomputable from the row position and the seed); the K x d table goes to the codebook
sibling table. Quotient-remainder compositional tables need two summed tables inside the kernel
and are not implemented.

The hash is splitmix64 of (row position + seed), taken mod K: a fixed function of the dense node
index, so any worker can compute the bucket of its own row partition.
"""
from __future__ import annotations

import numpy as np

from embedlake.config import TrainConfig, WalkConfig

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def hash_buckets(rows: np.ndarray, buckets: int, seed: int = 0) -> np.ndarray:
    """int32 bucket in 0..buckets-1 of each dense row index (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = np.asarray(rows, dtype=np.uint64) + np.uint64(seed) * _G + _G
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(buckets)).astype(np.int32)


def train_hashed(csr: tuple, buckets: int, walk: WalkConfig, train: TrainConfig, method: str = "deepwalk",
                 seed: int = 0, threads: int = 0, progress=None) -> tuple[np.ndarray, dict]:
    """Walk the graph like the source run did, hash the walk tokens, train a `buckets`-row table.

    csr = (indptr, indices, weights, directed); walk / train: the source run's config sections.
    Returns (table float32 [buckets, dim], training stats). progress: train_sgns's (done, total, loss) callback.
    """
    from embedlake.workers.train.skipgram import train_sgns
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    indptr, indices, weights, _ = csr
    n = len(indptr) - 1
    walks = random_walks(indptr, indices, weights, np.arange(n, dtype=np.int64), walk.walks_per_node,
                         walk.length, walk.seed, p=walk.p, q=walk.q,
                         mode="node2vec" if method == "node2vec" else "deepwalk", threads=threads)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    rows = hash_buckets(np.arange(n), buckets, seed)
    tok = np.where(tokens >= 0, rows[np.maximum(tokens, 0)], -1).astype(np.int32)
    W, _, stats = train_sgns(tok, offsets, buckets, dim=train.dim, window=train.window,
                             negatives=train.negatives, ns_exponent=train.ns_exponent, epochs=train.epochs,
                             lr=train.lr, min_lr=train.min_lr, sample=train.sample, seed=train.seed,
                             threads=threads, progress=progress)
    return np.ascontiguousarray(W, dtype=np.float32), stats


def encode_hash(row_offset: int, n: int, params: dict) -> dict[str, np.ndarray]:
    r = hash_buckets(np.arange(row_offset, row_offset + n), params["buckets"], params.get("seed", 0))
    return {"code": np.ascontiguousarray(r.astype("<i4")).view(np.uint8).reshape(n, 4)}


def decode_hash(cols: dict, state: dict) -> np.ndarray:
    r = np.ascontiguousarray(cols["code"]).view("<i4").reshape(-1)
    return state["table"][r]
