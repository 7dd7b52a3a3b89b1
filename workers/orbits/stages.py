"""Orbit-adjacency stage bodies for Ray workers (tasks/orbits.py wires them): prepare the simple
graph once, then per row range count the 28 matrices, write them, and project them; the
propagation and standardisation steps are FastRP's (workers/fastrp)."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedlake.config import OrbitsConfig
from embedlake.lake import Lake
from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.graph.store import node_id_array
from embedlake.workers.orbits import count as oc
from embedlake.workers.orbits import embed as oe
from embedlake.workers.orbits.pairs import NUM_PAIRS, PAIR_NAMES

MATRIX_DIR = "orbit_adjacency"


def prepare(csr: tuple) -> tuple[tuple, dict]:
    """(simple graph: indptr, indices, tri, tri2, nsum, degrees; cost estimate). Graphlets are
    defined on the undirected simple graph whatever the input's direction, weights or repeats."""
    indptr, indices, _, _ = csr
    n = int(indptr.shape[0] - 1)
    t0 = time.perf_counter()
    ip, ix = oc.simple_graph(np.asarray(indptr), np.asarray(indices), n)
    tri, tri2, nsum = oc.arc_triangles(ip, ix)
    walks3, graphlets4 = oc.work_estimate(ip, ix)
    deg = np.diff(ip).astype(np.float64)
    info = {"nodes": n, "edges": int(ix.shape[0] // 2), "walks3": float(walks3), "graphlets4_bound": float(graphlets4),
            "triangles": int(tri2.sum() // 6), "prepare_s": round(time.perf_counter() - t0, 3)}
    return (ip, ix, tri, tri2, nsum, deg), info


def projection(num_nodes: int, cfg: OrbitsConfig) -> np.ndarray:
    """R [n, dim] (combine=sum) or [n, dim_per_matrix] (concat): FastRP's very sparse random
    projection (a pure function of the seed)."""
    k = cfg.dim if cfg.combine == "sum" else cfg.dim_per_matrix
    return frp.random_projection(num_nodes, k, density=cfg.density, seed=cfg.seed)


def count_partition(prep: tuple, R: np.ndarray, lo: int, hi: int, cfg: OrbitsConfig, out: dict | None,
                    node_ids: np.ndarray | None = None):
    """Rows [lo, hi): count the 28 matrices, write them when `out` names where (lake, dataset,
    method, run_id, partition) with the input's `node_ids`, project them. Returns (X_1 rows, file
    entries, stats)."""
    ip, ix, tri, tri2, nsum, _ = prep
    t0 = time.perf_counter()
    coo = oc.count_rows(ip, ix, tri, tri2, nsum, lo, hi)
    t1 = time.perf_counter()
    files = write_matrices(coo, node_ids=node_ids, **out) if out is not None else []
    t2 = time.perf_counter()
    X1 = oe.project_rows(coo, lo, hi, R, cfg.transform, cfg.combine)
    stats = {"nnz": np.bincount(coo[2], minlength=NUM_PAIRS).tolist(), "count_s": t1 - t0, "write_s": t2 - t1,
             "project_s": time.perf_counter() - t2}
    return X1, files, stats


def write_matrices(coo: tuple, lake, dataset: str, method: str, run_id: str, partition: int,
                   node_ids: np.ndarray) -> list[dict]:
    """One Parquet file per orbit pair for this partition's rows: (row, col, count) with the
    input's node ids, at tables/<dataset>/<method>/run=<id>/orbit_adjacency/pair=<name>/partition=<p>/."""
    lake = Lake(lake)
    rows, cols, kinds, counts = coo
    order = np.argsort(kinds, kind="stable")            # row-major order kept inside each pair
    bounds = np.searchsorted(kinds[order], np.arange(NUM_PAIRS + 1))
    ids = np.asarray(node_ids)
    files = []
    for t in range(NUM_PAIRS):
        sel = order[bounds[t]:bounds[t + 1]]
        table = pa.table({"row": node_id_array(ids[rows[sel]]), "col": node_id_array(ids[cols[sel]]),
                          "count": pa.array(counts[sel])})
        rel = Lake.part_path("tables", dataset, method, run_id, partition, sub=f"{MATRIX_DIR}/pair={PAIR_NAMES[t]}")
        files.append(lake.write_parquet(rel, table).to_dict())
    return files


def propagate_step(prep: tuple, lo: int, hi: int, weight: float, out_part: np.ndarray, U_prev: np.ndarray):
    """Rows [lo, hi) of U_j = P U_{j-1} (P = D^-1 A of the simple graph), and out += weight * U_j."""
    ip, ix, _, _, _, deg = prep
    out = out_part.copy()                                # object-store arrays are read-only
    U = frp.propagate_rows(ip, ix, None, U_prev, lo, hi, normalization="row", degrees=deg, threads=1,
                           accumulate_into=out, accumulate_weight=weight)
    return U, out


def first_output(X1: np.ndarray, weight: float) -> np.ndarray:
    """out = w_0 X_1 for one row range."""
    return (X1 * np.float32(weight)).astype(np.float32)
