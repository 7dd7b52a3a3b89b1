"""FastRP as Ray work: CSR rows partitioned across tasks; each iteration's matrix is shared
through the object store as its partitions; the output is identical for any number of workers."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import FastRPConfig
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.graph import GraphHandle, StageResult
from embedlake.tasks.remote import remote
from embedlake.tasks.run import Run
from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.fastrp import stages as fs


def fastrp_table(run: Run, graph: GraphHandle, fastrp_cfg: FastRPConfig, bounds: list[tuple[int, int]]) -> StageResult:
    """The run's FastRP table (stage `fastrp`). The finished table is checkpointed (stage `table`):
    a run killed after it (in publish, evaluate or commit) does not recompute it."""
    stage = run.stage("table", {"graph": graph.key, "fastrp": fastrp_spec(fastrp_cfg)})
    done = stage.finished_table()
    if done is not None:
        return done
    emb_ref, info = run.time("fastrp", fastrp, graph, fastrp_cfg, bounds, max_retries=run.retries)
    stage.save_table(emb_ref, info)
    return StageResult(emb_ref, info)


def fastrp_spec(fastrp_cfg: FastRPConfig) -> dict:
    """What determines a FastRP table: every field of the section."""
    return {k: getattr(fastrp_cfg, k) for k in type(fastrp_cfg).model_fields}


@task(name="fastrp", cache_policy=NO_CACHE)
def fastrp(graph: GraphHandle, fastrp_cfg: FastRPConfig, bounds: list[tuple[int, int]], max_retries: int = 3):
    """Returns (ObjectRef of the [n, dim] float32 embeddings, info dict)."""
    import ray
    log = stage_logger()
    cfg = fastrp_cfg
    if not cfg.weights:
        raise ValueError("fastrp.weights must name at least one iteration")
    opts = dict(num_cpus=1, max_retries=max_retries)
    deg_ref = remote(fs.degrees, "fastrp", **opts).remote(graph.csr_ref)
    R_ref = remote(fs.projection, "fastrp", **opts).remote(graph.csr_ref, deg_ref, cfg)
    first = remote(fs.first_step, "fastrp", num_returns=2, **opts)
    step = remote(fs.next_step, "fastrp", num_returns=2, **opts)
    pairs = [first.remote(graph.csr_ref, deg_ref, R_ref, lo, hi, cfg) for lo, hi in bounds]
    U_refs, out_refs = [p[0] for p in pairs], [p[1] for p in pairs]
    join = remote(fs.join_rows, "fastrp", **opts)
    for k, w in enumerate(cfg.weights[1:], start=2):
        U_prev = U_refs[0] if len(U_refs) == 1 else join.remote(*U_refs)
        pairs = [step.remote(graph.csr_ref, deg_ref, lo, hi, w, cfg, out_refs[i], U_prev)
                 for i, (lo, hi) in enumerate(bounds)]
        U_refs, out_refs = [p[0] for p in pairs], [p[1] for p in pairs]
        log.info(f"fastrp: iteration {k}/{len(cfg.weights)} scheduled on {len(bounds)} partitions")
    del U_refs
    mean = std = None
    if cfg.standardize:
        parts = gather([remote(fs.moments, "fastrp", **opts).remote(o) for o in out_refs], "fastrp moments")
        mean, std = frp.finalize_moments(frp.merge_moments(parts))
    emb_ref = remote(fs.standardize_and_join, "fastrp", **opts).remote(mean, std, cfg.standardize, *out_refs)
    ray.wait([emb_ref], num_returns=1, fetch_local=False)
    return emb_ref, {"iterations": len(cfg.weights), "partitions": len(bounds), "dim": cfg.dim}
