"""Orbit adjacencies as Ray work (method orbits, docs/orbits.md): one task prepares the simple
graph and the cost estimate (checked against orbits.budget before anything is counted); then one
task per row range counts its rows of the 28 matrices, writes them to the lake and projects them;
the projections are propagated and standardised as FastRP's iterations are (tasks/fastrp.py).
No task holds more than one row range's matrices."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import OrbitsConfig
from embedlake.errors import ConfigError
from embedlake.lake import Lake
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.graph import GraphHandle, StageResult
from embedlake.tasks.remote import remote
from embedlake.tasks.run import Run
from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.fastrp import stages as fs
from embedlake.workers.orbits import stages as ost
from embedlake.workers.orbits.pairs import NUM_PAIRS, PAIR_NAMES


def orbits_table(run: Run, graph: GraphHandle, cfg: OrbitsConfig, bounds: list[tuple[int, int]]) -> StageResult:
    """The run's orbit-adjacency embedding (stage `orbits`); StageResult.files holds the 28
    matrices' Parquet files (kind `orbit_adjacency`) when orbits.write_matrices."""
    if graph.num_shards > 1:
        raise ConfigError(f"method orbits counts 3-hop neighbourhoods from the whole graph in every task; the graph "
                          f"has {graph.num_shards} shards: set graph.shards=1")
    if cfg.write_matrices:
        run.owns(f"{Lake.run_dir('tables', run.dataset, run.method, run.run_id)}/{ost.MATRIX_DIR}")
    where = {"lake": run.lake, "dataset": run.dataset, "method": run.method, "run_id": run.run_id}
    return run.time("orbits", orbits, graph, cfg, bounds, where if cfg.write_matrices else None,
                    max_retries=run.retries)


def check_budget(info: dict, cfg: OrbitsConfig) -> str:
    """The estimate line (logged before counting); raises ConfigError above orbits.budget."""
    line = (f"orbits: {info['nodes']:,} nodes, {info['edges']:,} edges, {info['triangles']:,} triangles; estimated "
            f"{info['walks3']:.3g} 3-step walks (the counting cost), <= {info['graphlets4_bound']:.3g} 4-node "
            f"graphlets; budget {cfg.budget:.3g}")
    if info["walks3"] > cfg.budget:
        raise ConfigError(f"{line}: over orbits.budget, nothing counted (raise orbits.budget to count anyway: the "
                          f"4-4 matrix alone may hold up to {info['walks3']:.3g} non-zeros)")
    return line


@task(name="orbits", cache_policy=NO_CACHE)
def orbits(graph: GraphHandle, cfg: OrbitsConfig, bounds: list[tuple[int, int]], where: dict | None,
           max_retries: int = 3) -> StageResult:
    """Returns StageResult(ObjectRef of the [n, orbits.table_dim] float32 table, info, files)."""
    import ray
    log = stage_logger()
    if not cfg.weights:
        raise ConfigError("orbits.weights must name at least one propagation step")
    opts = dict(num_cpus=1, max_retries=max_retries)
    prep_ref, info_ref = remote(ost.prepare, "orbits", num_returns=2, **opts).remote(graph.csr_ref)
    info = ray.get(info_ref)
    log.info(check_budget(info, cfg))
    R_ref = remote(ost.projection, "orbits", **opts).remote(graph.num_nodes, cfg)
    count = remote(ost.count_partition, "orbits", num_returns=3, **opts)
    triples = [count.remote(prep_ref, R_ref, lo, hi, cfg, None if where is None else {**where, "partition": i},
                            graph.node_ids_ref)
               for i, (lo, hi) in enumerate(bounds)]
    stats = gather([t[2] for t in triples], "orbits: count (partitions)")
    U_refs = [t[0] for t in triples]
    first = remote(ost.first_output, "orbits", **opts)
    out_refs = [first.remote(U, cfg.weights[0]) for U in U_refs]
    step = remote(ost.propagate_step, "orbits", num_returns=2, **opts)
    join = remote(fs.join_rows, "orbits", **opts)
    for w in cfg.weights[1:]:
        U_prev = U_refs[0] if len(U_refs) == 1 else join.remote(*U_refs)
        pairs = [step.remote(prep_ref, lo, hi, w, out_refs[i], U_prev) for i, (lo, hi) in enumerate(bounds)]
        U_refs, out_refs = [p[0] for p in pairs], [p[1] for p in pairs]
    del U_refs
    mean = std = None
    if cfg.standardize:
        parts = gather([remote(fs.moments, "orbits", **opts).remote(o) for o in out_refs], "orbits moments")
        mean, std = frp.finalize_moments(frp.merge_moments(parts))
    emb_ref = remote(fs.standardize_and_join, "orbits", **opts).remote(mean, std, cfg.standardize, *out_refs)
    files = [f for fl in ray.get([t[1] for t in triples]) for f in fl]
    ray.wait([emb_ref], num_returns=1, fetch_local=False)
    nnz = [sum(s["nnz"][t] for s in stats) for t in range(NUM_PAIRS)]
    log.info(f"orbits: {sum(nnz):,} non-zeros in 28 matrices, counted in {max(s['count_s'] for s in stats):.2f} s "
             f"(slowest of {len(bounds)} partitions)")
    out_info = {**info, "partitions": len(bounds), "dim": cfg.table_dim, "combine": cfg.combine, "nnz": sum(nnz),
                "count_s_max": round(max(s["count_s"] for s in stats), 3),
                "count_s_sum": round(sum(s["count_s"] for s in stats), 3),
                "write_s_max": round(max(s["write_s"] for s in stats), 3),
                "project_s_max": round(max(s["project_s"] for s in stats), 3),
                "nnz_by_pair": dict(zip(PAIR_NAMES, nnz))}
    return StageResult(emb_ref, out_info, {"orbit_adjacency": files} if files else {})
