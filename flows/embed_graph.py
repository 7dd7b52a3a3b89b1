"""The `embed_graph` flow: ingest -> shard -> walk -> train (or FastRP) -> publish -> evaluate -> commit.

The flow only wires tasks; each task fans out to Ray and passes references. A run is visible to
readers only after its manifest is committed (last step); if any stage fails, the run's data files
are removed and nothing is committed.
"""
from __future__ import annotations

import time

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.flows.run_start import start_run
from embedlake.lake import Lake, check_name, dataset_from_input
from embedlake.tasks import evaluate as et
from embedlake.tasks import graph as gt
from embedlake.tasks.fastrp import fastrp as fastrp_task
from embedlake.tasks.stream import should_stream, walk_and_train
from embedlake.tasks.runtime import resolve_partitions
from embedlake.tasks.train import drop_checkpoints, take_over_dead_claim
from embedlake.workers.stages import partition_bounds


def dataset_name(cfg: PipelineConfig) -> str:
    """Lake dataset name: configured, else the input's folder (…/blogcatalog/edges.tsv -> blogcatalog)."""
    if cfg.lake.dataset:
        return check_name(cfg.lake.dataset, "dataset")
    if cfg.input.edges is None:
        return "planted"
    return dataset_from_input(cfg.input.edges, ("edges", "edge", "graph", ""), "graph")


@flow(name="embed_graph", validate_parameters=True)
def embed_graph(config: PipelineConfig | None = None) -> dict:
    """Embed one graph and publish it to the lake. Returns the run summary."""
    cfg = config or PipelineConfig()
    t_start = time.perf_counter()
    dataset = dataset_name(cfg)
    method = cfg.method
    run_id, lake, sw = start_run(cfg)
    retries = cfg.ray.max_retries
    if cfg.train.resume and method in ("deepwalk", "node2vec"):   # a killed run may be resumed (issue 4)
        take_over_dead_claim(lake, dataset, method, run_id, gt.stage_logger())
    claim = lake.claim_run(dataset, method, run_id)    # a second writer of this run id stops here
    try:
        graph = sw.run("ingest", gt.ingest, lake, dataset, cfg.input.model_dump(), cfg.synthetic.model_dump(),
                       retries)
        split = None
        if cfg.eval.link_prediction:      # held-out edges leave the graph before walks / FastRP see it
            graph, split = sw.run("holdout", et.holdout, graph, cfg.eval.model_dump(), retries)
        bounds = partition_bounds(graph.num_nodes, resolve_partitions(cfg.shard.partitions))
        info: dict = {}
        files: dict[str, list[dict]] = {}
        if method in ("deepwalk", "node2vec") and not cfg.walk.write_walks and cfg.train.workers == 1 \
                and should_stream(graph.num_nodes, cfg.walk.model_dump()):
            trained = sw.run("walk_train", walk_and_train, graph, cfg.walk.model_dump(), cfg.train.model_dump(),
                             method, bounds, retries)
            emb_ref, info = trained.ref, trained.info
        elif method in ("deepwalk", "node2vec"):
            walk_refs = sw.run("walk", gt.walk, graph, cfg.walk.model_dump(), method, bounds, retries)
            if cfg.walk.write_walks:
                files["walks"] = sw.run("write_walks", gt.write_walks, lake, dataset, method, run_id, graph,
                                        walk_refs, cfg.walk.walks_per_node, bounds, retries)
            trained = sw.run("train", gt.train, graph, walk_refs, cfg.walk.model_dump(), cfg.train.model_dump(),
                             retries, checkpoint={"lake": lake, "dataset": dataset, "method": method,
                                                  "run_id": run_id})
            emb_ref, info = trained.ref, trained.info
        else:
            emb_ref, info = sw.run("fastrp", fastrp_task, graph, cfg.fastrp.model_dump(), bounds, retries)
        files["embeddings"] = sw.run("publish", gt.publish, lake, dataset, method, run_id, graph, emb_ref, bounds,
                                     retries)
        evaluated = sw.run("evaluate", et.evaluate, lake, dataset, method, run_id, graph, emb_ref,
                           cfg.eval.model_dump(), split, bounds, retries)
        metrics = evaluated["metrics"]
        files.update(evaluated["files"])
        dim = cfg.train.dim if method != "fastrp" else cfg.fastrp.dim
        manifest = dict(dataset=dataset, method=method, run_id=run_id, files=files,
                        config=cfg.model_dump(mode="json"), metrics=metrics, stages=sw.stages,
                        extra={"dim": dim, "rows": graph.num_nodes, "graph": graph.meta, "train": info})
        manifest_url = sw.run("commit", gt.commit, lake, manifest)
        drop_checkpoints(lake, dataset, method, run_id)
    except BaseException:
        _remove_run_files(lake, dataset, method, run_id)
        lake.release_claim(dataset, method, run_id, claim)
        raise
    tables = None
    if cfg.compress.codecs:     # each codec is its own committed run (<method>.<codec>) of this run's table
        from embedlake.flows.compress import compress_run
        tables = compress_run(cfg, dataset, method, run_id, run_id=run_id, sw=sw)
    return {
        "dataset": dataset, "method": method, "run_id": run_id, "lake": lake.uri,
        "embeddings": lake.url(Lake.run_dir("embeddings", dataset, method, run_id)),
        "manifest": manifest_url, "graph": graph.meta, "stages": sw.stages, "metrics": metrics,
        "rows": graph.num_nodes, "dim": dim, "wall_s": round(time.perf_counter() - t_start, 3),
        "tables": tables,
    }


def _remove_run_files(lake: Lake, dataset: str, method: str, run_id: str) -> None:
    """A failed run leaves nothing behind (unless it was already committed)."""
    try:
        if not lake.is_committed(dataset, method, run_id):
            for kind in ("embeddings", "walks"):
                lake.delete(Lake.run_dir(kind, dataset, method, run_id), recursive=True)
            for rel in et.run_dirs(dataset, method, run_id):
                lake.delete(rel, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass
