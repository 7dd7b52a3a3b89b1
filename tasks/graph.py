"""Prefect tasks of the graph pipeline. Each fans its work out to Ray and returns references
(ObjectRefs, lake URIs, small dicts), never big arrays, so Prefect never hashes or copies them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.runtime import max_node_cpus
from embedlake.workers.graph import stages as graph_stages
from embedlake.workers.train import stages as train_stages
from embedlake.workers.run.faults import fault_point


@dataclass
class GraphHandle:
    """What later stages need about the ingested graph: small metadata + ObjectRefs."""
    meta: dict
    csr_ref: object          # ray.ObjectRef -> (indptr, indices, weights, directed)
    node_ids_ref: object     # ray.ObjectRef -> node_ids
    labels_ref: object       # ray.ObjectRef -> labels or None

    @property
    def num_nodes(self) -> int:
        return int(self.meta["nodes"])


@dataclass
class StageResult:
    ref: object
    info: dict = field(default_factory=dict)


@task(name="ingest", cache_policy=NO_CACHE, retries=0)
def ingest(lake, dataset: str, input_cfg: dict, synthetic_cfg: dict, max_retries: int = 3) -> GraphHandle:
    """Edge list -> CSR in the lake (skipped when the same input was ingested before)."""
    import ray
    log = stage_logger()
    meta_ref, csr_ref, ids_ref, labels_ref = remote(graph_stages.ingest_stage, "ingest", num_returns=4, num_cpus=1,
                                                     max_retries=max_retries).remote(
        lake, dataset, input_cfg, synthetic_cfg)
    meta = ray.get(meta_ref)
    log.info(f"ingest: {meta['nodes']:,} nodes, {meta['arcs']:,} arcs, graph {meta['version']}"
             f"{' (reused: input unchanged)' if meta['reused'] else ''}")
    return GraphHandle(meta, csr_ref, ids_ref, labels_ref)


@task(name="walk", cache_policy=NO_CACHE)
def walk(graph: GraphHandle, walk_cfg: dict, method: str, bounds: list[tuple[int, int]],
         max_retries: int = 3, checkpoint=None) -> StageResult:
    """One Ray task per partition of start nodes; the CSR is shared once through the object store.
    Returns StageResult(list of walk refs, resume info).

    checkpoint (tasks/resume.RunCheckpoints): each partition's walks are also written to the run's
    checkpoints when done, and a re-run of a killed run loads the finished partitions and walks
    only the missing ones."""
    from embedlake.workers.run import checkpoints as cp
    log = stage_logger()
    mode = "node2vec" if method == "node2vec" else "deepwalk"
    rows = lambda lo, hi: (hi - lo) * walk_cfg["walks_per_node"]
    done: set[int] = set()
    ck = checkpoint if checkpoint is not None and checkpoint.enabled else None
    if ck is not None:
        from embedlake.tasks.resume import walk_spec
        _, state, discarded = cp.open_stage(ck.lake, ck.run_dir, "walk", walk_spec(graph, walk_cfg, method, bounds),
                                            ck.resume)
        if state is not None:
            done = cp.finished_walk_parts(ck.lake, ck.run_dir) & set(range(len(bounds)))
            log.info(f"resume: reusing {len(done)}/{len(bounds)} walk partitions of run {ck.run_id}"
                     f"{'' if len(done) == len(bounds) else f', walking {len(bounds) - len(done)}'}")
        elif discarded:
            log.info("resume: the run's walk checkpoint is of other input or settings (or train.resume is off): "
                     "walking again")
    alias_ref = None
    if graph.meta.get("stats", {}).get("weighted") and len(done) < len(bounds):
        alias_ref = remote(graph_stages.alias_stage, "walk", num_cpus=1, max_retries=max_retries).remote(graph.csr_ref)
    fn = remote(graph_stages.walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    load = remote(graph_stages.load_walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    pairs = []
    for i, (lo, hi) in enumerate(bounds):
        if i in done:
            pairs.append(load.remote(ck.lake, cp.walk_part_path(ck.run_dir, i), rows(lo, hi), walk_cfg["length"]))
            continue
        target = None if ck is None else {"lake": ck.lake, "path": cp.walk_part_path(ck.run_dir, i), "index": i}
        pairs.append(fn.remote(
            graph.csr_ref, lo, hi, walk_cfg["walks_per_node"], walk_cfg["length"], walk_cfg["seed"],
            walk_cfg["p"], walk_cfg["q"], mode, 1, alias_ref, checkpoint=target))
    # only the step counts come to the driver; the walks stay in the object store
    gather([p[1] for p in pairs], "walks (partitions)", unit_of=float, unit="steps")
    fault_point("after:walk")
    return StageResult([p[0] for p in pairs], {"walk_partitions": len(bounds), "walk_partitions_reused": len(done)})


@task(name="train", cache_policy=NO_CACHE)
def train(graph: GraphHandle, walk_refs: list, walk_cfg: dict, train_cfg: dict, max_retries: int = 3,
          checkpoint=None, method: str = "deepwalk") -> StageResult:
    """Skip-gram on all walks: one multi-threaded Ray task on the whole table, or block-partitioned
    across `train.workers` Ray workers with lake checkpoints (tasks/train.py, docs/training.md).
    checkpoint (tasks/resume.RunCheckpoints): the one-table engine checkpoints after every epoch and
    a killed run's re-run continues at the next epoch (docs/reliability.md)."""
    import ray
    log = stage_logger()
    if train_cfg.get("workers", 1) > 1 or train_cfg.get("partitions", 0) >= 1:
        from embedlake.tasks.train import train_partitioned
        return train_partitioned(graph, walk_refs, walk_cfg, train_cfg,
                                 checkpoint.legacy() if checkpoint is not None else None, max_retries, log)
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    cfg = dict(train_cfg)
    cfg["threads"] = cfg.get("threads") or cpus
    resumed = {"start_epoch": 0}
    if checkpoint is not None and checkpoint.enabled:
        from embedlake.tasks.resume import train_spec
        from embedlake.workers.run import checkpoints as cp
        from embedlake.tasks.resume import finished_table
        ck = checkpoint
        spec = train_spec(graph, walk_cfg, cfg, method, "one-table")
        done = finished_table(ck, "train", spec, log)
        if done is not None:
            return done
        base, state, discarded = cp.open_stage(ck.lake, ck.run_dir, "train", spec, ck.resume)
        start = int(state.get("epoch", 0)) if state is not None else 0
        if start and not state.get("final"):
            log.info(f"resume: training continues at epoch {start + 1}/{cfg['epochs']} "
                     f"({start} epoch(s) of run {ck.run_id} reused)")
            resumed["start_epoch"] = start
        elif discarded:
            log.info("resume: the run's training checkpoint is of other walks or settings: training from the start")
        cfg["_checkpoint"] = {"lake": ck.lake, "run_dir": ck.run_dir, "base": base,
                             "resume": state if start and not state.get("final") else None}
    fn = remote(train_stages.train_stage, "train", num_cpus=cpus, num_returns=2, max_retries=max_retries)
    progress = Progress("train", "tokens")
    cfg["progress"] = progress.reporter("train")
    emb_ref, stats_ref = fn.remote(graph.num_nodes, walk_cfg["walks_per_node"], cfg, *walk_refs)
    progress.wait([stats_ref])
    progress.close()
    stats = ray.get(stats_ref)
    log.info(f"train: {stats.get('tokens', 0):,} tokens at {stats.get('tokens_per_s', 0):,.0f} tokens/s, "
             f"loss {stats.get('loss_first', float('nan')):.4f} -> {stats.get('loss_last', float('nan')):.4f}")
    info = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    info["resumed"] = {"stage": "train", "start_epoch": resumed["start_epoch"], "table_reused": False}
    return StageResult(emb_ref, info)


@task(name="publish", cache_policy=NO_CACHE)
def publish(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, emb_ref,
            bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Write the embedding partitions (data files only; the manifest is committed last)."""
    fn = remote(graph_stages.write_embedding_part, "publish", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, graph.node_ids_ref, emb_ref)
            for i, (lo, hi) in enumerate(bounds)]
    return gather(refs, "publish (partitions)")


@task(name="write_walks", cache_policy=NO_CACHE)
def write_walks(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, walk_refs: list,
                walks_per_node: int, bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Walks as Parquet (start, k, walk as a list of original ids), one file per partition."""
    fn = remote(graph_stages.write_walks_part, "publish", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, walks_per_node, graph.node_ids_ref, walk_refs[i])
            for i, (lo, hi) in enumerate(bounds)]
    return gather(refs, "write walks (partitions)")


@task(name="commit", cache_policy=NO_CACHE)
def commit(lake, manifest_fields: dict) -> str:
    """Commit the run: one manifest written with put-if-absent after every data file exists."""
    from embedlake.lake import Lake, Manifest
    url = Lake(lake).commit(Manifest(**manifest_fields))
    stage_logger().info(f"commit: {url}")
    return url


class Stopwatch:
    """Wall time per stage for the run summary and the manifest."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.stages[name] = {"wall_s": round(time.perf_counter() - t0, 3)}
        return out
