"""Sharded FastRP (issue 17): blocked sparse products over graph shards give the one-CSR FastRP's
output bit for bit, in one process and through Ray, for every normalisation, with and without
standardisation, weighted or not, directed or not, with empty shards and shards without arcs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedlake.config import FastRPConfig
from embedlake.workers.fastrp import kernels as F
from embedlake.workers.fastrp import sharded as FS
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import shard_bounds, shard_starts, split_csr

N = 240


def power_law_graph(directed: bool, weighted: bool, n: int = N, m: int = 2400, seed: int = 1):
    """Skewed degrees (hubs whose rows span every shard), node n-2 only a target (dangling when
    directed) and node n-1 isolated."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1) ** 0.9
    src = rng.choice(n - 2, size=m, p=p[:-2] / p[:-2].sum())
    dst = rng.choice(n - 1, size=m, p=p[:-1] / p[:-1].sum())
    w = rng.uniform(0.1, 3.0, size=m).astype(np.float32) if weighted else None
    return build_csr(src, dst, n, weights=w, directed=directed)


# S = 5: an empty shard in the middle, and a last shard of the two nodes without out-arcs when
# directed (dangling + isolated): its chain has no block at all
BOUNDS = {1: shard_bounds(N, 1), 2: shard_bounds(N, 2), 3: shard_bounds(N, 3),
          5: [(0, 70), (70, 70), (70, 150), (150, N - 2), (N - 2, N)]}


def one_csr(g, cfg: FastRPConfig) -> np.ndarray:
    return F.fastrp(g.indptr, g.indices, g.weights, dim=cfg.dim, iteration_weights=cfg.weights, beta=cfg.beta,
                    density=cfg.density, normalization=cfg.normalization, standardize=cfg.standardize,
                    seed=cfg.seed, threads=1)


def config(normalization: str, standardize: bool, **kw) -> FastRPConfig:
    # a zero iteration weight (no accumulation) among them, as in the default (0, 0, 1, 6.67)
    return FastRPConfig(dim=kw.pop("dim", 24), weights=[0.0, 0.7, 1.0, 6.67], normalization=normalization,
                        standardize=standardize, seed=7, **kw)


def assert_same_bits(parts: list[np.ndarray], bounds, ref: np.ndarray):
    assert [p.shape for p in parts] == [(hi - lo, ref.shape[1]) for lo, hi in bounds]
    assert all(p.dtype == np.float32 for p in parts)
    got = np.concatenate(parts)
    assert got.tobytes() == ref.tobytes()


# ----------------------------------------------------------------------------- in process
@pytest.mark.parametrize("directed,weighted", list(itertools.product((True, False), (True, False))))
@pytest.mark.parametrize("normalization", F.NORMALIZATIONS)
@pytest.mark.parametrize("standardize", (True, False))
def test_in_process_bit_identical(directed, weighted, normalization, standardize):
    g = power_law_graph(directed, weighted)
    cfg = config(normalization, standardize)
    ref = one_csr(g, cfg)
    for S, bounds in BOUNDS.items():
        assert_same_bits(FS.fastrp_shards(split_csr(g, bounds), cfg, threads=1), bounds, ref)


def test_in_process_dense_projection_threads_and_more_shards_than_nodes():
    """density 1 (every projection entry non-zero: the first step's sparse blocks are full), two
    threads per step, and S > n (shard_bounds leaves empty shards)."""
    g = power_law_graph(True, True)
    cfg = config("sym", True, density=1.0, dim=20)
    ref = one_csr(g, cfg)
    assert_same_bits(FS.fastrp_shards(split_csr(g, BOUNDS[3]), cfg, threads=2), BOUNDS[3], ref)
    tiny = build_csr(np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2]), 4)
    bounds = shard_bounds(4, 6)
    assert sum(hi == lo for lo, hi in bounds) == 2
    assert_same_bits(FS.fastrp_shards(split_csr(tiny, bounds), cfg), bounds, one_csr(tiny, cfg))


def test_shard_setup_uses_own_rows_only():
    """A shard's U_0 rows equal the full projection's rows; its arc counts per block add up; its
    scales are the rows of the whole graph's scales (sym: the column scales other shards read)."""
    g = power_law_graph(False, True)
    cfg = config("sym", True)
    bounds = BOUNDS[5]
    deg = F.node_degrees(g.indptr, g.weights)
    row_all, col_all = F.normalization_scales("sym", deg, np.float32)
    full = F.densify(F.fastrp_init_sparse(g.indptr, g.indices, g.weights, cfg.dim, beta=cfg.beta, seed=cfg.seed))
    for shard in split_csr(g, bounds):
        row_scale, col_scale, U0, arcs = FS.shard_setup(shard.as_tuple(), shard.lo, shard.hi, N,
                                                        shard_starts(bounds), cfg)
        assert F.densify(U0).tobytes() == full[shard.lo:shard.hi].tobytes()
        assert row_scale.tobytes() == row_all[shard.lo:shard.hi].tobytes()
        assert col_scale.tobytes() == col_all[shard.lo:shard.hi].tobytes()
        assert arcs.sum() == shard.num_arcs and arcs[1] == 0          # nothing points into the empty shard
        assert FS.block_plan(arcs) == [j for j in range(5) if arcs[j] > 0]


def nbytes(x) -> int:
    """Bytes of the arrays in a step's argument or result (CSR tuples, SparseRows, arrays)."""
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    if isinstance(x, F.SparseRows):
        return x.indptr.nbytes + x.cols.nbytes + x.vals.nbytes
    return 0


def test_no_step_holds_more_than_one_shard(monkeypatch):
    """Every argument and result of every per-shard step (the functions the Ray tasks run) is at
    most one shard's CSR rows or one shard's [rows, dim] block, far below the whole graph's."""
    g = power_law_graph(False, True)
    cfg = config("sym", True, dim=32)
    bounds = shard_bounds(N, 4)
    shards = split_csr(g, bounds)
    seen = []
    for name in ("shard_setup", "block_step", "last_block_step", "moments", "standardized_rows"):
        fn = getattr(FS, name)

        def recorded(*args, _fn=fn, _name=name, **kw):
            out = _fn(*args, **kw)
            returns = out if isinstance(out, tuple) else (out,)     # a tuple: one object per return
            seen.append((_name, max(nbytes(a) for a in (*args, *returns))))
            return out
        monkeypatch.setattr(FS, name, recorded)
    FS.fastrp_shards(shards, cfg)
    one_shard = max(max(s.nbytes for s in shards), max(s.rows for s in shards) * cfg.dim * 4)
    whole = min(g.indptr.nbytes + g.indices.nbytes + g.weights.nbytes, N * cfg.dim * 4)
    assert {name for name, _ in seen} == {"shard_setup", "block_step", "last_block_step", "moments",
                                          "standardized_rows"}
    assert max(b for _, b in seen) <= one_shard < whole       # hubs (low ids) make shard 0's CSR the largest


# ----------------------------------------------------------------------------- through Ray
def sharded_handle(ray, g, bounds):
    from embedlake.tasks.graph import GraphHandle, ShardRef
    ids = np.arange(g.num_nodes, dtype=np.int64)
    shards = [ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(ids[s.lo:s.hi]))
              for s in split_csr(g, bounds)]
    return GraphHandle({"nodes": g.num_nodes, "arcs": g.num_arcs, "version": "test"}, None, None, ray.put(None),
                       shards=shards)


RAY_CASES = [  # (S, directed, weighted): every normalisation and standardize on/off for each
    (1, False, False), (2, True, True), (3, False, True), (5, True, False)]


@pytest.mark.parametrize("S,directed,weighted", RAY_CASES)
def test_ray_bit_identical(ray_session, S, directed, weighted):
    from embedlake.tasks.fastrp import fastrp_sharded
    ray = ray_session
    g = power_law_graph(directed, weighted)
    handle = sharded_handle(ray, g, BOUNDS[S])
    for normalization, standardize in itertools.product(F.NORMALIZATIONS, (True, False)):
        cfg = config(normalization, standardize)
        refs, info = fastrp_sharded.fn(handle, cfg)
        assert len(refs) == S and info["shards"] == S
        assert_same_bits(ray.get(refs), BOUNDS[S], one_csr(g, cfg))


def test_ray_matches_replicated_stage(ray_session):
    """The sharded engine and today's replicated Ray stage (tasks/fastrp.py `fastrp`) agree."""
    from embedlake.tasks.fastrp import fastrp, fastrp_sharded
    from embedlake.tasks.graph import GraphHandle
    ray = ray_session
    g = power_law_graph(False, True)
    cfg = FastRPConfig(dim=32)
    one = GraphHandle({"nodes": N}, ray.put((g.indptr, g.indices, g.weights, g.directed)), None, ray.put(None))
    replicated = ray.get(fastrp.fn(one, cfg, [(0, 100), (100, N)])[0])
    refs, _ = fastrp_sharded.fn(sharded_handle(ray, g, BOUNDS[3]), cfg)
    assert np.concatenate(ray.get(refs)).tobytes() == replicated.tobytes()


def test_table_checkpointed_per_shard_and_reused(ray_session, prefect_session, tmp_path):
    """fastrp_table over shards: one checkpoint file per shard; a re-run of the run reuses them."""
    from embedlake.lake import Lake
    from embedlake.tasks.fastrp import fastrp_table
    from embedlake.tasks.run import Run
    ray = ray_session
    g = power_law_graph(True, True)
    handle = sharded_handle(ray, g, BOUNDS[5])
    cfg = config("row", True)
    lake = Lake(str(tmp_path / "lake"))
    first = fastrp_table(Run(lake, "g", "fastrp", "r1"), handle, cfg, BOUNDS[5])
    ref = one_csr(g, cfg)
    assert_same_bits(ray.get(first.ref), BOUNDS[5], ref)
    parts = sorted(f.rsplit("/", 1)[-1] for f in lake.list_files(Run(lake, "g", "fastrp", "r1").checkpoint_dir))
    assert [p for p in parts if p.endswith(".npy")] == [f"part-{s:05d}.npy" for s in range(5)]
    again = fastrp_table(Run(lake, "g", "fastrp", "r1"), handle, cfg, BOUNDS[5])
    assert again.info["resumed"]["table_reused"] and again.info["shards"] == 5
    assert_same_bits(ray.get(again.ref), BOUNDS[5], ref)
