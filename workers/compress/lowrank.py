"""Low-rank codec: PCA (truncated SVD of the centred sample) to `rank` dimensions.

Rows keep their `rank` coordinates (float16 or float32) in the basis of the top principal
directions; decoding is coords @ components + mean. Fitted on a sample like the PQ codebooks, so
every worker projects its own partition with the same basis.
"""
from __future__ import annotations

import numba
import numpy as np

DTYPES = {"float16": np.float16, "float32": np.float32}


def fit_lowrank(X: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    if not 1 <= rank <= d:
        raise ValueError(f"lowrank: lowrank_dim={rank} must be in 1..{d}")
    mean = X.mean(axis=0)
    # eigendecomposition of the d x d covariance: cheaper than an SVD of the n x d sample
    Xc = X - mean
    w, V = np.linalg.eigh(Xc.T @ Xc)
    top = np.argsort(w)[::-1][:rank]
    comps = V[:, top].T                                   # [rank, d], orthonormal rows
    # deterministic signs (largest |entry| of each component positive)
    sign = np.sign(comps[np.arange(rank), np.abs(comps).argmax(1)])
    comps = comps * np.where(sign == 0, 1, sign)[:, None]
    return {"mean": mean.astype(np.float32), "components": comps.astype(np.float32)}


@numba.njit(parallel=True, cache=True, nogil=True)
def _project_rows(X, mean, comps, out):
    """out[i, k] = sum_j (X[i, j] - mean[j]) * comps[k, j], summed in float64 in j order, row by row:
    each row's coordinates depend on that row alone, so row partitions encode exactly as the whole
    table does (a BLAS matmul's blocking, and so its rounding, changes with the row count)."""
    n, d = X.shape
    r = comps.shape[0]
    for i in numba.prange(n):
        for k in range(r):
            acc = 0.0
            for j in range(d):
                acc += (np.float64(X[i, j]) - np.float64(mean[j])) * np.float64(comps[k, j])
            out[i, k] = np.float32(acc)


def encode_lowrank(X: np.ndarray, state: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float32)
    comps = np.ascontiguousarray(state["components"], dtype=np.float32)
    Y = np.empty((X.shape[0], comps.shape[0]), dtype=np.float32)
    _project_rows(X, np.ascontiguousarray(state["mean"], dtype=np.float32), comps, Y)
    Y = np.ascontiguousarray(Y.astype(DTYPES[dtype]))
    return {"code": Y.view(np.uint8).reshape(Y.shape[0], -1)}


def coords(cols: dict, state: dict, dtype: str = "float32") -> np.ndarray:
    code = np.ascontiguousarray(cols["code"])
    r = state["components"].shape[0]
    return code.view(DTYPES[dtype]).reshape(code.shape[0], r).astype(np.float32)


def decode_lowrank(cols: dict, state: dict, dtype: str = "float32") -> np.ndarray:
    return coords(cols, state, dtype) @ state["components"] + state["mean"]
