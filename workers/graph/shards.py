"""Graph shards: a graph is S shards by contiguous node range; shard s holds the out-arcs of nodes
[lo, hi) (its CSR rows, weights and node ids) and nothing else.

Why it looks like this
- Node ranges, not hashes: the owner of a node is one `searchsorted` over S + 1 bounds, a shard's
  rows are one slice of the full CSR (so gathering the shards gives the full CSR back bit for bit),
  and the walk, FastRP and training engines keep their row-range kernels.
- Equal node ranges, not arc-balanced ones: the bounds are known from the node count alone, before
  any degree is counted, so parallel ingest can route edges without a pass over all of them.
- A shard travels as the tuple the one-CSR stages already take, `(indptr, indices, weights,
  directed)`, with a *local* indptr (row v - lo) and *global* neighbour ids. For S = 1 the one
  shard is exactly today's CSR tuple.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedlake.workers.graph.csr import CSRGraph

# bytes per stored arc (int32 neighbour + float32 weight) and per node (int64 indptr + int64 id)
ARC_BYTES = {False: 4, True: 8}
NODE_BYTES = 16


@dataclass
class CSRShard:
    """Rows [lo, hi) of a graph of `num_nodes` nodes. indptr is local (int64 [hi - lo + 1], starting at
    0); indices are global node ids (int32, sorted within each row); weights float32 or None."""
    lo: int
    hi: int
    num_nodes: int
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray | None
    directed: bool = False

    @property
    def rows(self) -> int:
        return self.hi - self.lo

    @property
    def num_arcs(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + (self.weights.nbytes if self.weights is not None else 0))

    def as_tuple(self) -> tuple:
        """What travels through the object store (the one-CSR stages' tuple, local indptr)."""
        return (self.indptr, self.indices, self.weights, self.directed)

    @classmethod
    def from_tuple(cls, t: tuple, lo: int, hi: int, num_nodes: int) -> "CSRShard":
        indptr, indices, weights, directed = t
        return cls(int(lo), int(hi), int(num_nodes), indptr, indices, weights, bool(directed))


def shard_bounds(num_nodes: int, shards: int) -> list[tuple[int, int]]:
    """S contiguous node ranges of near-equal size: shard s is [s*n//S, (s+1)*n//S). Every shard
    exists (possibly empty when S > n), so shard s always means the same range for given (n, S)."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    n = int(num_nodes)
    return [(s * n // shards, (s + 1) * n // shards) for s in range(shards)]


def shard_starts(bounds: list[tuple[int, int]]) -> np.ndarray:
    """int64 [S + 1]: lo of every shard, then n. owner(v) = searchsorted(starts, v, 'right') - 1."""
    return np.array([b[0] for b in bounds] + [bounds[-1][1]], dtype=np.int64)


def owner_of(starts: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The shard index of every node in `nodes` (int64 array), given `shard_starts(bounds)`.
    Empty shards own nothing: `side='right'` skips over them.
    Memory: one int64 per node, the result. `nodes` is often a shard's whole int32 `indices`, so
    the boundaries are cast to its type rather than it to int64, and the - 1 is done in place
    (before: four arrays of 8 bytes per arc at once, 300 MB at 20M edges and S = 2)."""
    nodes = np.asarray(nodes)
    if nodes.dtype.kind not in "iu" or (len(starts) and int(starts[-1]) > np.iinfo(nodes.dtype).max):
        nodes = nodes.astype(np.int64)
    out = np.searchsorted(np.asarray(starts).astype(nodes.dtype), nodes, side="right").astype(np.int64, copy=False)
    out -= 1
    return out


def split_csr(csr: CSRGraph, bounds: list[tuple[int, int]]) -> list[CSRShard]:
    """The shards of a full CSR (views where possible; indptr is rebased to start at 0)."""
    out = []
    for lo, hi in bounds:
        a, b = int(csr.indptr[lo]), int(csr.indptr[hi])
        indptr = csr.indptr[lo:hi + 1] - csr.indptr[lo]
        w = None if csr.weights is None else csr.weights[a:b]
        out.append(CSRShard(lo, hi, csr.num_nodes, indptr, csr.indices[a:b], w, csr.directed))
    return out


def gather_csr(shards: list[CSRShard]) -> CSRGraph:
    """The full CSR from all its shards, in order (the inverse of `split_csr`)."""
    if not shards:
        raise ValueError("no shards")
    for s, t in zip(shards, shards[1:]):
        if s.hi != t.lo:
            raise ValueError(f"shards are not contiguous: [{s.lo}, {s.hi}) then [{t.lo}, {t.hi})")
    offsets = np.cumsum([0] + [s.num_arcs for s in shards])
    indptr = np.concatenate([s.indptr[:-1] + off for s, off in zip(shards, offsets)] + [offsets[-1:]])
    indices = np.concatenate([s.indices for s in shards]).astype(np.int32, copy=False)
    weighted = shards[0].weights is not None
    weights = np.concatenate([s.weights for s in shards]).astype(np.float32, copy=False) if weighted else None
    return CSRGraph(indptr.astype(np.int64, copy=False), indices, weights, shards[0].directed)


def csr_bytes(num_nodes: int, num_arcs: int, weighted: bool) -> int:
    """Bytes of a CSR (indptr + indices + weights) plus its node-id map."""
    return int(num_nodes) * NODE_BYTES + int(num_arcs) * ARC_BYTES[bool(weighted)]


def resolve_shards(setting: int | str, num_nodes: int, num_arcs: int, weighted: bool, budget_mb: float) -> int:
    """graph.shards: an int is taken as is; `auto` is 1 while the graph's CSR fits `budget_mb`
    (graph.shard_budget_mb, per worker), else the fewest shards that each fit it."""
    if setting != "auto":
        return int(setting)
    need = csr_bytes(num_nodes, num_arcs, weighted) / (budget_mb * 2**20)
    return max(1, math.ceil(need))
