"""FastRP over graph shards (workers/graph/shards.py): blocked sparse products in which no step
holds more than one shard's CSR rows, one block of U_{k-1} and one shard's row sums.

Shard i's rows of U_k = S U_{k-1} are built by a chain of steps over the blocks j of U_{k-1} (the
rows of shard j), in ascending j: each step adds, for every row of shard i, the products of its
arcs into block j to the row sums the previous step left. A row's neighbours are sorted, so the
chain adds the same float32 products in the same order as the one-CSR kernel (which keeps its row
sum in the output row, in the table's dtype): the result is bit-identical for any shard count. The
last step of the chain scales the rows (row / sym normalisation) and adds weight * U_k to the
shard's output rows, as the one-CSR kernel does fused.

What each shard computes once (`shard_setup`), from its own CSR rows only:
* its degrees (never shipped), hence its row scales and its rows of U_0 (`projection_rows_sparse`:
  the random projection is a pure function of (seed, row, column), so a shard draws its own rows);
* its column scales, float32 per node of the shard (sym normalisation only; row and none need no
  neighbour degree): the steps of other shards that read block i get these with the block, so no
  task ever receives an n-sized degree vector;
* how many of its arcs fall in each block (S ints): blocks without arcs are skipped.

Standardisation: exact per-shard column moments (`kernels.column_moments`), merged on the driver
(two ints per column and shard), then applied shard by shard.

Recipe (``fastrp_shards`` runs it in one process; tasks/fastrp.py as Ray tasks):
    row_scale_i, col_scale_i, U0_i, arcs_i = shard_setup(shard i)                     # per shard
    for k, weight:                                                                      # per power
        for i: partial = None
               for j in block_plan(arcs_i)[:-1]: partial = block_step(i, U_{k-1}[j], partial)
               U_k[i], out_i = last_block_step(i, U_{k-1}[last j], partial, out_i, weight)
    m = merge_moments(moments(out_i) for i); out_i = standardized_rows(out_i, *finalize_moments(m))
"""
from __future__ import annotations

import numpy as np

from embedlake.config import FastRPConfig
from embedlake.lake import Lake
from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.graph.shards import CSRShard, owner_of, shard_starts
from embedlake.workers.run.checkpoints import StageHandle

DTYPE = np.float32          # the table's dtype, as the one-CSR stages use


def shard_setup(csr: tuple, lo: int, hi: int, num_nodes: int, starts: np.ndarray, cfg: FastRPConfig,
                threads: int = 1, node_ids: np.ndarray | None = None):
    """Once per shard: (row scales, column scales, its rows of U_0 as ``SparseRows``, arcs per block).

    ``starts`` is ``shard_starts(bounds)`` (S + 1 ints). The scales are float32 over the shard's
    rows or None (ones); the column scales are what other shards' steps need of this shard.
    ``node_ids`` (the shard's rows'): needed with fastrp.projection=node_id (R keyed by original id)."""
    indptr, indices, weights, _ = csr
    if int(indptr.shape[0]) - 1 != hi - lo:
        raise ValueError(f"shard [{lo}, {hi}) has {int(indptr.shape[0]) - 1} CSR rows")
    deg = frp.node_degrees(indptr, weights)
    row_scale, col_scale = frp.normalization_scales(cfg.normalization, deg, DTYPE)
    keys = frp.node_keys(node_ids) if cfg.projection == "node_id" else None     # the shard's rows' ids
    U0 = frp.projection_rows_sparse(num_nodes, (lo, hi), deg, cfg.dim, beta=cfg.beta, density=cfg.density,
                                    seed=cfg.seed, dtype=DTYPE, threads=threads, row_keys=keys)
    S = int(len(starts) - 1)
    block_arcs = np.bincount(owner_of(starts, indices), minlength=S).astype(np.int64) if S > 1 else \
        np.array([indices.shape[0]], dtype=np.int64)
    return row_scale, col_scale, U0, block_arcs


def block_plan(block_arcs: np.ndarray) -> list[int]:
    """The blocks a shard's chain visits, in the order that keeps the one-CSR sums: ascending,
    only those its arcs reach (an empty list: the shard has no arcs, one finishing step remains)."""
    return [int(j) for j in np.flatnonzero(np.asarray(block_arcs) > 0)]


def _working_rows(partial: np.ndarray | None, rows: int, dim: int) -> np.ndarray:
    """A writable copy of the row sums so far (object-store arrays are read-only), or a new array."""
    if partial is None:
        return np.empty((rows, dim), dtype=DTYPE)
    return np.array(partial, dtype=DTYPE, order="C", copy=True)


def block_step(csr: tuple, block, col_lo: int, col_scale: np.ndarray | None, partial: np.ndarray | None,
               dim: int, threads: int = 1) -> np.ndarray:
    """Row sums of a shard's rows after adding its arcs into block [col_lo, col_lo + len(block))
    of U_{k-1} (dense, or ``SparseRows`` for U_0); ``partial`` None: the first block of the chain."""
    indptr, indices, weights, _ = csr
    out = _working_rows(partial, int(indptr.shape[0]) - 1, dim)
    frp.propagate_block(indptr, indices, weights, block, col_lo, out, fresh=partial is None, finish=False,
                        col_scale=col_scale, threads=threads)
    return out


def last_block_step(csr: tuple, block, col_lo: int, col_scale: np.ndarray | None, partial: np.ndarray | None,
                    row_scale: np.ndarray | None, out_rows: np.ndarray | None, weight: float, dim: int,
                    threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The chain's last step: (the shard's rows of U_k, its output rows + weight * U_k).

    ``block`` None: the shard has no arcs (its U_k rows are zero); ``out_rows`` None: the first
    power (the output starts at zero, as in the one-CSR first step)."""
    indptr, indices, weights, _ = csr
    rows = int(indptr.shape[0]) - 1
    U = _working_rows(partial, rows, dim)
    acc = np.zeros((rows, dim), dtype=DTYPE) if out_rows is None else _working_rows(out_rows, rows, dim)
    if block is None:
        block, col_lo, col_scale = np.empty((0, dim), dtype=DTYPE), 0, None
    frp.propagate_block(indptr, indices, weights, block, col_lo, U, fresh=partial is None, finish=True,
                        row_scale=row_scale, col_scale=col_scale, accumulate_into=acc,
                        accumulate_weight=weight, threads=threads)
    return U, acc


def moments(out_rows: np.ndarray) -> "frp.ColumnMoments":
    """Exact column moments of one shard's output rows (merged on the driver)."""
    return frp.column_moments(out_rows, threads=1)


def standardized_rows(mean: np.ndarray, std: np.ndarray, out_rows: np.ndarray, threads: int = 1) -> np.ndarray:
    """One shard's output rows standardised with the global column moments."""
    return frp.apply_standardize(np.array(out_rows, dtype=DTYPE, order="C", copy=True), mean, std, threads=threads)


def save_shard_table(checkpoint: StageHandle, shard: int, table: np.ndarray) -> int:
    """Checkpoint one shard's finished rows (the `table` stage's part-<shard>.npy); returns its row count."""
    Lake(checkpoint.lake).write_npy(checkpoint.part_path(shard), table)
    return int(table.shape[0])


def load_shard_table(checkpoint: StageHandle, shard: int, rows: int, dim: int) -> np.ndarray:
    """A checkpointed shard table, shape-checked against the run."""
    path = checkpoint.part_path(shard)
    table = Lake(checkpoint.lake).read_npy(path)
    if table.shape != (rows, dim) or table.dtype != DTYPE:
        raise ValueError(f"{path}: table of shape {table.shape} ({table.dtype}), expected ({rows}, {dim}) float32")
    return table


# ----------------------------------------------------------------------------- in-process driver
def fastrp_shards(shards: list[CSRShard], cfg: FastRPConfig, threads: int = 0) -> list[np.ndarray]:
    """The sharded recipe in one process, step for step as the Ray tasks run it: per-shard
    [hi - lo, dim] float32 tables, bit-identical to ``kernels.fastrp`` on the gathered CSR."""
    if not cfg.weights:
        raise ValueError("fastrp.weights must name at least one iteration")
    bounds = [(s.lo, s.hi) for s in shards]
    starts = shard_starts(bounds)
    setups = [shard_setup(s.as_tuple(), s.lo, s.hi, s.num_nodes, starts, cfg, threads) for s in shards]
    row_scales, col_scales, blocks, arcs = (list(x) for x in zip(*setups))
    plans = [block_plan(a) for a in arcs]
    outs: list = [None] * len(shards)
    for weight in cfg.weights:
        new_blocks = []
        for i, s in enumerate(shards):
            partial, plan = None, plans[i]
            for j in plan[:-1]:
                partial = block_step(s.as_tuple(), blocks[j], bounds[j][0], col_scales[j], partial, cfg.dim, threads)
            last = plan[-1] if plan else None
            U, outs[i] = last_block_step(s.as_tuple(), None if last is None else blocks[last],
                                         0 if last is None else bounds[last][0],
                                         None if last is None else col_scales[last], partial, row_scales[i],
                                         outs[i], weight, cfg.dim, threads)
            new_blocks.append(U)
        blocks = new_blocks
    if cfg.standardize:
        mean, std = frp.finalize_moments(frp.merge_moments(moments(o) for o in outs))
        outs = [standardized_rows(mean, std, o, threads) for o in outs]
    return outs
