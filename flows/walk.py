"""The `walk` flow: ingest -> shard -> walks -> Parquet in the lake, for users who train elsewhere.

Committed as method `<deepwalk|node2vec>-walks`; rows are (start, k, walk) with original node ids.
"""
from __future__ import annotations

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.flows.embed_graph import dataset_name
from embedlake.lake import Lake
from embedlake.tasks import graph as gt
from embedlake.tasks.run import Run


@flow(name="walk", validate_parameters=True)
def walk_graph(config: PipelineConfig | None = None) -> dict:
    cfg = config or PipelineConfig()
    if cfg.method in ("fastrp", "orbits"):
        raise ValueError("the walk flow needs method deepwalk or node2vec")
    run = Run.open(cfg, dataset_name(cfg), f"{cfg.method}-walks")
    # a second writer of this run id stops here; a killed run's re-run takes over its claim and
    # reuses the walk partitions it had finished (train.resume / train.checkpoint)
    with run:
        graph = run.time("ingest", gt.ingest, run.lake, run.dataset, cfg.input, cfg.synthetic, cfg.graph, run.retries)
        bounds = gt.row_bounds(graph.num_nodes, cfg.shard)
        walked = gt.run_walks(run, graph, cfg.walk, cfg.method, bounds)
        files = run.time("write_walks", gt.write_walks, run.lake, run.dataset, run.method, run.run_id, graph,
                         walked.ref, cfg.walk.walks_per_node, gt.walk_bounds(graph, bounds), run.retries)
        steps = sum(f["rows"] for f in files)
        url = run.commit(run.manifest({"walks": files}, extra={"graph": graph.meta, "walks": steps,
                                                               "resumed": walked.info}))
    return {"dataset": run.dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
            "manifest": url, "walks_uri": run.lake.url(Lake.table_dir("walks", run.dataset, run.method)),
            "stages": run.stages, "walks": steps, "wall_s": run.wall_s()}
