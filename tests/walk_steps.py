"""What a run's written walks stepped along, for the tests that check held-out edges are never walked."""
from __future__ import annotations

import numpy as np


def walk_steps(lake, dataset: str, method: str) -> set[tuple[int, int]]:
    """Every (node, next node) step of the run's walks table."""
    import polars as pl

    from embedlake.reader import read_table
    walks = pl.from_arrow(read_table(lake, dataset, method, kind="walks")[0])
    steps: set[tuple[int, int]] = set()
    for w in walks["walk"].to_list():
        steps.update(zip(w, w[1:]))
    return steps


def csr_arcs(indptr, indices) -> set[tuple[int, int]]:
    """Every arc (u, v) of a CSR."""
    indptr = np.asarray(indptr)
    return set(zip(np.repeat(np.arange(indptr.size - 1), np.diff(indptr)).tolist(), np.asarray(indices).tolist()))
