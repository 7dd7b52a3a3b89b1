"""Prefect tasks of the compress stage. Big arrays stay in Ray's object store (ObjectRefs); the
tasks return file entries and small dicts.

Per codec: one Ray task trains the state on a sample (codebooks, rotation, PCA basis; nothing for
untrained codecs), the state goes into the object store once, and one Ray task per row partition
encodes its rows and writes its Parquet part. A measuring task then reads the written table back
from the lake, decodes it and compares it with the source table (recall@10, node-classification
F1 change), so the figures in the manifest describe what readers will actually get.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import CompressConfig, EvalConfig, TrainConfig, WalkConfig
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.remote import remote
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs
from embedlake.workers.evaluate.stages import classify_options
from embedlake.workers.kg import stages as ks


@dataclass
class SourceHandle:
    dataset: str
    method: str
    run_id: str
    rows: int
    dim: int
    graph: dict | None
    ids_ref: object       # ray.ObjectRef -> node ids
    X_ref: object         # ray.ObjectRef -> float32 [rows, dim]
    labels_ref: object    # ray.ObjectRef -> (row idx, label idx) or None
    config: dict | None = None   # the source run's resolved config, as its manifest stores it
    metrics: dict | None = None  # the source run's metrics (a KG run's filtered MRR / Hits: the "before")
    kg: dict | None = None       # a KG run's triple figures (extra.kg): its table is the entity table

    @property
    def is_kg(self) -> bool:
        return self.kg is not None

    def training_sections(self) -> tuple[WalkConfig, TrainConfig]:
        """The source run's walk / train sections (the graph-trained codecs re-walk its graph with
        them), validated from the manifest's stored config."""
        if not self.config or "walk" not in self.config or "train" not in self.config:
            raise ValueError(f"source run {self.run_id} stores no walk / train config to re-walk its graph with")
        return WalkConfig.model_validate(self.config["walk"]), TrainConfig.model_validate(self.config["train"])


@task(name="load_source", cache_policy=NO_CACHE)
def load_source(lake, dataset: str, method: str, run: str, max_retries: int = 3) -> SourceHandle:
    """Resolve the committed source run and load its matrix (and labels) into the object store."""
    import ray
    from embedlake.lake import Lake
    man = Lake(lake).manifest(dataset, method, run)
    kg = man.extra.get("kg")
    loader = ks.load_entity_table if kg is not None else cs.load_source     # a KG run: its entity table
    ids_ref, X_ref = remote(loader, "compress", num_returns=2, num_cpus=1, max_retries=max_retries).remote(
        lake, dataset, method, man.run_id)
    graph = man.extra.get("graph")
    labels_ref = remote(cs.load_labels, "compress", num_cpus=1, max_retries=max_retries).remote(lake, dataset, graph, ids_ref)
    shape = ray.get(remote(_shape, "compress", num_cpus=0).remote(X_ref))
    stage_logger().info(f"compress: source {dataset}/{method} run {man.run_id}: {shape[0]:,} x {shape[1]}")
    return SourceHandle(dataset, method, man.run_id, shape[0], shape[1], graph, ids_ref, X_ref, labels_ref,
                        man.config, dict(man.metrics or {}), kg)


@task(name="measure_kg_table", cache_policy=NO_CACHE)
def measure_kg_table(lake, src: SourceHandle, manifest_fields: dict, max_retries: int = 3) -> dict:
    """A compressed KG entity table's filtered test MRR / Hits (read back from the lake), beside the
    source run's float32 figures: kg_mrr, kg_hits@10, ... and kg_mrr_before, kg_hits@10_before."""
    import ray
    m = ray.get(remote(ks.compressed_table_metrics, "evaluate", num_cpus=1, max_retries=max_retries).remote(
        lake, manifest_fields, src.config, src.dataset, src.method, src.run_id))
    before = src.metrics or {}
    for k in ("mrr", "hits@10"):
        if before.get(k) is not None:
            m[f"kg_{k}_before"] = before[k]
    codec = manifest_fields["extra"]["codec"]
    stage_logger().info(f"compress {codec}: filtered MRR {m['kg_mrr']:.4f} (float32 {before.get('mrr', float('nan')):.4f}), "
                        f"Hits@10 {m['kg_hits@10']:.4f} (float32 {before.get('hits@10', float('nan')):.4f})")
    return m


def _shape(X):
    return tuple(int(s) for s in X.shape)


def _baseline(X, labels, eval_cfg: EvalConfig):
    from embedlake.workers.evaluate.classify import node_classification
    if labels is None:
        return None
    return node_classification(X, labels[0], labels[1], **classify_options(eval_cfg))


@task(name="baseline", cache_policy=NO_CACHE)
def baseline(src: SourceHandle, eval_cfg: EvalConfig) -> dict | None:
    """Node classification of the full table with the same splits the compressed tables get."""
    import ray
    return ray.get(remote(_baseline, "evaluate", num_cpus=1).remote(src.X_ref, src.labels_ref, eval_cfg))


@task(name="build_table", cache_policy=NO_CACHE)
def build_table(lake, src: SourceHandle, codec: str, params: dict, run_id: str,
                bounds: list[tuple[int, int]], max_retries: int = 3) -> dict:
    """Train (one task, on a sample), then encode row partitions in parallel; write codebooks."""
    import ray
    log = stage_logger()
    t0 = time.perf_counter()
    if codec in cz.GRAPH_TRAINED:   # skip-gram on walks of the source graph: one multi-threaded task
        from embedlake.tasks.runtime import max_node_cpus
        cpus = max_node_cpus()
        walk, train = src.training_sections()
        state_ref, fit_s_ref = remote(cs.fit_source_graph_table, "compress", num_returns=2, num_cpus=cpus,
                                      max_retries=max_retries).remote(
            lake, dataset=src.dataset, graph_meta=src.graph, walk=walk, train=train, method=src.method, codec=codec,
            params=params, rows=src.rows, threads=cpus)
    else:
        state_ref, fit_s_ref = remote(cs.fit_codec, "compress", num_returns=2, num_cpus=1, max_retries=max_retries).remote(
            src.X_ref, codec, params, 1)
    fit_s = ray.get(fit_s_ref)
    out = write_table(lake, dataset=src.dataset, method=src.method, run_id=run_id, codec=codec, params=params,
                      bounds=bounds, ids_ref=src.ids_ref, X_ref=src.X_ref, state_ref=state_ref,
                      max_retries=max_retries)
    wall = time.perf_counter() - t0
    log.info(f"compress {codec}: fit {fit_s:.2f}s, encode {out['encode_s']:.2f}s cpu "
             f"over {len(out['files'])} partitions, {wall:.2f}s wall")
    return {**out, "fit_s": fit_s, "build_wall_s": round(wall, 3)}


def write_table(lake, *, dataset: str, method: str, run_id: str, codec: str, params: dict,
                bounds: list[tuple[int, int]], ids_ref, X_ref, state_ref, max_retries: int = 3) -> dict:
    """One Ray task per row partition encodes its rows and writes its Parquet part, then one task
    writes the codebook file pinned to them (data files only: the caller commits). X_ref may be
    None for the graph-trained codecs (their codes come from the row position and the state).
    Returns {"files", "codebooks", "encode_s", "stored_bytes"}."""
    import ray
    enc = remote(cs.encode_partition, "compress", num_cpus=1, max_retries=max_retries)
    refs = [enc.remote(lake, dataset=dataset, method=method, run_id=run_id, codec=codec, params=params, partition=i,
                       lo=lo, hi=hi, node_ids=ids_ref, X=X_ref, state=state_ref, threads=1)
            for i, (lo, hi) in enumerate(bounds)]
    parts = gather(refs, f"encode {codec} (partitions)")
    files = [{k: p[k] for k in ("path", "rows", "bytes", "sha256")} for p in parts]
    book = ray.get(remote(cs.write_codebooks, "compress", num_cpus=1, max_retries=max_retries).remote(
        lake, dataset, method, run_id, codec, state_ref, files))
    return {"files": files, "codebooks": [book] if book else [],
            "encode_s": round(sum(p["encode_s"] for p in parts), 4),
            "stored_bytes": sum(f["bytes"] for f in files) + (book["bytes"] if book else 0)}


def _measure(lake, manifest_fields: dict, X, labels, *, eval_cfg: EvalConfig, baseline_nc, queries: int, seed: int,
             rerank_candidates: int):
    """Ray worker body: read the written table back and measure it against X."""
    from embedlake.lake import Lake, Manifest
    from embedlake.workers.compress import codecs as cz
    table = cs.table_from_manifest(Lake(lake), Manifest(**manifest_fields))
    rerank = None
    if table.codec == "binary":     # the int8 re-scoring tier, with the binary table's (stored) scale type
        int8 = cz.codec_params("int8", CompressConfig(scale_dtype=table.params["scale_dtype"]))
        rerank, _ = cz.build("int8", X, int8)
    return cz.quality(table, X, k=10, queries=queries, seed=seed, labels=labels, eval_cfg=eval_cfg,
                      baseline=baseline_nc, rerank=rerank, candidates=rerank_candidates)


@task(name="measure_table", cache_policy=NO_CACHE)
def measure_table(lake, src: SourceHandle, manifest_fields: dict, eval_cfg: EvalConfig, baseline_nc: dict | None,
                  compress: CompressConfig) -> dict:
    import ray
    m = ray.get(remote(_measure, "evaluate", num_cpus=1).remote(
        lake, manifest_fields, src.X_ref, src.labels_ref, eval_cfg=eval_cfg, baseline_nc=baseline_nc,
        queries=compress.recall_queries, seed=compress.seed, rerank_candidates=compress.rerank_candidates))
    codec = manifest_fields["extra"]["codec"]
    msg = f"compress {codec}: {m['bytes_per_vector']} B/vector (x{m['ratio']:.2f}), recall@10 {m['recall_at_10']:.3f}"
    if "recall_at_10_rerank" in m:
        msg += f" ({m['recall_at_10_rerank']:.3f} re-scored with int8)"
    if "micro_f1_change" in m:
        msg += ", Micro-F1 change " + ", ".join(f"{k}: {v:+.4f}" for k, v in m["micro_f1_change"].items())
    stage_logger().info(msg)
    return m
