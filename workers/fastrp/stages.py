"""FastRP stage bodies for Ray workers: one function per step of the row-partitioned recipe in
workers/fastrp/kernels.py. Each takes the shared CSR (zero-copy from the object store) and a row range."""
from __future__ import annotations

import numpy as np

from embedlake.config import FastRPConfig
from embedlake.workers.fastrp import kernels as frp


def degrees(csr: tuple) -> np.ndarray:
    indptr, _, weights, _ = csr
    return frp.node_degrees(indptr, weights)


def projection(csr: tuple, deg: np.ndarray, cfg: FastRPConfig, threads: int = 1) -> "frp.SparseRows":
    """U_0 = diag(deg^beta) R for all rows, kept sparse (n * dim * density entries)."""
    indptr, indices, weights, _ = csr
    return frp.fastrp_init_sparse(indptr, indices, weights, cfg.dim, beta=cfg.beta, density=cfg.density,
                                  seed=cfg.seed, degrees=deg, threads=threads)


def first_step(csr: tuple, deg: np.ndarray, R, lo: int, hi: int, cfg: FastRPConfig, threads: int = 1):
    """Rows [lo, hi) of U_1 = S U_0 and of out = w_1 U_1."""
    indptr, indices, weights, _ = csr
    out = np.zeros((hi - lo, cfg.dim), dtype=np.float32)
    U = frp.propagate_sparse_rows(indptr, indices, weights, R, lo, hi, normalization=cfg.normalization,
                                  degrees=deg, threads=threads, accumulate_into=out,
                                  accumulate_weight=cfg.weights[0])
    return U, out


def join_rows(*parts: np.ndarray) -> np.ndarray:
    """One [n, dim] matrix from row partitions (shared once per iteration through the object store)."""
    return np.concatenate(parts)


def next_step(csr: tuple, deg: np.ndarray, lo: int, hi: int, weight: float, cfg: FastRPConfig, out_part: np.ndarray,
              U_prev: np.ndarray, threads: int = 1):
    """Rows [lo, hi) of U_k = S U_{k-1}, and out += weight * U_k (fused)."""
    indptr, indices, weights, _ = csr
    out = out_part.copy()         # object-store arrays are read-only
    U = frp.propagate_rows(indptr, indices, weights, U_prev, lo, hi, normalization=cfg.normalization,
                           degrees=deg, threads=threads, accumulate_into=out, accumulate_weight=weight)
    return U, out


def moments(out_part: np.ndarray):
    return frp.column_moments(out_part, threads=1)


def standardize_and_join(mean: np.ndarray, std: np.ndarray, standardize: bool, *out_parts: np.ndarray) -> np.ndarray:
    X = np.concatenate(out_parts) if len(out_parts) > 1 else out_parts[0].copy()
    if standardize:
        frp.apply_standardize(X, mean, std, threads=1)
    return X
