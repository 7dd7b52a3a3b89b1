"""All-but-the-top post-processing of published vectors (Mu & Viswanath 2018), for evaluation only.

    X' = (X - mean) - sum_{i<=D} (u_i . (X - mean)) u_i

with u_1..u_D the top D principal directions of the centred rows. D = 0 only subtracts the mean.
Used by bench/sgns_quality.py and bench/bench_skipgram.py (`--abtt D ...`) to measure whether it
helps our vectors or gensim's (issue 20, docs/skipgram.md "Eleventh pass"); no pipeline applies it.
"""
from __future__ import annotations

import numpy as np


def all_but_the_top(X: np.ndarray, D: int) -> np.ndarray:
    """X (rows = vectors) with its mean subtracted and its top-D principal directions projected out,
    computed in float64 and returned in X's dtype. Every row is used for the mean and the directions."""
    if not 0 <= D < min(X.shape):
        raise ValueError(f"all_but_the_top: D={D} must be in [0, {min(X.shape)}) for a {X.shape} table")
    C = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    if D:
        _, _, Vt = np.linalg.svd(C, full_matrices=False)
        U = Vt[:D]                                  # (D, d), orthonormal rows
        C -= (C @ U.T) @ U
    return C.astype(X.dtype)


def abtt_variants(X: np.ndarray, Ds) -> dict[str, np.ndarray]:
    """{"abtt{D}": all_but_the_top(X, D)} for each D in Ds (the names the bench scripts print)."""
    return {f"abtt{D}": all_but_the_top(X, D) for D in Ds}
