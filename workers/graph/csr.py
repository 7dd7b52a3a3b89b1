"""CSR graph storage shared by every graph stage (walks, FastRP, evaluation).

Dense int ids 0..n-1; the original ids live in a separate node-id map (ingest). Neighbour lists
are sorted within each row so second-order walks can test adjacency by binary search.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CSRGraph:
    indptr: np.ndarray            # int64 [n + 1]
    indices: np.ndarray           # int32 [m], sorted within each row
    weights: np.ndarray | None    # float32 [m] or None (unweighted)
    directed: bool = False

    @property
    def num_nodes(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_arcs(self) -> int:
        """Stored arcs (an undirected edge counts twice)."""
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + (self.weights.nbytes if self.weights is not None else 0))

    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def to_scipy(self):
        import scipy.sparse as sp
        data = self.weights if self.weights is not None else np.ones(self.num_arcs, dtype=np.float32)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.num_nodes, self.num_nodes))


def build_csr(src: np.ndarray, dst: np.ndarray, num_nodes: int, weights: np.ndarray | None = None,
              directed: bool = False, duplicates: str = "drop", self_loops: str = "drop") -> CSRGraph:
    """CSR from dense-id edge arrays. Undirected graphs are symmetrised (each edge stored both ways).

    duplicates: drop (keep the first weight), sum (add weights), keep (multi-edges).
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    if self_loops == "drop":
        keep = src != dst
        src, dst = src[keep], dst[keep]
        w = None if w is None else w[keep]
    if not directed:
        loops = src == dst
        nl = ~loops      # a self-loop is stored once, not twice
        src, dst = np.concatenate([src, dst[nl]]), np.concatenate([dst, src[nl]])
        if w is not None:
            w = np.concatenate([w, w[nl]])
    key = src * np.int64(num_nodes) + dst
    order = np.argsort(key, kind="stable")
    key = key[order]
    if w is not None:
        w = w[order]
    if duplicates != "keep" and key.size:
        first = np.empty(key.size, dtype=bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        if duplicates == "sum" and w is not None:
            grp = np.cumsum(first) - 1
            w = np.bincount(grp, weights=w).astype(np.float32)
        elif w is not None:
            w = w[first]
        key = key[first]
    rows = key // num_nodes
    cols = (key - rows * num_nodes).astype(np.int32)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_nodes), out=indptr[1:])
    return CSRGraph(indptr, cols, w, directed)
