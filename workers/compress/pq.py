"""Product quantisation (PQ) and optimised PQ (OPQ) through Faiss, plus the asymmetric-distance
(ADC) search kernel over stored codes.

Why Faiss: its k-means (and OPQ's alternating rotation / codebook optimisation) is the reference
implementation; a hand-rolled k-means would be slower and no better. Training happens once on a
sample (``fit_*``); the trained state is plain arrays (codebooks ``centroids`` [M, 2^nbits, d/M],
and for OPQ the orthogonal ``rotation`` [d, d]), so any worker can rebuild a quantiser from the
state and encode its own row partition (``encode_pq``) with identical codes.

Codes are Faiss's layout: M sub-codes of nbits each, packed little-endian bit-stream
(for nbits=8: one byte per sub-quantiser).

Search is asymmetric: the query stays exact, each query builds a lookup table
LUT[m, c] = <q_m, centroid[m, c]>, and a row's score is sum_m LUT[m, code_m] (the inner product of
the query with the row's reconstruction, without reconstructing it). Dividing by the norm of the
reconstruction (precomputed per row from the same codes) gives cosine to the reconstruction.
"""
from __future__ import annotations

import numba as nb
import numpy as np


def _faiss(threads: int = 0):
    import faiss
    if threads:
        faiss.omp_set_num_threads(int(threads))
    return faiss


def _quantizer(faiss, d: int, m: int, nbits: int, seed: int):
    pq = faiss.ProductQuantizer(d, m, nbits)
    pq.cp.min_points_per_centroid = 1       # small samples are fine; silences Faiss's warning
    pq.cp.seed = int(seed)
    return pq


def check_pq_params(d: int, m: int, nbits: int) -> None:
    if d % m:
        raise ValueError(f"pq: dimension {d} is not divisible by pq_m={m}")
    if not 1 <= nbits <= 16:
        raise ValueError(f"pq: pq_bits must be in 1..16, not {nbits}")


def fit_pq(X: np.ndarray, m: int, nbits: int, seed: int = 0, threads: int = 0) -> dict[str, np.ndarray]:
    faiss = _faiss(threads)
    X = np.ascontiguousarray(X, dtype=np.float32)
    d = X.shape[1]
    check_pq_params(d, m, nbits)
    pq = _quantizer(faiss, d, m, nbits, seed)
    pq.train(X)
    return {"centroids": faiss.vector_to_array(pq.centroids).reshape(m, 1 << nbits, d // m).astype(np.float32)}


def eigen_allocation(X: np.ndarray, m: int) -> np.ndarray:
    """Parametric OPQ (Ge et al. 2013, "eigenvalue allocation"): PCA axes dealt to the m subspaces
    so that the products of their variances are balanced (greedy: the next-largest axis goes to
    the open subspace with the smallest log-variance sum). Returns the orthogonal R [d, d] whose
    rows are the new axes, subspace by subspace. One eigendecomposition, no iterations."""
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    Xc = X - X.mean(0)
    w, V = np.linalg.eigh(Xc.T @ Xc)
    order = np.argsort(w)[::-1]
    w, V = np.maximum(w[order], 1e-12), V[:, order]
    per = d // m
    buckets: list[list[int]] = [[] for _ in range(m)]
    logsum = np.zeros(m)
    for i in range(d):
        open_ = [b for b in range(m) if len(buckets[b]) < per]
        b = min(open_, key=lambda j: logsum[j])
        buckets[b].append(i)
        logsum[b] += np.log(w[i])
    return np.ascontiguousarray(V[:, np.concatenate(buckets)].T, dtype=np.float32)


def fit_opq(X: np.ndarray, m: int, nbits: int, seed: int = 0, threads: int = 0, niter: int = 20,
            method: str = "eigen") -> dict[str, np.ndarray]:
    """Rotation, then PQ codebooks on the rotated sample.

    method "eigen": parametric OPQ (eigenvalue allocation, `eigen_allocation`): one PCA, measured
    better than Faiss's iterative OPQ on DeepWalk vectors (see docs/compression.md) and ~10x faster.
    method "faiss": Faiss's OPQMatrix (non-parametric OPQ, `niter` alternations of rotation
    (Procrustes) and PQ codebook updates).
    """
    faiss = _faiss(threads)
    X = np.ascontiguousarray(X, dtype=np.float32)
    d = X.shape[1]
    check_pq_params(d, m, nbits)
    if method == "eigen":
        R = eigen_allocation(X, m)
    elif method == "faiss":
        opq = faiss.OPQMatrix(d, m)
        opq.niter = int(niter)
        inner = _quantizer(faiss, d, m, nbits, seed)   # used for OPQ's own PQ steps (keeps a Python ref)
        opq.pq = inner
        opq.train(X)
        R = faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)
    else:
        raise ValueError(f"opq: unknown method {method!r} (eigen, faiss)")
    state = fit_pq(X @ R.T, m, nbits, seed, threads)
    state["rotation"] = R
    return state


def _rebuild(state: dict, threads: int = 0):
    faiss = _faiss(threads)
    m, ksub, dsub = state["centroids"].shape
    pq = faiss.ProductQuantizer(m * dsub, m, int(ksub).bit_length() - 1)
    faiss.copy_array_to_vector(np.ascontiguousarray(state["centroids"], dtype=np.float32).ravel(), pq.centroids)
    return pq


def _rotate(X: np.ndarray, state: dict) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    R = state.get("rotation")
    return np.ascontiguousarray(X @ R.T if R is not None else X, dtype=np.float32)


def encode_pq(X: np.ndarray, state: dict, threads: int = 0) -> dict[str, np.ndarray]:
    pq = _rebuild(state, threads)
    return {"code": pq.compute_codes(_rotate(X, state))}


def sub_codes(code: np.ndarray, m: int, nbits: int) -> np.ndarray:
    """(n, M) centroid indices from Faiss's packed codes."""
    code = np.asarray(code, dtype=np.uint8)
    if nbits == 8:
        return code
    bits = np.unpackbits(code, axis=1, bitorder="little")[:, :m * nbits].reshape(code.shape[0], m, nbits)
    return (bits.astype(np.int32) << np.arange(nbits, dtype=np.int32)).sum(-1).astype(np.uint16)


def decode_pq(cols: dict, state: dict) -> np.ndarray:
    C = state["centroids"]
    m, ksub, dsub = C.shape
    idx = sub_codes(cols["code"], m, ksub.bit_length() - 1)
    Y = np.empty((idx.shape[0], m * dsub), dtype=np.float32)
    for j in range(m):
        Y[:, j * dsub:(j + 1) * dsub] = C[j][idx[:, j]]
    R = state.get("rotation")
    return Y @ R if R is not None else Y


def reconstruction_norms(idx: np.ndarray, state: dict) -> np.ndarray:
    """||x_hat|| per row from the codes alone (the rotation is orthogonal: norms are unchanged)."""
    C = state["centroids"]
    sq = (C.astype(np.float64) ** 2).sum(-1)                 # [M, K]
    tot = np.zeros(idx.shape[0])
    for j in range(C.shape[0]):
        tot += sq[j][idx[:, j]]
    return np.sqrt(tot).astype(np.float32)


def lookup_tables(Q: np.ndarray, state: dict) -> np.ndarray:
    """LUT[q, m, c] = <Q_q,m , centroid[m, c]> for rotated queries (float32 [nq, M, K])."""
    C = state["centroids"]
    m, ksub, dsub = C.shape
    Qr = _rotate(Q, state).reshape(-1, m, dsub)
    return np.ascontiguousarray(np.einsum("qmd,mkd->qmk", Qr, C, optimize=True), dtype=np.float32)


@nb.njit(parallel=True, cache=True)
def _adc(lut, idx, out):
    nq, m, _ = lut.shape
    n = idx.shape[0]
    for a in nb.prange(nq):
        for i in range(n):
            s = np.float32(0.0)
            for j in range(m):
                s += lut[a, j, idx[i, j]]
            out[a, i] = s
    return out


def adc_scores(lut: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(nq, n) inner products of the queries with every row's reconstruction."""
    out = np.empty((lut.shape[0], idx.shape[0]), dtype=np.float32)
    return _adc(lut, np.ascontiguousarray(idx), out)
