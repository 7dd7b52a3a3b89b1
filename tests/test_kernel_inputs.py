"""A kernel compiles once whether its inputs are writable or read-only (workers/kernel_inputs.py).

Ray's object store, memory maps and pyarrow hand out read-only arrays; the same arrays built in the
process are writable. numba's signature includes that flag, so before the change each mix compiled
the kernel again (FastRP's row kernel 13 times in the suite). Each test runs a stage on a graph's
arrays as built, then on read-only copies, and checks that the kernel gained no signature and that
the outputs are identical."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.graph import walks as gw
from embedlake.workers.train import skipgram as sg


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy, as Ray's object store returns it."""
    b = np.array(a, copy=True)
    b.flags.writeable = False
    return b


def ring_graph(n: int = 60, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected ring where each node links to its k nearest on each side; int64 indptr, int32 indices."""
    cols = [sorted({(i + d) % n for d in range(-k, k + 1) if d}) for i in range(n)]
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum([len(c) for c in cols])
    indices = np.concatenate(cols).astype(np.int32)
    weights = (1.0 + (np.arange(indices.size) % 5)).astype(np.float32)
    return indptr, indices, weights


def signatures(kernel) -> set:
    return set(kernel.signatures)


@pytest.mark.parametrize("weighted", [False, True])
def test_walk_kernel_one_signature_for_writable_and_read_only_graphs(weighted):
    indptr, indices, weights = ring_graph()
    w = weights if weighted else None
    starts = np.arange(indptr.size - 1, dtype=np.int64)
    a = gw.random_walks(indptr, indices, w, starts, 2, 8, seed=3, threads=1)
    seen = signatures(gw._walk_kernel)
    b = gw.random_walks(frozen(indptr), frozen(indices), None if w is None else frozen(w), frozen(starts), 2, 8,
                        seed=3, threads=1)
    assert signatures(gw._walk_kernel) == seen
    np.testing.assert_array_equal(a, b)


def test_fastrp_row_kernel_one_signature_for_writable_and_read_only_graphs():
    indptr, indices, weights = ring_graph()
    a = frp.fastrp(indptr, indices, weights, dim=16, seed=1, threads=1)
    seen = signatures(frp._spmm_rows_kernel), signatures(frp._degree_kernel)
    b = frp.fastrp(frozen(indptr), frozen(indices), frozen(weights), dim=16, seed=1, threads=1)
    assert (signatures(frp._spmm_rows_kernel), signatures(frp._degree_kernel)) == seen
    np.testing.assert_array_equal(a, b)


def test_skipgram_window_kernel_one_signature_for_writable_and_read_only_walks():
    indptr, indices, _ = ring_graph()
    starts = np.arange(indptr.size - 1, dtype=np.int64)
    walks = gw.random_walks(indptr, indices, None, starts, 4, 10, seed=0, threads=1)
    tokens = walks.reshape(-1).astype(np.int32)
    offsets = np.arange(0, tokens.size + 1, walks.shape[1], dtype=np.int64)
    kw = dict(dim=8, window=3, negatives=2, epochs=1, seed=5, threads=1)
    a = sg.train_sgns(tokens, offsets, indptr.size - 1, **kw)[0]
    seen = signatures(sg._window_blocks)
    b = sg.train_sgns(frozen(tokens), frozen(offsets), indptr.size - 1, **kw)[0]
    assert signatures(sg._window_blocks) == seen
    np.testing.assert_array_equal(a, b)
