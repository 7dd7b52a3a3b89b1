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
from embedlake.workers import stages


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
    meta_ref, csr_ref, ids_ref, labels_ref = remote(stages.ingest_stage, "ingest", num_returns=4, num_cpus=1,
                                                     max_retries=max_retries).remote(
        lake, dataset, input_cfg, synthetic_cfg)
    meta = ray.get(meta_ref)
    log.info(f"ingest: {meta['nodes']:,} nodes, {meta['arcs']:,} arcs, graph {meta['version']}"
             f"{' (reused: input unchanged)' if meta['reused'] else ''}")
    return GraphHandle(meta, csr_ref, ids_ref, labels_ref)


@task(name="walk", cache_policy=NO_CACHE)
def walk(graph: GraphHandle, walk_cfg: dict, method: str, bounds: list[tuple[int, int]],
         max_retries: int = 3) -> list:
    """One Ray task per partition of start nodes; the CSR is shared once through the object store."""
    mode = "node2vec" if method == "node2vec" else "deepwalk"
    alias_ref = None
    if graph.meta.get("stats", {}).get("weighted"):
        alias_ref = remote(stages.alias_stage, "walk", num_cpus=1, max_retries=max_retries).remote(graph.csr_ref)
    fn = remote(stages.walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    pairs = [fn.remote(graph.csr_ref, lo, hi, walk_cfg["walks_per_node"], walk_cfg["length"], walk_cfg["seed"],
                       walk_cfg["p"], walk_cfg["q"], mode, 1, alias_ref) for lo, hi in bounds]
    # only the step counts come to the driver; the walks stay in the object store
    gather([p[1] for p in pairs], "walks (partitions)", unit_of=float, unit="steps")
    return [p[0] for p in pairs]


@task(name="train", cache_policy=NO_CACHE)
def train(graph: GraphHandle, walk_refs: list, walk_cfg: dict, train_cfg: dict, max_retries: int = 3,
          checkpoint: dict | None = None) -> StageResult:
    """Skip-gram on all walks: one multi-threaded Ray task on the whole table, or block-partitioned
    across `train.workers` Ray workers with lake checkpoints (tasks/train.py, docs/training.md).
    checkpoint: {lake, dataset, method, run_id} of the run (partitioned path only)."""
    import ray
    log = stage_logger()
    if train_cfg.get("workers", 1) > 1 or train_cfg.get("partitions", 0) >= 1:
        from embedlake.tasks.train import train_partitioned
        return train_partitioned(graph, walk_refs, walk_cfg, train_cfg, checkpoint, max_retries, log)
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    cfg = dict(train_cfg)
    cfg["threads"] = cfg.get("threads") or cpus
    fn = remote(stages.train_stage, "train", num_cpus=cpus, num_returns=2, max_retries=max_retries)
    progress = Progress("train", "tokens")
    cfg["progress"] = progress.reporter("train")
    emb_ref, stats_ref = fn.remote(graph.num_nodes, walk_cfg["walks_per_node"], cfg, *walk_refs)
    progress.wait([stats_ref])
    progress.close()
    stats = ray.get(stats_ref)
    log.info(f"train: {stats.get('tokens', 0):,} tokens at {stats.get('tokens_per_s', 0):,.0f} tokens/s, "
             f"loss {stats.get('loss_first', float('nan')):.4f} -> {stats.get('loss_last', float('nan')):.4f}")
    return StageResult(emb_ref, {k: v for k, v in stats.items() if isinstance(v, (int, float, str))})


@task(name="publish", cache_policy=NO_CACHE)
def publish(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, emb_ref,
            bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Write the embedding partitions (data files only; the manifest is committed last)."""
    fn = remote(stages.write_embedding_part, "publish", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, graph.node_ids_ref, emb_ref)
            for i, (lo, hi) in enumerate(bounds)]
    return gather(refs, "publish (partitions)")


@task(name="write_walks", cache_policy=NO_CACHE)
def write_walks(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, walk_refs: list,
                walks_per_node: int, bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Walks as Parquet (start, k, walk as a list of original ids), one file per partition."""
    fn = remote(stages.write_walks_part, "publish", num_cpus=1, max_retries=max_retries)
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
