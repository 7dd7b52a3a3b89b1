"""Incremental FastRP (issue 18): recompute only the rows whose k-hop neighbourhood changed, with a
result bit-identical to a full FastRP of the new graph.

Why it can be exact
- FastRP row i of level k is U_k[i] = row_scale[i] * sum over i's arcs (in CSR order) of
  w_ij col_scale[j] U_{k-1}[j]; U_0 = diag(deg^beta) R. Propagation reads OUT-neighbours, so a
  change reaches the rows that point at it: level k must be recomputed on
      A_1 = C u pred(C),   A_k = C u pred(A_{k-1}),
  where C are the rows whose arc sequence (neighbour ids, weights, order) differs from the
  previous version, or that are new (``changed_rows``; a changed degree implies a changed row, so
  U_0, row and column scales only change on C). Every other row of every level is the previous
  run's row, bit for bit, because its inputs are the same bits summed in the same order.
- The random projection must not move with the dense ids: the run uses ``fastrp.projection =
  "node_id"`` (R's row drawn from a hash of the ORIGINAL id, ``kernels.node_keys``) and a pinned
  ``fastrp.density`` (the default 1/sqrt(n) changes with n). A full run with these settings is the
  reference the incremental result equals.
- Recomputed rows use the same kernels as the full run (``propagate_block`` over the sub-CSR of the
  rows, reading the whole previous level; ``accumulate_rows`` in level order, as the fused full
  kernel adds them), so their bits are the full run's too.

What must be kept between runs (``FastRPState``, an internal artifact of the run, lake kind
`state`): the levels U_1 .. U_{K-1} (a recomputed row of level k reads its neighbours' level k-1,
changed or not) and ``raw``, the iteration-weighted sum before standardisation (the column
moments are global: every row of the published table moves when any row does). U_K itself is not
kept: only raw needs it. Size: K arrays of [n, dim] float32.

Cost: level k costs the arcs of A_k times dim (U_0 is drawn only for the neighbours of A_1), plus
O(m) integer passes (row comparison, K predecessor sweeps) and one O(n dim) pass for the published
table (a copy of raw, standardised: moments, then apply). When only edges changed (every node keeps
its dense id) the state is updated in place; when nodes were added or removed, each state array is
first moved to the new dense ids (K more O(n dim) copies). When the balls hold more than FULL_SHARE
of a full run's work (small-world graphs: 4 hops from a few hundred changed edges reach most
nodes), the whole graph is recomputed instead: the same bits, less overhead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.kernel_inputs import read_only

DTYPE = np.float32
FULL_SHARE = 0.5      # when the balls' arcs exceed this share of a full run's (K m), the whole graph is
                      # recomputed (same bits, less overhead: sub-CSR gathers and scattered row writes)


@dataclass
class FastRPState:
    """What an incremental run needs of the previous run, rows in that run's dense order."""
    levels: list[np.ndarray]       # U_1 .. U_{K-1}, float32 [n, dim] each (K = len(iteration_weights))
    raw: np.ndarray                # sum_k iteration_weights[k] U_{k+1}, float32 [n, dim], not standardised

    @property
    def num_rows(self) -> int:
        return int(self.raw.shape[0])


@dataclass
class FastRPUpdate:
    """An incremental run's output: the table, the state for the next run, and what it recomputed."""
    table: np.ndarray
    state: FastRPState
    rows_per_level: list[int] = field(default_factory=list)   # |A_k|, k = 1 .. K
    changed_rows: int = 0                                      # |C|: new rows and rows whose arcs changed
    recomputed_all: bool = False                               # the balls held > FULL_SHARE of the rows

    def info(self) -> dict:
        n = int(self.table.shape[0])
        recomputed = n if self.recomputed_all else (self.rows_per_level[-1] if self.rows_per_level else 0)
        return {"incremental": True, "recomputed_all": self.recomputed_all, "rows": n,
                "changed_rows": self.changed_rows,
                "rows_recomputed": recomputed, "rows_per_level": list(self.rows_per_level),
                "recomputed_fraction": round(recomputed / n, 6) if n else 0.0}


def fastrp_with_state(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, row_keys: np.ndarray,
                      cfg, threads: int = 0) -> tuple[np.ndarray, FastRPState]:
    """A full FastRP run keyed by node id that also returns the state an incremental run needs.

    The table equals ``kernels.fastrp(..., row_keys=row_keys)`` bit for bit (the same calls, one
    partition). ``cfg``: a FastRPConfig (dim, weights, beta, density, normalization, standardize, seed)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n = int(indptr.shape[0] - 1)
    ws = [float(w) for w in cfg.weights]
    deg = frp.node_degrees(indptr, weights)
    R = frp.fastrp_init_sparse(indptr, indices, weights, cfg.dim, beta=cfg.beta, density=cfg.density,
                               seed=cfg.seed, dtype=DTYPE, degrees=deg, threads=threads, row_keys=row_keys)
    raw = np.zeros((n, cfg.dim), dtype=DTYPE)
    U = frp.propagate_sparse_rows(indptr, indices, weights, R, 0, n, normalization=cfg.normalization, degrees=deg,
                                  threads=threads, accumulate_into=raw, accumulate_weight=ws[0])
    levels = []
    for w in ws[1:]:
        levels.append(U)
        U = frp.propagate_rows(indptr, indices, weights, U, 0, n, normalization=cfg.normalization, degrees=deg,
                               threads=threads, accumulate_into=raw, accumulate_weight=w)
    return standardized(raw, cfg.standardize, threads), FastRPState(levels, raw)


def standardized(raw: np.ndarray, standardize: bool, threads: int = 0) -> np.ndarray:
    """The published table: a copy of raw, standardised per column when asked (the O(n dim) pass)."""
    X = raw.copy()
    if standardize:
        frp.apply_standardize(X, *frp.finalize_moments(frp.column_moments(X, threads=threads)), threads=threads)
    return X


@njit(parallel=True, cache=True)
def _changed_rows_kernel(old_indptr, old_indices, old_w, new_indptr, new_indices, new_w, has_w, old_index, out):
    for i in prange(new_indptr.shape[0] - 1):
        o = old_index[i]
        if o < 0:
            out[i] = True
            continue
        a, b = new_indptr[i], new_indptr[i + 1]
        c = old_indptr[o]
        if b - a != old_indptr[o + 1] - c:
            out[i] = True
            continue
        same = True
        for p in range(a, b):
            q = c + p - a
            if old_index[new_indices[p]] != old_indices[q] or (has_w and new_w[p] != old_w[q]):
                same = False
                break
        out[i] = not same


def changed_rows(old_csr: tuple, new_csr: tuple, old_index: np.ndarray) -> np.ndarray:
    """bool [n_new]: new rows, and rows whose arcs differ from their previous row in neighbour
    (matched by original id through ``old_index``), weight, or order. Exact, O(m) integer work.

    A graph diff's ``changed`` set (endpoints of changed edges) misses rows whose neighbours were
    renumbered into another CSR order: their sums would be added in another order, other bits."""
    old_indptr, old_indices, old_w = (np.asarray(old_csr[0], np.int64), np.asarray(old_csr[1]), old_csr[2])
    new_indptr, new_indices, new_w = (np.asarray(new_csr[0], np.int64), np.asarray(new_csr[1]), new_csr[2])
    has_w = old_w is not None or new_w is not None
    if has_w and (old_w is None or new_w is None):
        return np.ones(new_indptr.shape[0] - 1, dtype=bool)      # weighted vs unweighted: every row differs
    empty = np.empty(0, dtype=np.float32)
    out = np.zeros(new_indptr.shape[0] - 1, dtype=np.bool_)
    old_w = empty if old_w is None else np.asarray(old_w)
    new_w = empty if new_w is None else np.asarray(new_w)
    # read-only whether they came from Ray's object store or not: one compile of the kernel (kernel_inputs)
    _changed_rows_kernel(*read_only(old_indptr, old_indices, old_w, new_indptr, new_indices, new_w), has_w,
                         *read_only(np.asarray(old_index, dtype=np.int64)), out)
    return out


def predecessor_csr(indptr: np.ndarray, indices: np.ndarray, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) listing each row's predecessors (rows with an arc into it): the CSR itself
    for an undirected (symmetric) graph, else its transpose (O(m), once)."""
    if not directed:
        return indptr, indices
    n = indptr.shape[0] - 1
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=n), out=ptr[1:])
    return ptr, src[np.argsort(indices, kind="stable")]


def affected_levels(indptr: np.ndarray, indices: np.ndarray, changed: np.ndarray, levels: int,
                    directed: bool = True) -> list[np.ndarray]:
    """[A_1, ..., A_K] (bool [n] each): the rows level k must recompute (module doc), nested.

    A_k = A_{k-1} u pred(A_{k-1} minus A_{k-2}) (A_0 = C, A_{-1} empty): only the newest rows'
    predecessors are looked up, so the work is the balls' arcs, not K passes over the graph."""
    pred_ptr, pred_idx = predecessor_csr(np.asarray(indptr, np.int64), np.asarray(indices), directed)
    out, cur, frontier = [], changed.copy(), np.flatnonzero(changed)
    for _ in range(levels):
        cur = cur.copy()
        reached = sub_csr(pred_ptr, pred_idx, None, frontier)[1]
        fresh = np.unique(reached[~cur[reached]])
        cur[fresh] = True
        out.append(cur)
        frontier = fresh
    return out


def sub_csr(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, rows: np.ndarray):
    """(local indptr, indices, weights) of the given rows (ascending), neighbour ids kept global."""
    starts, stops = indptr[rows], indptr[rows + 1]
    lens = stops - starts
    ptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    arcs = np.repeat(starts - ptr[:-1], lens) + np.arange(int(ptr[-1]), dtype=np.int64)
    return ptr, indices[arcs], None if weights is None else weights[arcs]


def projection_of_columns(num_nodes: int, cols: np.ndarray, deg: np.ndarray, row_keys: np.ndarray, cfg,
                          threads: int = 0) -> "frp.SparseRows":
    """U_0 as ``SparseRows`` over all n rows with only ``cols`` (ascending) drawn, the others empty:
    what a recomputed level-1 row reads, without drawing R for the whole graph."""
    part = frp.projection_rows_sparse(num_nodes, cols, deg[cols], cfg.dim, beta=cfg.beta, density=cfg.density,
                                      seed=cfg.seed, dtype=DTYPE, threads=threads, row_keys=row_keys[cols])
    counts = np.zeros(num_nodes, dtype=np.int64)
    counts[cols] = np.diff(part.indptr)
    ptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return frp.SparseRows(ptr, part.cols, part.vals, part.dim)


def same_rows(old_index: np.ndarray, old_rows: int) -> bool:
    """Whether every row keeps its dense id (only edges changed): the state is updated in place."""
    return old_index.shape[0] == old_rows and bool((old_index == np.arange(old_rows)).all())


def carried_rows(old: np.ndarray, old_index: np.ndarray) -> np.ndarray:
    """[n_new, dim]: the previous rows moved to the new dense ids (new rows left uninitialised); the
    previous array itself when no row moved (it is this run's to update: loaded from the lake)."""
    if same_rows(old_index, old.shape[0]):
        return old
    out = np.empty((old_index.shape[0], old.shape[1]), dtype=old.dtype)
    keep = old_index >= 0
    out[keep] = old[old_index[keep]]
    return out


def fastrp_incremental(new_csr: tuple, row_keys: np.ndarray, old_csr: tuple, old_index: np.ndarray,
                       state: FastRPState, cfg, threads: int = 0, directed: bool = True) -> FastRPUpdate:
    """The new graph's FastRP table from the previous run's state, recomputing A_k on level k only.

    new_csr / old_csr: (indptr, indices, weights) of the two versions; row_keys: ``node_keys`` of the
    new version's node ids; old_index: each new row's row in the old version or -1 (GraphDiff.old_index);
    directed: False lets the balls grow over the (symmetric) CSR itself instead of its transpose.
    Equal bit for bit to ``fastrp_with_state`` on the new graph (table and state). ``state``'s arrays
    are updated in place when no row moved (``same_rows``): pass arrays this call may own."""
    indptr, indices, weights = np.asarray(new_csr[0], np.int64), np.asarray(new_csr[1]), new_csr[2]
    n, ws = int(indptr.shape[0] - 1), [float(w) for w in cfg.weights]
    if len(state.levels) != len(ws) - 1 or state.raw.shape != (int(np.asarray(old_csr[0]).shape[0] - 1), cfg.dim):
        raise ValueError(f"the previous FastRP state has {len(state.levels)} levels of {state.raw.shape}; this run "
                         f"needs {len(ws) - 1} of [{int(np.asarray(old_csr[0]).shape[0] - 1)}, {cfg.dim}]")
    changed = changed_rows(old_csr, (indptr, indices, weights), old_index)
    sets = affected_levels(indptr, indices, changed, len(ws), directed)
    ball_arcs = sum(int(np.diff(indptr)[m].sum()) for m in sets)
    if ball_arcs + sum(int(m.sum()) for m in sets) > FULL_SHARE * len(ws) * (indptr[-1] + n):
        table, new_state = fastrp_with_state(indptr, indices, weights, row_keys, cfg, threads)
        return FastRPUpdate(table, new_state, [int(m.sum()) for m in sets], int(changed.sum()), recomputed_all=True)
    deg = frp.node_degrees(indptr, weights)
    row_scale, col_scale = frp.normalization_scales(cfg.normalization, deg, DTYPE)
    levels = [carried_rows(U, old_index) for U in state.levels]
    final_rows = np.flatnonzero(sets[-1])
    raw_rows = np.zeros((final_rows.shape[0], cfg.dim), dtype=DTYPE)
    prev = None
    for k, mask in enumerate(sets):
        rows = np.flatnonzero(mask)
        ptr, idx, w = sub_csr(indptr, indices, weights, rows)
        block = projection_of_columns(n, np.unique(idx), deg, row_keys, cfg, threads) if k == 0 else prev
        U_rows = frp.propagate_block(ptr, idx, w, block, 0, np.empty((rows.shape[0], cfg.dim), DTYPE), fresh=True,
                                     finish=True, row_scale=None if row_scale is None else row_scale[rows],
                                     col_scale=col_scale, threads=threads)
        if k < len(levels):
            levels[k][rows] = U_rows
            prev = levels[k]
            frp.accumulate_rows(raw_rows, levels[k][final_rows], ws[k], threads=threads)
        else:
            frp.accumulate_rows(raw_rows, U_rows, ws[k], threads=threads)   # rows == final_rows at the last level
    raw = carried_rows(state.raw, old_index)
    raw[final_rows] = raw_rows
    table = standardized(raw, cfg.standardize, threads)
    return FastRPUpdate(table, FastRPState(levels, raw), [int(m.sum()) for m in sets], int(changed.sum()))


# ----------------------------------------------------------------------------- the state in the lake
STATE_FILES = "fastrp_state"            # the run record's files kind naming the state's .npy files


def state_dir(dataset: str, method: str, run_id: str) -> str:
    """The run's FastRP state folder (lake kind `state`: internal, kept while the run is in history)."""
    from embedlake.lake import Lake
    return f"{Lake.run_dir('state', dataset, method, run_id)}/fastrp"


def save_state(lake, dataset: str, method: str, run_id: str, state: FastRPState) -> list[dict]:
    """Write level-<k>.npy (k = 1 .. K-1) and raw.npy; returns their file entries (the run record's
    `fastrp_state` files: `gc` keeps them while a committed run names them)."""
    from embedlake.lake import Lake
    lake, base = Lake(lake), state_dir(dataset, method, run_id)
    entries = [lake.write_npy(f"{base}/level-{k}.npy", U).to_dict() for k, U in enumerate(state.levels, start=1)]
    return entries + [lake.write_npy(f"{base}/raw.npy", state.raw).to_dict()]


def load_state(lake, entries: list[dict], levels: int, rows: int, dim: int) -> FastRPState:
    """A previous run's state from its `fastrp_state` entries, shape-checked against what it must be."""
    from embedlake.lake import Lake
    lake = Lake(lake)
    by_name = {e["path"].rsplit("/", 1)[-1]: e["path"] for e in entries}
    names = [f"level-{k}.npy" for k in range(1, levels)] + ["raw.npy"]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"the previous run's FastRP state lacks {', '.join(missing)}")
    arrays = [lake.read_npy(by_name[n]) for n in names]
    for n, a in zip(names, arrays):
        if a.shape != (rows, dim) or a.dtype != DTYPE:
            raise ValueError(f"{by_name[n]}: {a.dtype} {a.shape}, expected float32 ({rows}, {dim})")
    return FastRPState(arrays[:-1], arrays[-1])


# ----------------------------------------------------------------------------- Ray stage bodies
def keyed_table_stage(csr: tuple, node_ids: np.ndarray, cfg, lake, dataset: str, method: str, run_id: str,
                      threads: int = 1) -> tuple[np.ndarray, list[dict]]:
    """A full FastRP run with fastrp.projection=node_id: the table, and the state saved for the next
    incremental run (one task: the state is the whole levels, which this task holds anyway)."""
    table, state = fastrp_with_state(csr[0], csr[1], csr[2], frp.node_keys(node_ids), cfg, threads)
    return table, save_state(lake, dataset, method, run_id, state)


def incremental_stage(csr: tuple, node_ids: np.ndarray, old_csr: tuple, old_index: np.ndarray, cfg, lake,
                      state_entries: list[dict], dataset: str, method: str, run_id: str,
                      threads: int = 1) -> tuple[np.ndarray, dict]:
    """An incremental FastRP run: the previous run's state loaded, the balls recomputed, the new
    state saved. Returns (table, info: counts and the new state's file entries under "state_files")."""
    old_rows = int(np.asarray(old_csr[0]).shape[0] - 1)
    state = load_state(lake, state_entries, len(cfg.weights), old_rows, cfg.dim)
    up = fastrp_incremental(csr[:3], frp.node_keys(node_ids), old_csr[:3], np.asarray(old_index, np.int64), state,
                            cfg, threads, directed=bool(csr[3]))
    info = up.info()
    info["state_files"] = save_state(lake, dataset, method, run_id, up.state)
    return up.table, info
